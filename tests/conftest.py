"""Shared fixtures: the tiny random model (real upstream classes) is written once per test session, its pipelines
are built once, and a tiny generation that several tests ask for runs once (``tiny_runs``)."""

from __future__ import annotations

import copy
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


@pytest.fixture(scope="session")
def pipes(tiny_model_dir) -> dict:
    """The tiny model's pipelines, built once a session: sdpa (unbatched CFG only, as upstream) and flash (varlen
    attention: batched CFG runs on CPU too). A test that hooks or patches one removes what it added."""
    from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for

    return {mode: TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir, attention_mode=mode), device="cpu")
            for mode in ("sdpa", "flash")}


PROMPT = "a red car drives through the snowy city"
STEPS = 8
SIZE = {"width": 64, "height": 64, "num_frames": 7}


class TinyRuns:
    """The session's tiny generations, each run once: a test that asks for the same run as another test (same
    pipeline, cache config, CFG batching, prompt, seed, steps, size, forced pattern) gets a copy of its result, which
    it may change freely. Only plain runs belong here: a run watched with hooks or patched runs itself. A sampler
    that is not deterministic run to run would show in the contract's reset test, which compares a fresh run with
    the one kept here."""

    def __init__(self, pipes: dict):
        self.pipes = pipes
        self._conds: dict = {}
        self._runs: dict = {}

    def conditioning(self, attention: str, batched: bool, prompt: str = PROMPT) -> dict:
        """Upstream's conditioning (text encoder) for ``prompt`` with an empty negative prompt; a copy."""
        import torch
        from genmo.mochi_preview.pipelines import get_conditioning

        key = (attention, batched, prompt)
        if key not in self._conds:
            pipe = self.pipes[attention]
            with torch.inference_mode():
                self._conds[key] = get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, batched,
                                                    prompt=prompt, negative_prompt="")
        return copy.deepcopy(self._conds[key])

    @staticmethod
    def args(seed: int = 0, steps: int = STEPS, **size) -> dict:
        from genmo_teacache.generate import GenerationSettings

        return GenerationSettings(**{**SIZE, **size}, num_steps=steps).sampler_args(seed)

    def sample(self, attention: str, cache, *, batched: bool = False, prompt: str = PROMPT, seed: int = 0,
               steps: int = STEPS, computed: frozenset[int] | None = None, **size):
        """Our sampler's result (``SampleResult``) for ``cache`` (a ``CacheConfig``); ``computed``: the steps a
        ``PatternPolicy`` forces (measuring and reusing as the cache's method does)."""
        import torch

        from genmo_teacache.caches.pattern import PatternPolicy
        from genmo_teacache.sampler import sample_model

        # repr: the config's every field, also those equality leaves out (e.g. where MagCache's ratios came from)
        key = ("ours", attention, cache, repr(cache), batched, prompt, seed, steps, computed,
               tuple(sorted(size.items())))
        if key not in self._runs:
            pipe = self.pipes[attention]
            policy = None if computed is None else PatternPolicy(set(computed), method=cache.method)
            with torch.inference_mode():
                self._runs[key] = sample_model(pipe.device, pipe.dit, self.conditioning(attention, batched, prompt),
                                               cache=cache, policy=policy, progress=False,
                                               **self.args(seed, steps, **size))
        return copy.deepcopy(self._runs[key])

    def upstream(self, attention: str, *, batched: bool = False, prompt: str = PROMPT, seed: int = 0,
                 steps: int = STEPS, **size):
        """Upstream's ``sample_model`` latents (the baseline every mode is measured against)."""
        import torch
        from genmo.mochi_preview.pipelines import sample_model as upstream_sample_model

        key = ("upstream", attention, batched, prompt, seed, steps, tuple(sorted(size.items())))
        if key not in self._runs:
            pipe = self.pipes[attention]
            # upstream autocasts on "cuda" only; on CPU the caller supplies the autocast, as our sampler does itself
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                self._runs[key] = upstream_sample_model(pipe.device, pipe.dit,
                                                        self.conditioning(attention, batched, prompt),
                                                        **self.args(seed, steps, **size))
        return self._runs[key].clone()


@pytest.fixture(scope="session")
def tiny_runs(pipes) -> TinyRuns:
    """Tiny generations shared by the whole session (see :class:`TinyRuns`)."""
    return TinyRuns(pipes)


class SharedRanks:
    """The session's one two-rank CPU pipeline (real Ray, gloo, FSDP), started on first use and shared by the tests
    that only generate on it, instead of each starting ranks of its own. It starts Ray itself, as a user's run does
    (one logical CPU per rank, none spare), so a test that needs Ray to itself (ranks of another layout or number, a
    rank made to fail, a cluster too small) asks for ``own_ray``, which closes it; its next user starts it again.
    The tests that need their own Ray run before the users of this one, so a stage starts it once."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.pipe = model_dir, None

    def get(self):
        from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline
        from genmo_teacache.pipelines import factories_for

        if self.pipe is None or not self.pipe.ctxs:  # not started yet, or closed (by a failure or by own_ray)
            self.pipe = TeaCacheMultiGPUPipeline(**factories_for(self.model_dir), world_size=2, device_type="cpu")
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
