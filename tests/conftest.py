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


class SharedRanks:
    """The session's one two-rank CPU pipeline (real Ray, gloo, FSDP), started on first use and shared by the tests
    that only generate on it, instead of each starting ranks of its own. It starts Ray itself, as a user's run does
    (one logical CPU per rank, none spare), so a test that needs Ray to itself (ranks of another layout or number, a
    rank made to fail, a cluster too small) asks for ``own_ray``, which closes it; its next user starts it again.
    The tests that need their own Ray run before the users of this one, so a stage starts it once."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.pipe, self.starts = model_dir, None, 0

    def get(self):
        from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline
        from genmo_teacache.pipelines import factories_for

        if self.pipe is None or not self.pipe.ctxs:  # not started yet, or closed (by a failure or by own_ray)
            self.pipe = TeaCacheMultiGPUPipeline(**factories_for(self.model_dir), world_size=2, device_type="cpu")
            self.starts += 1
        return self.pipe

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


@pytest.fixture(scope="session")
def shared_ranks(tiny_model_dir):
    ranks = SharedRanks(tiny_model_dir)
    yield ranks
    ranks.close()


@pytest.fixture
def two_ranks(shared_ranks):
    """The session's two-rank pipeline (see :class:`SharedRanks`)."""
    return shared_ranks.get()


@pytest.fixture
def own_ray(shared_ranks):
    """No Ray in this process when the test starts: the session's two ranks are closed first (and Ray with them)."""
    import ray

    shared_ranks.close()
    assert not ray.is_initialized(), "a Ray that the session's two ranks did not start is still up"
