"""The CFG cache (+cfg, FasterCache's CFG-Cache): its schedule and mode names, the frequency split and the
reconstruction worked out by hand and against an independent numpy version of the published formula, a 64-step
transcription of FasterCache's Mochi sampler, stale differences, and real tiny runs watched with hooks, with every
registered method (METHOD_MODES: TeaCache in the default stage, the others with ``-m slow``).

The oracle's weights are read from FasterCache's Mochi sampler (Vchitect/FasterCache 02d05ef,
``fastercache/models/genmo/mochi_preview/pipelines.py``, ``sample_model_fastercache``), written here as numbers, not
imported from the module under test: on a cond-only step (``cnt >= 22 and cnt % 5 != 0 and cnt != 63``) it runs
``if cnt >= 30: cfg_delta_high = cfg_delta_high * 1.25`` and ``if cnt <= 50: cfg_delta_low = cfg_delta_low * 1.15``
on the global differences (so they compound), then rebuilds uncond; on a step where both branches run it records
the differences ``if cnt >= 20``."""

import json

import numpy as np
import pytest
import torch
from _modifier_helpers import METHOD_MODES, STEPS, Recorder, conditioning, method_params, sample
from click.testing import CliRunner

from genmo_teacache.caches import CacheConfig, parse_mode
from genmo_teacache.caches.base import StepRecord
from genmo_teacache.caches.cfgcache import (
    HIGH_WEIGHT,
    LOW_WEIGHT,
    CfgCache,
    CfgCacheState,
    low_frequency_mask,
    reconstruct_uncond,
)
from genmo_teacache.caches.pattern import CondOnlyPattern, PatternPolicy
from genmo_teacache.generate import GenerationSettings

FC_HIGH, FC_LOW = 1.25, 1.15  # FasterCache's Mochi sampler (see the module docstring)
FC_HIGH_FROM, FC_LOW_UNTIL, FC_RECORD_FROM = 30, 50, 20


def fastercache_cond_only(cnt):
    return cnt >= 22 and cnt % 5 != 0 and cnt != 63


@pytest.fixture(scope="module")
def cal(method_calibration):
    return method_calibration


# -- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fields", [
    ("cfg", (22, 5, 30, 50)), ("cfg_s2", (2, 5, 30, 50)), ("cfg_i1", (22, 1, 30, 50)),
    ("cfg_s2_i3_h4_l5", (2, 3, 4, 5)), ("cfg_l40", (22, 5, 30, 40))])
def test_mode_names_round_trip(text, fields, cal):
    c = CfgCache.parse(text)
    assert (c.start, c.interval, c.high_from, c.low_until) == fields and c.name == text
    for method in ("fixed_0.06", "mag_0.1_r0.0"):
        config = parse_mode(f"{method}+{text}", cal)
        assert config.name == f"{method}+{text}" and config.modifiers == (c,)
        assert parse_mode(config.name, cal) == config == parse_mode(f"mochi_{method}+{text}", cal)
    assert CfgCache.parse("cfg_s22_i5").name == "cfg"  # the defaults are not written


@pytest.mark.parametrize("text, fragment", [("cfg_i0", "interval 0"), ("cfg_s0", "start step 0"),
                                            ("cfgx", "not a CFG cache"), ("cfg_i2_s3", "not a CFG cache")])
