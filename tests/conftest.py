"""Shared fixtures: the tiny random model (real upstream classes) is written once per test session."""

from __future__ import annotations

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
