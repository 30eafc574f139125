"""TeaCache's config (mode names, schedules, validation), its rescale polynomial and its decisions on hand-worked
indicator traces."""

import json
import math

import pytest

from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.teacache import TeaCache
from genmo_teacache.coefficients import TEACACHE_MOCHI_COEFFICIENTS, Rescale

IDENTITY = Rescale(coefficients=(1.0, 0.0), x_max=1.0, source="identity")  # rescaled == raw

MODES = ["fixed_0.04", "fixed_0.12", "adaptive_0.12_0.04", "adaptive_0.12_0.04_h20", "adaptive_f34s14l16",
         "adaptive_f30s10l24_0.2_0.1", "schedule_10x0.1_20x0.3_34x0.05", "fixed_0.1-max3",
         "adaptive_0.2_0.1-max2-noguard", "fixed_1e-05"]


def run(config, raws, observe_only=False):
    policy = config.policy(observe_only=observe_only)
    policy.reset(len(raws))
    return [policy.decide(i, 1.0 - i / len(raws), raw) for i, raw in enumerate(raws)]


def computed(records):
    return [r.step for r in records if r.computed]


@pytest.mark.parametrize("mode", MODES)
def test_mode_names_round_trip(mode):
    cfg = parse_mode(mode).method
    assert isinstance(cfg, TeaCache) and cfg.name == mode
    assert TeaCache.parse(cfg.name) == cfg


def test_reference_mode_names_and_schedules():
    assert parse_mode("mochi_fixed_0.04").method.thresholds(64) == [0.04] * 64
    two = parse_mode("mochi_adaptive_0.12_0.04").method.thresholds(64)
    assert two == [0.12] * 34 + [0.04] * 30  # high for steps 0-33
    fsl = parse_mode("mochi_adaptive_f34s14l16").method.thresholds(64)
    assert fsl == [0.12] * 34 + [0.04] * 14 + [0.12] * 16
    assert TeaCache.from_schedule_string("34:0.12,14:0.04,16:0.12").name == "adaptive_f34s14l16"
    assert TeaCache.from_schedule_string("10:0.3,rest:0.1").thresholds(12) == [0.3] * 10 + [0.1] * 2
    assert TeaCache.two_phase(0.1, 0.1) == TeaCache.fixed(0.1)  # equal values mean fixed


def test_a_schedule_longer_than_the_run_is_cut_with_a_warning():
    """The reference cuts a schedule at the run's last step: adaptive_0.12_0.04 runs at 16 steps (the tiny model's
    default), all of them in the high phase, and says that the low phase never starts."""
    adaptive = parse_mode("adaptive_0.12_0.04")
    assert adaptive.method.thresholds(16) == [0.12] * 16
    (warning,) = adaptive.check(16)
    assert "cut" in warning and "16 x 0.12" in warning and "never start" in warning
    assert adaptive.to_dict(16)["effective_schedule"] == [{"steps": 16, "threshold": 0.12}]
    fsl = parse_mode("adaptive_f34s14l16").method
    assert fsl.thresholds(40) == [0.12] * 34 + [0.04] * 6 and "never start" in fsl.check(40)[0]
    assert parse_mode("adaptive_0.12_0.04").check(64) == [] and parse_mode("fixed_0.1").check(3) == []


def test_a_schedule_shorter_than_the_run_is_an_error():
    with pytest.raises(ValueError, match="covers 64 steps but num_steps=70"):
        parse_mode("adaptive_f34s14l16").check(70)


