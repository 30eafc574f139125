"""The MagCache policy's decisions on given ratio traces (worked out by hand), its config and mode names."""

import json
import logging
import re

import pytest

from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.magcache import MagCache, MagCachePolicy
from genmo_teacache.coefficients import load_mag_ratios, resample_ratios


def mag(threshold, ratios, **kw):
    return MagCache(threshold=threshold, mag_ratios=tuple(ratios), **kw)


def run(config, num_steps):
    policy = config.policy()
    policy.reset(num_steps)
    return [policy.decide(i, 1.0 - i / num_steps, None) for i in range(num_steps)]


def computed(records):
    return [r.step for r in records if r.computed]


def test_skip_pattern_worked_out_by_hand():
    ratios = [1.0, 1.3, 1.02, 1.02, 1.02, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0, 0.5]
    recs = run(mag(0.05, ratios), 12)  # K=2, retention 0.2: floor(2.4) = 2 steps always computed
    # step 1: retention (its ratio 1.3 is never accumulated)
    # step 2: ratio 1.02,                    error 0.02            skip 1
    # step 3: ratio 1.02 * 1.02 = 1.0404,    error 0.02 + 0.0404   > 0.05: compute, start over
    # step 4: ratio 1.02,                    error 0.02            skip 1
    # step 5: ratio 1.02 * 1.0 = 1.02,       error 0.04            skip 2
    # step 6: ratio 1.02 * 0.9 = 0.918,      error 0.04 + 0.082    > 0.05: compute
    # steps 7, 8: ratio 1.0, error 0: skip 1, skip 2; step 9: skip 3 > K: compute
    # step 10: skip 1; step 11: the last step is always computed
    assert computed(recs) == [0, 1, 3, 6, 9, 11]
    assert [r.reason for r in recs] == ["first", "retention", "skip", "threshold", "skip", "skip", "threshold",
                                        "skip", "skip", "max_skips", "skip", "last"]
    assert [r.accumulated for r in recs] == pytest.approx([0, 0, 0.02, 0.0604, 0.02, 0.04, 0.122, 0, 0, 0, 0, 0])
    assert [r.mag_ratio for r in recs] == ratios
    assert all(r.raw is None and r.rescaled is None and r.threshold == 0.05 for r in recs)


def test_k_and_retention_change_the_pattern():
    ones = [1.0] * 10
    assert computed(run(mag(0.0, ones, k=1, retention=0.0), 10)) == [0, 2, 4, 6, 8, 9]
    assert computed(run(mag(0.0, ones, k=3, retention=0.0), 10)) == [0, 4, 8, 9]
    assert computed(run(mag(0.0, ones, k=3, retention=0.5), 10)) == [0, 1, 2, 3, 4, 8, 9]
    # any change at all exceeds a zero threshold: every step computed
    assert computed(run(mag(0.0, [1.0] + [1.01] * 9, retention=0.0), 10)) == list(range(10))


def test_reset_starts_a_generation_clean():
    policy = MagCachePolicy(mag(0.5, [1.0, 1.1, 1.1, 1.1, 1.0]))
    policy.reset(5)
    policy.decide(0, 1.0, None)
    policy.decide(1, 0.8, None)
    assert policy.consecutive_skips == 1 and policy.accumulated_error == pytest.approx(0.1)
    policy.reset(5)
    assert (policy.accumulated_ratio, policy.accumulated_error, policy.consecutive_skips) == (1.0, 0.0, 0)


def test_ratios_for_another_step_count_are_mapped_by_nearest_index(caplog):
    ratios = (1.0, 1.1, 1.2, 1.3)
    assert resample_ratios(ratios, 4) == ratios
    assert resample_ratios(ratios, 7) == (1.0, 1.0, 1.1, 1.2, 1.2, 1.2, 1.3)  # indices round(i * 0.5), half to even
    policy = MagCachePolicy(mag(0.06, ratios, source="cal.json"))
    with caplog.at_level(logging.WARNING, logger="genmo_teacache.caches.magcache"):
        policy.reset(7)
    assert "calibrated for 4 steps" in caplog.text and "cal.json" in caplog.text
    assert policy.ratios == (1.0, 1.0, 1.1, 1.2, 1.2, 1.2, 1.3)


