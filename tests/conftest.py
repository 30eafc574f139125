"""Shared fixtures: the tiny random model (real upstream classes) is written once per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from genmo_teacache.tiny import make_tiny_model

    cached = os.environ.get("GENMO_TEACACHE_TINY_MODEL")  # reuse one across runs while developing
    if cached and (Path(cached) / "dit.safetensors").exists():
        return Path(cached)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def demo_cache(tiny_model_dir, tmp_path_factory) -> Path:
    """A cache folder ($GENMO_TEACACHE_CACHE) whose demo model (what commands run without --model_dir) is the
    session's tiny model, so that a test of that default does not make another one."""
    from genmo_teacache.tiny import DEMO_MODEL

    cache = tmp_path_factory.mktemp("demo_cache")
    (cache / DEMO_MODEL).symlink_to(tiny_model_dir.resolve(), target_is_directory=True)
    return cache


@pytest.fixture(scope="session")
def method_calibration(tmp_path_factory) -> Path:
    """The calibration file of the methods' test modes (``Method.test_modes``, 8-step tiny runs): TeaCache's default
    polynomial (so its decisions are the default ones) and magnitude ratios a few percent from 1."""
    from genmo_teacache.coefficients import Rescale

    default = Rescale()
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    path.write_text(json.dumps({"coefficients": list(default.coefficients), "x_max": default.x_max,
                                "mag_ratios": [1.0] + [1.0 + 0.01 * (-1) ** i for i in range(1, 8)]}))
    return path