@pytest.mark.parametrize("bad, fragment", [
    ("fixed_-0.1", "fixed_-0.1"), ("fixed_nan", "fixed_nan"), ("turbo", "turbo"), ("adaptive_0.1", "adaptive_0.1"),
    ("fixed_0.1-max2-max3", "twice"), ("fixed_0.1-noguard-noguard", "twice"),
])
def test_unknown_or_bad_modes_name_the_value(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_mode(bad)


def test_validation_names_the_value():
    with pytest.raises(ValueError, match="-0.5"):
        TeaCache.fixed(-0.5)
    with pytest.raises(ValueError, match="nan"):
        TeaCache.fixed(math.nan)
    with pytest.raises(ValueError, match="STEPS:THRESHOLD"):
        TeaCache.from_schedule_string("34-0.12")
    with pytest.raises(ValueError, match="max_skips=0"):
        TeaCache.fixed(0.1, max_skips=0)


def test_teacache_polynomial_and_range():
    r = Rescale()
    assert r.coefficients == TEACACHE_MOCHI_COEFFICIENTS
    assert 0.105 < r.x_max < 0.111  # the polynomial peaks near raw 0.108 ...
    assert r(0.108) == pytest.approx(0.0987, abs=1e-3)
    assert r(0.15) < 0  # ... and is negative past ~0.144
    assert r(0.0) == pytest.approx(3.05291719e-03)


def test_coefficient_files(tmp_path):
    good = tmp_path / "c.json"
    good.write_text('{"coefficients": [1.0, 0.5], "x_range": [0.0, 0.3], "r2": 0.9}')
    r = Rescale.load(good)
    assert r(0.2) == pytest.approx(0.7) and r.x_max == 0.3 and r.info["r2"] == 0.9
    assert parse_mode("fixed_0.1", calibration=good).method.rescale == r
    cases = [("{", "not valid JSON"), ('{"coef": [1]}', "'coefficients' list"),
             ('{"coefficients": ["a"]}', "list of numbers"), ('{"coefficients": []}', "list of numbers"),
             ('{"coefficients": [1.0, 0.5], "x_range": 0.3}', "must be a list \\[lo, hi\\]"),
             ('{"coefficients": [1.0, 0.5], "x_range": [0.3]}', "must be a list \\[lo, hi\\]"),
             ('{"coefficients": [1.0, 0.5], "x_range": [0, "a"]}', "must be a list \\[lo, hi\\]")]
    for text, fragment in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=fragment) as e:
            Rescale.load(bad)
        assert str(bad) in str(e.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ValueError, match=f"{binary} is not UTF-8"):
        Rescale.load(binary)
    with pytest.raises(ValueError, match="does not exist"):
        Rescale.load(tmp_path / "missing.json")


def test_fixed_threshold_accumulates_and_resets():
    raws = [None, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03]
    recs = run(TeaCache.fixed(0.07, rescale=IDENTITY), raws)
    # 0.03, 0.06 skip; 0.09 >= 0.07 compute; reset ... ; first and last always computed
    assert computed(recs) == [0, 3, 6, 7]
    assert [r.reason for r in recs] == ["first", "skip", "skip", "threshold", "skip", "skip", "threshold", "last"]
    assert recs[3].accumulated == pytest.approx(0.09)


def test_threshold_zero_computes_every_step():
    recs = run(TeaCache.fixed(0.0, rescale=IDENTITY), [None] + [1e-9] * 9)
    assert computed(recs) == list(range(10))


def test_two_phase_and_f_s_l_schedules_switch_thresholds():
    raws = [None] + [0.05] * 11
    two = run(TeaCache.two_phase(0.12, 0.04, high_steps=6, rescale=IDENTITY), raws)
    assert [r.threshold for r in two] == [0.12] * 6 + [0.04] * 6
    # high phase: 0.05, 0.10 skip, 0.15 compute; low phase: every 0.05 >= 0.04 computes
    assert computed(two) == [0, 3, 6, 7, 8, 9, 10, 11]
    fsl = run(TeaCache(schedule=TeaCache.parse("adaptive_f4s4l4").schedule, rescale=IDENTITY), raws)
    assert [r.threshold for r in fsl] == [0.12] * 4 + [0.04] * 4 + [0.12] * 4
    assert computed(fsl) == [0, 3, 4, 5, 6, 7, 10, 11]