def test_bad_names_say_what_to_write(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_mode(f"fixed_0.1+{text}")
    with pytest.raises(ValueError, match="not a CFG cache"):
        parse_mode("fixed_0.1+cfgcache")
    with pytest.raises(ValueError, match="given twice"):
        parse_mode("fixed_0.1+cfg+cfg_s2")


def test_fastercaches_mochi_schedule():
    """FasterCache's Mochi sampler: cond-only where step >= 22, step % 5 != 0 and step != 63."""
    steps = CfgCache().cond_only_steps(64)
    assert steps == [s for s in range(22, 63) if s % 5] and len(steps) == 33
    assert CfgCache().extra_forward_fraction(64) == 33 / 128
    assert parse_mode("fixed_0.1+cfg").computed_fraction(64) == parse_mode("fixed_0.1").computed_fraction(64) * (
        1 - 33 / 128)
    assert CfgCache(start=2, interval=3).cond_only_steps(8) == [2, 4, 5]  # 7 is the last step
    assert CfgCache(interval=1).cond_only_steps(64) == []


def test_the_weights_are_those_of_fastercaches_mochi_sampler():
    """1.25 on dHF from step 30, 1.15 on dLF up to step 50 (not 1.2 / 1.05: other models' samplers)."""
    assert (HIGH_WEIGHT, LOW_WEIGHT) == (FC_HIGH, FC_LOW)
    c = CfgCache()
    assert (c.high_from, c.low_until) == (FC_HIGH_FROM, FC_LOW_UNTIL)
    assert c.fields()["high_weight"] == 1.25 and c.fields()["low_weight"] == 1.15


def test_checks_refuse_batched_cfg_and_warn_when_it_never_acts():
    with pytest.raises(ValueError, match=r"batched CFG .* drop --batch_cfg, or the \+cfg modifier"):
        parse_mode("fixed_0.1+cfg").check(64, batch_cfg=True)
    assert parse_mode("fixed_0.1+cfg").check(64) == []
    (warning,) = parse_mode("fixed_0.1+cfg").check(16)
    assert "no step of this 16-step run is cond-only" in warning and "+cfg_s<step>" in warning
    assert parse_mode("fixed_0.1+taylor1").check(64, batch_cfg=True) == []


# -- the frequency split and the reconstruction ---------------------------------------------------------------------

def test_low_band_is_the_disc_of_radius_min_over_5_around_the_centre():
    mask = low_frequency_mask(8, 8)  # radius 8 // 5 = 1 around (4, 4)
    assert sorted(map(tuple, mask.nonzero().tolist())) == [(3, 4), (4, 3), (4, 4), (4, 5), (5, 4)]
    wide = low_frequency_mask(60, 106)  # 480x848 latents: radius 12 around (30, 53)
    assert wide.sum().item() == sum(1 for y in range(60) for x in range(106) if (x - 53) ** 2 + (y - 30) ** 2 <= 144)
    assert wide[30, 53] and wide[18, 53] and not wide[17, 53] and wide[30, 65] and not wide[30, 66]


def run_state(config, frames):
    """Drive a CfgCacheState as the sampler does: ``frames`` = [(step, cond, uncond or None)] of computed steps;
    returns the filled uncond outputs of the cond-only steps."""
    state = config.state()
    state.reset(64, [1.0] * 65)
    filled = {}
    for step, cond, uncond in frames:
        wanted = state.run_branches(step, ["cond", "uncond"])
        assert wanted == (["cond", "uncond"] if uncond is not None else ["cond"]), step
        outputs = {"cond": cond} if uncond is None else {"cond": cond, "uncond": uncond}
        state.fill(step, outputs, wanted)
        if uncond is None:
            filled[step] = outputs["uncond"]
    return filled


def test_reconstruction_worked_out_by_hand():
    """A constant offset lives at frequency 0 only (the low band); a checkerboard at the Nyquist corner (high).
    Cached at step 0 as uncond - cond = 0.5 + 0.25 * checkerboard, a cond-only step rebuilds uncond = cond + 0.5 * wl
    + 0.25 * wh * checkerboard, the weights (1.15 low, 1.25 high) compounding over consecutive cond-only steps."""
    g = torch.Generator().manual_seed(0)
    shape = (1, 3, 2, 8, 10)  # B, C, T, H, W
    y, x = torch.meshgrid(torch.arange(8), torch.arange(10), indexing="ij")
    checker = ((-1.0) ** (x + y)).float()
    cond0 = torch.randn(shape, generator=g)
    uncond0 = cond0 + 0.5 + 0.25 * checker
    cond = [torch.randn(shape, generator=g) for _ in range(3)]
    config = CfgCache(start=1, interval=100, high_from=2, low_until=2)
    filled = run_state(config, [(0, cond0, uncond0), (1, cond[0], None), (2, cond[1], None), (3, cond[2], None)])
    # step 1: dLF * 1.15 (1 <= 2); step 2: both (dHF * 1.25, dLF * 1.15 again); step 3: dHF * 1.25 again
    expected = {1: (1.15, 1.0), 2: (1.15 * 1.15, 1.25), 3: (1.15 * 1.15, 1.25 * 1.25)}
    for (step, (wl, wh)), c in zip(expected.items(), cond):
        torch.testing.assert_close(filled[step], c + 0.5 * wl + 0.25 * wh * checker, rtol=0, atol=1e-5)
    # every second step runs both: a full step caches a fresh difference and the weights start again
    every_other = CfgCache(start=1, interval=2, high_from=2, low_until=2)
    filled = run_state(every_other, [(0, cond0, uncond0), (1, cond[0], None), (2, cond0, uncond0),
                                     (3, cond[1], None)])
    torch.testing.assert_close(filled[3], cond[1] + 0.5 + 0.25 * 1.25 * checker, rtol=0, atol=1e-5)


def np_frames(a):
    """(B, C, T, H, W) -> (B T) C H W in float64, as FasterCache's sampler rearranges a DiT output for its FFT."""
    b, c, t, h, w = a.shape
    return a.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w).astype(np.float64)


