"""The contract every registered cache method keeps, on the tiny model with the real upstream classes (as
diffusers' CacheTesterMixin does for its hooks), with the modes it declares (``Method.test_modes``: one that skips
on the tiny model, and its "threshold 0" that computes every step); the two-rank part is in tests/multigpu. A new
method is under contract as soon as it is registered."""

import copy
import json

import pytest
import torch

from genmo_teacache.caches import METHODS, observed_method, parse_mode
from genmo_teacache.caches.indicators import INDICATORS
from genmo_teacache.caches.reuse import REUSE_POINTS
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model

# method key -> (a mode that skips some steps of an 8-step tiny run, its equivalent of threshold 0)
CONTRACT = {m.key: m.test_modes for m in METHODS}
STEPS = 8


@pytest.fixture(scope="module")
def calibration(method_calibration):
    return method_calibration


def sample(pipe, cond, cache, seed=0):
    """A fresh run (``tiny_runs.sample`` serves the runs several tests share)."""
    args = GenerationSettings(width=64, height=64, num_frames=7, num_steps=STEPS).sampler_args(seed)
    with torch.inference_mode():
        return sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False, **args)


def decisions(result):
    return [r.computed for r in result.report.steps]


def test_every_registered_method_declares_its_test_modes_and_registered_plug_ins():
    for m in METHODS:
        assert len(m.test_modes) >= 2, f"{m.key}: declare test_modes (a skipping mode, its threshold 0)"
        assert m.indicator in INDICATORS and m.reuse in REUSE_POINTS, m.key
    assert observed_method().observed and sum(m.observed for m in METHODS) == 1


def test_the_sampler_and_the_options_name_no_method():
    """They drive what the registry declares: no import of a method's module, no method class by name."""
    import ast
    import inspect

    from genmo_teacache import options, sampler

    names = {m.__name__ for m in METHODS} | {m.__module__ for m in METHODS}
    for module in (sampler, options):
        tree = ast.parse(inspect.getsource(module))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import) for a in n.names}
        assert not names & used, (module.__name__, names & used)


@pytest.mark.parametrize("key", list(CONTRACT))
def test_mode_names_round_trip(key, calibration):
    for mode in CONTRACT[key]:
        config = parse_mode(mode, calibration)
        assert config.method.key == key and config.name == mode
        assert parse_mode(config.name, calibration) == config == parse_mode(f"mochi_{mode}", calibration)


@pytest.mark.parametrize("key", list(CONTRACT))
def test_zero_threshold_computes_every_step_bit_identical_to_the_baseline(key, tiny_runs, calibration):
    """The baseline is upstream's sample_model (with caching off ours gives its latents bit for bit: core's
    test_sampler), so that the baseline's own "threshold 0" is compared with another run too."""
    base = tiny_runs.upstream("sdpa")
    zero = tiny_runs.sample("sdpa", parse_mode(CONTRACT[key][1], calibration))
    assert all(decisions(zero)) and zero.report.dit_calls == 2 * STEPS
    assert torch.equal(zero.latents, base)


@pytest.mark.parametrize("key", list(CONTRACT))
def test_first_and_last_steps_computed_and_the_report_is_json(key, tiny_runs, calibration):
    result = tiny_runs.sample("sdpa", parse_mode(CONTRACT[key][0], calibration))
    steps = decisions(result)
    assert steps[0] and steps[-1]
    if key != "baseline":
        assert not all(steps), "the contract's mode should skip on the tiny model"
    report = json.loads(json.dumps(result.report.to_dict()))
    assert report["mode"] == CONTRACT[key][0] and report["cache"]["method"] == key
    assert report["dit_calls"] == sum(len(s["branches"]) for s in report["steps"])


@pytest.mark.parametrize("key", list(CONTRACT))
def test_reset_isolates_generations(key, pipes, tiny_runs, calibration):
    """A, then B (another prompt and seed), then A again: A's latents and decisions come back exactly. The first A
    is the session's run of that mode (``tiny_runs``, made on the same pipeline with an equal config), so this also
    checks that a kept run is what a fresh run gives; B and the second A run here, with one config object."""
    pipe = pipes["sdpa"]
    cache = parse_mode(CONTRACT[key][0], calibration)
    first = tiny_runs.sample("sdpa", cache)
    sample(pipe, tiny_runs.conditioning("sdpa", False, "an astronaut rides a horse"), cache, seed=3)
    again = sample(pipe, tiny_runs.conditioning("sdpa", False), cache)
    assert decisions(again) == decisions(first) and torch.equal(again.latents, first.latents)


@pytest.mark.parametrize("key", list(CONTRACT))
def test_batched_and_unbatched_cfg_decide_alike(key, tiny_runs, calibration):
    cache = parse_mode(CONTRACT[key][0], calibration)  # on flash (varlen attention): batched CFG runs on CPU too
    unbatched = tiny_runs.sample("flash", cache)
    batched = tiny_runs.sample("flash", cache, batched=True)
    assert decisions(batched) == decisions(unbatched)
    assert batched.report.dit_calls * 2 == unbatched.report.dit_calls