def test_max_skips_limits_consecutive_skips():
    raws = [None] + [1e-4] * 9
    recs = run(TeaCache.fixed(1.0, max_skips=2, rescale=IDENTITY), raws)
    assert computed(recs) == [0, 3, 6, 9]
    assert recs[3].reason == "max_skips"


def test_range_guard_forces_compute_outside_fitted_range():
    teacache = Rescale()
    raws = [None, 0.01, 0.2, 0.01, 0.01]  # 0.2 is past the peak: the polynomial is negative there
    guarded = run(TeaCache.fixed(0.5, rescale=teacache), raws)
    assert guarded[2].computed and guarded[2].reason == "out_of_range"
    unguarded = run(TeaCache.fixed(0.5, rescale=teacache, range_guard=False), raws)
    assert not unguarded[2].computed and unguarded[2].rescaled < 0
    nan = run(TeaCache.fixed(0.5, rescale=teacache, range_guard=False), [None, math.nan, 0.01])
    assert nan[1].computed and nan[1].reason == "out_of_range"


def test_observe_only_never_skips_but_records():
    recs = run(TeaCache.fixed(10.0), [None, 0.01, 0.02, 0.03], observe_only=True)
    assert computed(recs) == [0, 1, 2, 3]
    assert recs[1].rescaled == pytest.approx(Rescale()(0.01))


def test_reset_gives_clean_state_and_records_are_json():
    policy = TeaCache.fixed(0.07, rescale=IDENTITY).policy()
    policy.reset(4)
    policy.decide(0, 1.0, None)
    json.dumps(policy.decide(1, 0.9, 0.05).to_dict())
    assert policy.accumulated == pytest.approx(0.05)
    policy.reset(4)
    assert policy.accumulated == 0 and policy.consecutive_skips == 0


def test_command_line_overrides():
    cfg = parse_mode("fixed_0.1")
    assert cfg.with_method_options(max_skips=3, range_guard=False).name == "fixed_0.1-max3-noguard"
    assert cfg.with_method_options().name == "fixed_0.1"
    assert TeaCache.from_options() is None
    assert TeaCache.from_options(high=0.12, low=0.04, high_steps=20).name == "adaptive_0.12_0.04_h20"
    with pytest.raises(ValueError, match="--teacache_thresh_low"):
        TeaCache.from_options(high=0.12)
    with pytest.raises(ValueError, match="not --teacache_thresh and --teacache_schedule"):
        TeaCache.from_options(thresh=0.1, schedule="rest:0.1")


@pytest.mark.parametrize("coefficients, x_range, message", [
    ([-1.0, 0.0], [0.0, 0.3], "zero or negative all over its range [0, 0.3]"),
    ([0.0], [0.0, 0.3], "zero or negative all over its range"),
    ([1.0, -0.7], [0.2, 0.6], "zero or negative all over its range [0.2, 0.6]"),
])
def test_a_polynomial_that_never_adds_up_is_refused_before_any_model_loads(tiny_model_dir, tmp_path, coefficients,
                                                                         x_range, message):
    """A coefficients file the cache could not use (every step would be skipped) is refused by generate and batch,
    naming the file, before any model loads."""
    from click.testing import CliRunner

    from genmo_teacache.batch.cli import batch_command
    from genmo_teacache.generate_cli import generate_command

    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({"coefficients": coefficients, "x_range": x_range}))
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--cache_mode", "fixed_0.1",
                                                "--calibration", str(bad), "--out_dir", str(tmp_path / "out")])
    assert res.exit_code == 2 and str(bad) in res.output and message in res.output, res.output
    assert "Timing load" not in res.output and not (tmp_path / "out").exists()
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--modes", "baseline,fixed_0.1",
                                             "--calibration", str(bad), "--output-dir", str(tmp_path / "b")])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "b").exists()
