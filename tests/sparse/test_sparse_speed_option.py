"""Sparse attention as a speed option (issue 22): its token goes from the command line's speed spec through
``SpeedOptions`` to the DiT like any other speed option; the sampler's step hooks begin and end its steps (the
untimed warm-up pass included) and each step's record in the sidecar says the density it achieved; it runs under
every cache method (the registry's test modes) and with a modifier; context parallelism is refused before loading,
naming the option."""

import warnings

import pytest

from genmo_teacache.caches import METHODS, parse_mode
from genmo_teacache.generate import GenerationSettings, generate, load_pipeline
from genmo_teacache.speed import PRESETS, join_mode, parse_speed, split_mode

SPEC = "sparse_tile_0.5_w2"
STEPS = 8
# 256 x 256 at 7 frames: 2 x 16 x 16 visual tokens = 4 blocks of 2x8x8 tiles (the GPU's tile), so a window can drop
# blocks; 8 steps, as the methods' test modes and their calibration file expect
SETTINGS = GenerationSettings(width=256, height=256, num_frames=7, num_steps=STEPS)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir, device="cpu", speed=parse_speed(SPEC))


def run(pipe, mode, calibration):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FlexAttention's "called without torch.compile" on a CPU
        return generate(pipe, prompt="a red car drives through the snowy city", cache=parse_mode(mode, calibration),
                        seed=0, settings=SETTINGS, progress=False)


def test_the_token_round_trips_in_specs_and_mode_names():
    options = parse_speed(f"fastest+{SPEC}")
    assert options.sparse_attention == SPEC and parse_speed(options.spec()) == options
    assert options.spec() != "fastest" and PRESETS["fastest"].sparse_attention == "none"
    mode = "fixed_0.1@fastest+sparse_tile_0.25"
    base, speed = split_mode(mode)
    assert base == "fixed_0.1" and speed.sparse_attention == "sparse_tile_0.25"
    assert split_mode(join_mode(base, speed)) == (base, speed)
    with pytest.raises(ValueError, match="density 1.5 must be in \\(0, 1\\]"):
        parse_speed("fast+sparse_tile_1.5")


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m.enabled], ids=lambda m: m.key)
def test_every_method_runs_with_it_and_the_sidecar_records_each_steps_density(pipe, method, method_calibration):
    result = run(pipe, method.test_modes[0], method_calibration)
    steps = result.report["steps"]
    records = [s["sparse_attention"] for s in steps]
    assert [r["step"] for r in records] == list(range(STEPS))
    assert all(r["token"] == SPEC for r in records)
    for s, r in zip(steps, records):
        if s["step"] < 2:  # the dense warm-up (_w2)
            assert r["dense_step"] and r["density"] in (1.0, None)
        elif s["computed"] or s["reason"] != "skip":
            assert not r["dense_step"]
        if r["calls"]:
            assert 0 < r["density"] <= 1
    sparse = [r["density"] for r in records if not r["dense_step"] and r["calls"]]
    assert sparse and all(d < 1 for d in sparse), records  # the window dropped blocks where it ran
    assert result.timings["warmup_s"] >= 0  # the warm-up pass ran the sparse path too, outside the steps


@pytest.mark.slow
def test_it_combines_with_a_modifier(pipe, method_calibration):
    result = run(pipe, "fixed_0.05+cfg_s2_i3", method_calibration)
    steps = result.report["steps"]
    cond_only = [s for s in steps if s["computed"] and s["branches"] == ["cond"]]
    assert cond_only, "the CFG cache ran no cond-only step"
    assert all(s["sparse_attention"]["calls"] > 0 and s["sparse_attention"]["density"] < 1 for s in cond_only
               if s["step"] >= 2)


def test_context_parallelism_is_refused_before_loading_naming_the_option(tiny_model_dir):
    with pytest.raises(ValueError, match="sparse_tile_0.5_w2.*need the whole DiT on each GPU"):
        load_pipeline(tiny_model_dir, device="cpu", num_gpus=2, speed=parse_speed(SPEC))
