import pytest

from genmo_teacache.coefficients import Rescale
from genmo_teacache.config import CacheConfig
from genmo_teacache.policy import NoCachePolicy, TeaCachePolicy, make_policy

IDENTITY = Rescale(coefficients=(1.0, 0.0), x_max=1.0, source="identity")  # rescaled == raw


def run(config, raws, observe_only=False):
    policy = make_policy(config, observe_only=observe_only)
    policy.reset(len(raws))
    return [policy.decide(i, 1.0 - i / len(raws), raw) for i, raw in enumerate(raws)]


def computed(records):
    return [r.step for r in records if r.computed]


def test_fixed_threshold_accumulates_and_resets():
    raws = [None, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03]
    recs = run(CacheConfig.fixed(0.07, rescale=IDENTITY), raws)
    # 0.03, 0.06 skip; 0.09 >= 0.07 compute; reset ... ; first and last always computed
    assert computed(recs) == [0, 3, 6, 7]
    assert [r.reason for r in recs] == ["first", "skip", "skip", "threshold", "skip", "skip", "threshold", "last"]
    assert recs[3].accumulated == pytest.approx(0.09)


def test_threshold_zero_computes_every_step():
    recs = run(CacheConfig.fixed(0.0, rescale=IDENTITY), [None] + [1e-9] * 9)
    assert computed(recs) == list(range(10))


def test_two_phase_and_f_s_l_schedules_switch_thresholds():
    raws = [None] + [0.05] * 11
    two = run(CacheConfig.two_phase(0.12, 0.04, high_steps=6, rescale=IDENTITY), raws)
    assert [r.threshold for r in two] == [0.12] * 6 + [0.04] * 6
    # high phase: 0.05, 0.10 skip, 0.15 compute; low phase: every 0.05 >= 0.04 computes
    assert computed(two) == [0, 3, 6, 7, 8, 9, 10, 11]
    fsl = run(CacheConfig.from_mode("adaptive_f4s4l4", rescale=IDENTITY), raws)
    assert [r.threshold for r in fsl] == [0.12] * 4 + [0.04] * 4 + [0.12] * 4
    assert computed(fsl) == [0, 3, 4, 5, 6, 7, 10, 11]


def test_max_skips_limits_consecutive_skips():
    raws = [None] + [1e-4] * 9
    recs = run(CacheConfig.fixed(1.0, max_skips=2, rescale=IDENTITY), raws)
    assert computed(recs) == [0, 3, 6, 9]
    assert recs[3].reason == "max_skips"


def test_range_guard_forces_compute_outside_fitted_range():
    teacache = Rescale()
    raws = [None, 0.01, 0.2, 0.01, 0.01]  # 0.2 is past the peak: the polynomial is negative there
    guarded = run(CacheConfig.fixed(0.5, rescale=teacache), raws)
    assert guarded[2].computed and guarded[2].reason == "out_of_range"
    unguarded = run(CacheConfig.fixed(0.5, rescale=teacache, range_guard=False), raws)
    assert not unguarded[2].computed and unguarded[2].rescaled < 0


def test_observe_only_never_skips_but_records():
    recs = run(CacheConfig.fixed(10.0), [None, 0.01, 0.02, 0.03], observe_only=True)
    assert computed(recs) == [0, 1, 2, 3]
    assert recs[1].rescaled == pytest.approx(Rescale()(0.01))


def test_baseline_policy_and_reset_gives_clean_state():
    assert isinstance(make_policy(CacheConfig.baseline()), NoCachePolicy)
    policy = TeaCachePolicy(CacheConfig.fixed(0.07, rescale=IDENTITY))
    policy.reset(4)
    policy.decide(0, 1.0, None)
    policy.decide(1, 0.9, 0.05)
    assert policy.accumulated == pytest.approx(0.05)
    policy.reset(4)
    assert policy.accumulated == 0 and policy.consecutive_skips == 0
