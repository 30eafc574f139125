import math

import pytest

from genmo_teacache.coefficients import TEACACHE_MOCHI_COEFFICIENTS, Rescale
from genmo_teacache.config import CacheConfig

MODES = ["baseline", "fixed_0.04", "fixed_0.12", "adaptive_0.12_0.04", "adaptive_0.12_0.04_h20",
         "adaptive_f34s14l16", "adaptive_f30s10l24_0.2_0.1", "schedule_10x0.1_20x0.3_34x0.05",
         "fixed_0.1-max3", "adaptive_0.2_0.1-max2-noguard", "fixed_1e-05"]


@pytest.mark.parametrize("mode", MODES)
def test_mode_names_round_trip(mode):
    cfg = CacheConfig.from_mode(mode)
    assert cfg.name == mode
    assert CacheConfig.from_mode(cfg.name) == cfg


def test_reference_mode_names_and_schedules():
    assert CacheConfig.from_mode("mochi_baseline") == CacheConfig.baseline()
    assert CacheConfig.from_mode("mochi_fixed_0.04").thresholds(64) == [0.04] * 64
    two = CacheConfig.from_mode("mochi_adaptive_0.12_0.04").thresholds(64)
    assert two == [0.12] * 34 + [0.04] * 30  # high for steps 0-33
    fsl = CacheConfig.from_mode("mochi_adaptive_f34s14l16").thresholds(64)
    assert fsl == [0.12] * 34 + [0.04] * 14 + [0.12] * 16
    assert CacheConfig.from_schedule_string("34:0.12,14:0.04,16:0.12").name == "adaptive_f34s14l16"
    assert CacheConfig.from_schedule_string("10:0.3,rest:0.1").thresholds(12) == [0.3] * 10 + [0.1] * 2
    assert CacheConfig.two_phase(0.1, 0.1) == CacheConfig.fixed(0.1)  # equal values mean fixed


@pytest.mark.parametrize("bad, fragment", [
    ("fixed_-0.1", "fixed_-0.1"), ("fixed_nan", "fixed_nan"), ("turbo", "turbo"), ("adaptive_0.1", "adaptive_0.1"),
])
def test_unknown_or_bad_modes_name_the_value(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        CacheConfig.from_mode(bad)


def test_validation_names_the_value():
    with pytest.raises(ValueError, match="-0.5"):
        CacheConfig.fixed(-0.5)
    with pytest.raises(ValueError, match="nan"):
        CacheConfig.fixed(math.nan)
    with pytest.raises(ValueError, match="covers 64 steps but num_steps=50"):
        CacheConfig.from_mode("adaptive_f34s14l16").thresholds(50)
    with pytest.raises(ValueError, match="covers 34 steps but num_steps=8"):
        CacheConfig.from_mode("adaptive_0.12_0.04").thresholds(8)
    with pytest.raises(ValueError, match="STEPS:THRESHOLD"):
        CacheConfig.from_schedule_string("34-0.12")
    with pytest.raises(ValueError, match="max_skips=0"):
        CacheConfig.fixed(0.1, max_skips=0)


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
    cases = [("{", "not valid JSON"), ('{"coef": [1]}', "'coefficients' list"),
             ('{"coefficients": ["a"]}', "list of numbers"), ('{"coefficients": []}', "list of numbers")]
    for text, fragment in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=fragment):
            Rescale.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        Rescale.load(tmp_path / "missing.json")