RATIOS = (1.0, 1.02, 0.98, 1.01)


@pytest.fixture
def cal(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"coefficients": [1.0, 0.0], "x_range": [0, 0.2], "mag_ratios": list(RATIOS)}))
    return path


@pytest.mark.parametrize("mode", ["mag_0.06", "mag_0.06_k3", "mag_0.1_r0.1", "mag_0.25_k4_r0.05", "mag_0.0_r0.0"])
def test_mode_names_round_trip(mode, cal):
    cfg = parse_mode(mode, cal)
    assert cfg.name == mode and isinstance(cfg.method, MagCache) and cfg.enabled
    assert parse_mode(cfg.name, cal) == cfg


def test_mode_defaults_and_fields(cal):
    cfg = parse_mode("mochi_mag_0.06", cal).method
    assert cfg.name == "mag_0.06" and cfg.k == 2 and cfg.retention == 0.2
    assert cfg == mag(0.06, RATIOS)
    assert parse_mode("mag_0.06_k2_r0.2", cal).name == "mag_0.06"  # defaults left out
    assert cfg.indicator == "none"
    d = cfg.to_dict(6)
    assert {k: d[k] for k in ("mode", "method", "threshold", "max_skips", "retention")} == {
        "mode": "mag_0.06", "method": "magcache", "threshold": 0.06, "max_skips": 2, "retention": 0.2}
    assert d["mag_ratios"] == list(RATIOS) and len(d["mag_ratios_resampled"]) == 6
    assert "mag_ratios_resampled" not in cfg.to_dict(4)
    assert "mapped onto 6" in cfg.check(6)[0] and cfg.check(4) == []
    json.dumps(d)
    assert parse_mode("mag_0.06", cal).with_method_options(max_skips=4).name == "mag_0.06_k4"


def test_ratios_from_a_calibration_file(cal):
    cfg = parse_mode("mag_0.06", cal).method
    assert cfg.mag_ratios == RATIOS and cfg.source == str(cal)
    assert cfg == mag(0.06, RATIOS)  # where they came from is not identity


def test_missing_ratios_say_how_to_get_them():
    with pytest.raises(ValueError, match=r"mode mag_0.06 needs .*genmo-teacache calibrate.*--calibration"):
        parse_mode("mag_0.06")


@pytest.mark.parametrize("kw, fragment", [
    (dict(k=0), "K=0"),
    (dict(retention=1.0), "retention 1.0 must be in [0, 1)"),
    (dict(mag_ratios=(1.0, -1.0)), "step 1 has -1.0"),
    (dict(mag_ratios=(1.0,)), "at least 2 numbers"),
    (dict(mag_ratios=(1.0, float("nan"))), "step 1 has nan"),
])
def test_bad_mag_configs_name_the_value(kw, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        MagCache(**{"threshold": 0.06, "mag_ratios": RATIOS, **kw})


@pytest.mark.parametrize("mode, fragment", [("mag_-0.1", "not a MagCache mode"), ("mag_0.06-max3", "not a MagCache")])
def test_bad_mag_modes_name_the_mode(mode, fragment, cal):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_mode(mode, cal)


def test_bad_ratio_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*genmo-teacache calibrate"):
        load_mag_ratios(tmp_path / "missing.json")
    no_ratios = tmp_path / "teacache_only.json"
    no_ratios.write_text('{"coefficients": [1.0, 0.0], "x_range": [0, 0.2]}')
    with pytest.raises(ValueError, match="has no 'mag_ratios' list"):
        load_mag_ratios(no_ratios)