def np_unframes(a, shape):
    b, c, t, h, w = shape
    return a.reshape(b, t, c, h, w).transpose(0, 2, 1, 3, 4)


def np_bands(a):
    """FasterCache's ``fft``: fft2, fftshift over every dimension, a disc of radius min(H, W) // 5 from a meshgrid."""
    spec = np.fft.fftshift(np.fft.fft2(a))
    h, w = a.shape[-2:]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    low = ((xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= (min(h, w) // 5) ** 2)[None, None]
    return spec * low, spec * ~low


def np_rebuild(cond_now, delta_low, delta_high):
    lc, hc = np_bands(np_frames(cond_now))
    return np_unframes(np.fft.ifft2(np.fft.ifftshift((delta_low + lc) + (delta_high + hc))).real, cond_now.shape)


def fastercache_numpy(cond_full, uncond_full, cond_now, w_low, w_high):
    """The published reconstruction in float64 numpy, laid out as FasterCache's Mochi sampler lays it out: latent
    frames as the batch, (B T) C H W; the whole array shifted; a disc mask from a meshgrid."""
    (lc, hc), (lu, hu) = np_bands(np_frames(cond_full)), np_bands(np_frames(uncond_full))
    return np_rebuild(cond_now, (lu - lc) * w_low, (hu - hc) * w_high)


@pytest.mark.parametrize("shape", [(1, 12, 3, 8, 8), (1, 12, 2, 12, 20), (1, 4, 1, 15, 9)])
def test_reconstruction_matches_an_independent_numpy_version(shape):
    g = torch.Generator().manual_seed(sum(shape))
    c0, u0, c1 = (torch.randn(shape, generator=g) for _ in range(3))
    filled = run_state(CfgCache(start=1, interval=100, high_from=1, low_until=1), [(0, c0, u0), (1, c1, None)])
    expected = fastercache_numpy(c0.numpy(), u0.numpy(), c1.numpy(), FC_LOW, FC_HIGH)
    np.testing.assert_allclose(filled[1].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert filled[1].dtype == torch.float32 and filled[1].shape == shape
    # with no weighting, the reconstruction is linear: cond_now + (uncond - cond) of the cached step
    mask = low_frequency_mask(shape[-2], shape[-1])
    from genmo_teacache.caches.cfgcache import frequency_difference

    torch.testing.assert_close(reconstruct_uncond(c1, *frequency_difference(c0, u0, mask), mask), c1 + (u0 - c0),
                               rtol=0, atol=1e-5)


def test_the_default_schedule_is_fastercaches_mochi_sampler_over_64_steps():
    """Every step computed (no step cache), 64 steps: FasterCache's model_fn transcribed in numpy (global
    differences recorded on full steps from step 20, scaled in place on cond-only steps) and the default ``+cfg``
    drop the same branches and rebuild the same uncond outputs, each from a difference at most 4 steps old."""
    shape = (1, 3, 2, 10, 12)
    rng = np.random.default_rng(0)
    state = CfgCache().state()
    state.reset(64, [1.0] * 65)
    delta_low = delta_high = None
    rebuilt = 0
    for cnt in range(64):
        cond, uncond = rng.standard_normal(shape), rng.standard_normal(shape)
        ran = state.run_branches(cnt, ["cond", "uncond"])
        outputs = {"cond": torch.from_numpy(cond).float()}
        if fastercache_cond_only(cnt):
            assert ran == ["cond"], cnt
            if cnt >= FC_HIGH_FROM:
                delta_high = delta_high * FC_HIGH
            if cnt <= FC_LOW_UNTIL:
                delta_low = delta_low * FC_LOW
            expected = np_rebuild(cond.astype(np.float32), delta_low, delta_high)
        else:
            assert ran == ["cond", "uncond"], cnt
            outputs["uncond"] = torch.from_numpy(uncond).float()
            if cnt >= FC_RECORD_FROM:
                (lc, hc) = np_bands(np_frames(cond.astype(np.float32)))
                (lu, hu) = np_bands(np_frames(uncond.astype(np.float32)))
                delta_low, delta_high = lu - lc, hu - hc
        state.fill(cnt, outputs, ran)
        record = StepRecord(cnt, 1.0, 0.0, None, None, 0.0, True, "threshold", branches=ran)
        state.annotate(record)
        if ran == ["cond"]:
            np.testing.assert_allclose(outputs["uncond"].numpy(), expected, rtol=1e-4, atol=1e-4, err_msg=str(cnt))
            assert record.difference_age == cnt - max(s for s in range(cnt) if not fastercache_cond_only(s)) <= 4
            rebuilt += 1
        else:
            assert record.difference_age is None
    assert rebuilt == 33


def test_a_difference_interval_or_more_steps_old_is_not_reused():
    """A step cache that skips the refresh steps: a computed step whose difference is ``interval`` (3) or more
    steps old runs both branches and caches a fresh difference; the ages of the cond-only steps are recorded."""
    state = CfgCache(start=1, interval=3).state()
    state.reset(16, [1.0] * 17)
    g = torch.Generator().manual_seed(0)
    branches, ages = {}, {}
    for step in (0, 1, 2, 5, 7, 8, 13, 14, 15):  # the computed steps; 3, 6, 9, 12 (refresh steps) are skipped
        ran = state.run_branches(step, ["cond", "uncond"])
        outputs = {b: torch.randn(1, 2, 1, 8, 8, generator=g) for b in ran}
        state.fill(step, outputs, ran)
        record = StepRecord(step, 1.0, 0.0, None, None, 0.0, True, "threshold", branches=ran)
        state.annotate(record)
        branches[step], ages[step] = len(ran), record.difference_age
    # 1, 2: ages 1, 2 (step 0's); 5: 5 steps old -> both; 7: age 2; 8: age 3 -> both; 13: 5 old -> both; 14: age 1
    assert branches == {0: 2, 1: 1, 2: 1, 5: 2, 7: 1, 8: 2, 13: 2, 14: 1, 15: 2}
    assert ages == {0: None, 1: 1, 2: 2, 5: None, 7: 2, 8: None, 13: None, 14: 1, 15: None}
    state.fill(4, {}, [])  # a skipped step: nothing learnt, no age
    record = StepRecord(4, 1.0, 0.0, None, None, 0.0, False, "skip", branches=[])
    state.annotate(record)
    assert record.difference_age is None


def test_no_cond_only_step_before_a_difference_is_cached():
    state = CfgCache(start=1, interval=100).state()
    state.reset(8, [1.0] * 9)
    assert state.run_branches(1, ["cond", "uncond"]) == ["cond", "uncond"]  # nothing cached yet
    assert state.run_branches(1, ["batched"]) == ["batched"]
    state.fill(0, {"batched": torch.zeros(2, 1, 1, 4, 4)}, ["batched"])  # batched CFG: nothing to learn or drop
    assert state.delta is None


# -- real runs -------------------------------------------------------------------------------------------------

def published_bands(t):
    """FasterCache's split of one DiT output (B, C, T, H, W), written out as its Mochi sampler does it: frames as
    the batch, fft2, fftshift over every dimension, the disc mask from a meshgrid."""
    b, c, f, h, w = t.shape
    spec = torch.fft.fftshift(torch.fft.fft2(t.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)))
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    low = ((xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= (min(h, w) // 5) ** 2)[None, None]
    return spec * low, spec * ~low


def published_uncond(cond, delta_low, delta_high):
    b, c, f, h, w = cond.shape
    low, high = published_bands(cond)
    frames = torch.fft.ifft2(torch.fft.ifftshift((delta_low + low) + (delta_high + high))).real
    return frames.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("key", method_params())
def test_a_skipped_uncond_branch_is_the_published_reconstruction_exactly(key, pipes, tiny_runs, cal, monkeypatch):
    """Hooks record every DiT output of a real run; on each cond-only step the uncond output the sampler combines
    must equal FasterCache's reconstruction from those outputs, bit for bit, and no uncond forward ran."""
    pipe = pipes["sdpa"]
    cache = parse_mode(f"{METHOD_MODES[key][0]}+cfg_s2_h3_l4", cal)
    base = tiny_runs.sample("sdpa", parse_mode(METHOD_MODES[key][0], cal))  # the method alone, before the spy below
    filled = {}
    fill = CfgCacheState.fill

    def spy(self, step, outputs, ran):
        fill(self, step, outputs, ran)
        if ran == ["cond"]:
            filled[step] = outputs["uncond"].clone()

    monkeypatch.setattr(CfgCacheState, "fill", spy)
    sigmas = GenerationSettings(width=64, height=64, num_frames=7, num_steps=STEPS).sampler_args(0)["sigma_schedule"]
    with Recorder(pipe.dit, sigmas) as rec:
        result = sample(pipe, conditioning(pipe, False), cache)
    steps = result.report.steps
    assert rec.forwards == result.report.dit_calls == sum(len(r.branches) for r in steps)
    cond_only = [r.step for r in steps if r.computed and r.branches == ["cond"]]
    assert cond_only and sorted(filled) == cond_only and result.report.cond_only_steps == len(cond_only)
    delta, weighted, full = None, set(), None
    for r in steps:
        if not r.computed:
            assert r.difference_age is None
            continue
        cond = rec.seen[(r.step, "cond")]["out"].float()
        if r.branches == ["cond", "uncond"]:
            (lc, hc), (lu, hu) = published_bands(cond), published_bands(rec.seen[(r.step, "uncond")]["out"].float())
            delta, full = (lu - lc, hu - hc), r.step
            assert r.difference_age is None
            continue
        assert "blocks" not in rec.seen.get((r.step, "uncond"), {}), "the uncond branch ran"
        assert r.difference_age == r.step - full < 5, r.step  # never a difference of interval (5) or more steps
        low, high = delta
        if r.step >= 3:
            high = high * FC_HIGH
            weighted.add("high")
        if r.step <= 4:
            low = low * FC_LOW
            weighted.add("low")
        delta = (low, high)
        assert torch.equal(filled[r.step], published_uncond(cond, low, high)), r.step
    assert weighted, "no cond-only step was weighted"
    if key == "teacache":  # its pattern puts cond-only steps in both weighting regimes
        assert weighted == {"high", "low"}
    assert [r.computed for r in base.report.steps] == [r.computed for r in steps]
    assert not torch.equal(base.latents, result.latents)


def test_a_real_run_refreshes_a_stale_difference(pipes):
    """The issue's example: ``+cfg_s4_i3`` at 16 steps under a step cache that skips the refresh steps (here a
    forced pattern: computed 0, 4, 8, 11, 13, 14, 15). Before, step 13 rebuilt uncond from step 0's difference; now
    each computed step whose difference is 3 or more steps old runs the uncond branch, as the hooks see."""
    pipe = pipes["sdpa"]
    computed = [0, 4, 8, 11, 13, 14, 15]
    cache = parse_mode("fixed_0.0+cfg_s4_i3")
    with Recorder(pipe.dit, GenerationSettings(width=64, height=64, num_frames=7, num_steps=16).sampler_args(0)[
            "sigma_schedule"]) as rec:
        result = sample(pipe, conditioning(pipe, False), cache, steps=16, policy=PatternPolicy(computed))
    steps = {r.step: r for r in result.report.steps if r.computed}
    assert sorted(steps) == computed
    # cond_only(step) for 4, 8, 11, 13, 14 (not multiples of 3, >= 4, not the last), but only 13 has a fresh one
    assert {s: r.branches for s, r in steps.items()} == {
        0: ["cond", "uncond"], 4: ["cond", "uncond"], 8: ["cond", "uncond"], 11: ["cond", "uncond"],
        13: ["cond"], 14: ["cond", "uncond"], 15: ["cond", "uncond"]}
    assert {s: r.difference_age for s, r in steps.items() if r.difference_age is not None} == {13: 2}
    assert all("blocks" in rec.seen[(s, "uncond")] for s in (4, 8, 11, 14))
    assert "blocks" not in rec.seen.get((13, "uncond"), {})
    assert result.report.to_dict()["steps"][13]["difference_age"] == 2


@pytest.mark.parametrize("key", method_params())
def test_a_schedule_that_never_drops_uncond_is_bit_identical_to_the_plain_method(key, tiny_runs, cal):
    mode = METHOD_MODES[key][0]
    base = tiny_runs.sample("sdpa", parse_mode(mode, cal))
    for suffix in ("cfg_i1", "cfg"):  # every step runs both; the default starts at step 22 of 64
        other = tiny_runs.sample("sdpa", parse_mode(f"{mode}+{suffix}", cal))
        assert other.report.dit_calls == base.report.dit_calls and other.report.cond_only_steps == 0
        assert torch.equal(other.latents, base.latents), suffix
    assert "cond-only" in other.report.warnings[-1]


def test_batched_cfg_is_refused_before_any_forward(pipes):
    pipe = pipes["flash"]
    with Recorder(pipe.dit, [1.0]) as rec, pytest.raises(ValueError, match="drop --batch_cfg"):
        sample(pipe, conditioning(pipe, True), parse_mode("fixed_0.05+cfg_s2"))
    assert rec.forwards == 0 and not rec.seen


def test_batched_cfg_with_cfg_is_refused_before_loading(tiny_model_dir, tmp_path):
    from genmo_teacache.batch.cli import batch_command
    from genmo_teacache.generate_cli import generate_command

    missing = str(tmp_path / "no_model_here")  # nothing is loaded: the check comes first
    out = CliRunner().invoke(generate_command, ["--model_dir", missing, "--batch_cfg", "--cache_mode",
                                                "fixed_0.1+cfg", "--device", "cpu"])
    assert out.exit_code != 0 and "drop --batch_cfg" in out.output, out.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    # batch refuses a missing weights folder before anything else (dry runs included): real weights, a dry run,
    # which loads nothing
    out = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--batch_cfg", "--modes",
                                             "baseline,fixed_0.1+cfg", "--prompts-file", str(prompts),
                                             "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--dry-run"])
    assert out.exit_code != 0 and "drop --batch_cfg" in out.output, out.output


def test_a_forced_pattern_for_benchmarks(pipes):
    """CondOnlyPattern forces which computed steps are cond-only (benchmarks): 3 of the 6 computed steps here."""
    pipe = pipes["sdpa"]
    computed = [0, 1, 3, 4, 6, 7]
    cache = CacheConfig(parse_mode("fixed_0.0").method, (CondOnlyPattern.every_other(computed),))
    result = sample(pipe, conditioning(pipe, False), cache, policy=PatternPolicy(computed))
    assert [r.branches for r in result.report.steps] == [
        ["cond", "uncond"], ["cond"], [], ["cond", "uncond"], ["cond"], [], ["cond", "uncond"], ["cond"]]
    assert result.report.dit_calls == 9 and result.report.ideal_speedup == 16 / 9
    assert result.report.config["modifiers"][0]["steps"] == [1, 4, 7]


def test_generate_writes_forwards_and_branches_to_the_sidecar(tiny_model_dir, tmp_path):
    from genmo_teacache.generate_cli import generate_command

    video = tmp_path / "v.mp4"
    out = CliRunner().invoke(generate_command, [
        "--model_dir", str(tiny_model_dir), "--cache_mode", "fixed_0.05+cfg_s2+taylor1", "--num_steps", "8",
        "--num_frames", "7", "--width", "64", "--height", "64", "--device", "cpu", "--seed", "0",
        "--save_file", str(video)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["mode"] == "fixed_0.05+cfg_s2+taylor1"
    assert [m["modifier"] for m in sidecar["cache"]["modifiers"]] == ["cfgcache", "taylor"]
    assert sidecar["dit_calls"] == sum(len(s["branches"]) for s in sidecar["steps"]) < 2 * 8
    assert sidecar["cond_only_steps"] == sum(s["branches"] == ["cond"] for s in sidecar["steps"]) > 0
    ages = [s["difference_age"] for s in sidecar["steps"] if s["branches"] == ["cond"]]
    assert ages and all(1 <= a < 5 for a in ages)  # recorded on every cond-only step, never interval (5) or more
    assert all(s["difference_age"] is None for s in sidecar["steps"] if s["branches"] != ["cond"])
    assert f"({sidecar['cond_only_steps']} cond-only)" in out.output and f"{sidecar['dit_calls']} DiT forwards" in (
        out.output)
