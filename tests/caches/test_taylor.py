"""Forecasting on skipped steps (+taylor<order>[s]): TaylorSeer's finite-difference formulas worked out by hand,
against an independent float64 implementation of its recursion, and on real tiny runs watched with hooks, with every
registered method (METHOD_MODES: TeaCache in the default stage, the others with ``-m slow``)."""

import math

import numpy as np
import pytest
import torch
from _modifier_helpers import (
    METHOD_MODES,
    STEPS,
    Recorder,
    conditioning,
    entry_and_quantity,
    entry_of_skip,
    method_params,
    sample,
)

from genmo_teacache.caches import CacheConfig, parse_mode
from genmo_teacache.caches.pattern import PatternPolicy
from genmo_teacache.caches.taylor import Taylor, forecast, taylor_weights
from genmo_teacache.generate import GenerationSettings


@pytest.fixture(scope="module")
def cal(method_calibration):
    return method_calibration


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# -- the formulas -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["taylor0", "taylor1", "taylor2", "taylor1s", "taylor2s"])
def test_mode_names_round_trip(text, cal):
    for method in ("fixed_0.06", "mag_0.1_r0.0"):
        config = parse_mode(f"{method}+{text}", cal)
        assert config.name == f"{method}+{text}" and config.modifiers == (Taylor.parse(text),)
        assert parse_mode(config.name, cal) == config == parse_mode(f"mochi_{method}+{text}", cal)
    assert parse_mode(f"fixed_0.06+cfg+{text}").name == f"fixed_0.06+cfg+{text}"


@pytest.mark.parametrize("text, fragment", [("taylor3", "order 3: use 0, 1 or 2"), ("taylor", "is not a forecast"),
                                            ("taylor1x", "is not a forecast"), ("taylor12", "is not a forecast")])
def test_bad_names_say_what_to_write(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_mode(f"fixed_0.1+{text}")
    with pytest.raises(ValueError, match="given twice"):
        parse_mode("fixed_0.1+taylor1+taylor2")
    with pytest.raises(ValueError, match="not baseline"):
        parse_mode("baseline+taylor1")


def test_order_1_worked_out_by_hand():
    # F = 1 at step 2, 3 at step 4: D1 = (3 - 1) / 2 = 1, so F(5) = 3 + 1 * 1 = 4 and F(7) = 3 + 1 * 3 = 6
    history = [(2, t(1.0, -2.0)), (4, t(3.0, -1.0))]  # second entry: D1 = 0.5, F(5) = -0.5, F(7) = 0.5
    assert torch.equal(forecast(history, 5.0, 1), t(4.0, -0.5))
    assert torch.equal(forecast(history, 7.0, 1), t(6.0, 0.5))
    assert taylor_weights([2.0, 4.0], 7.0, 1) == [-1.5, 2.5]  # F(7) = 2.5 F_4 - 1.5 F_2


def test_order_2_worked_out_by_hand():
    # steps 2, 4, 6 with F = 1, 3, 7: D1 = (7 - 3) / 2 = 2, D1' = (3 - 1) / 2 = 1, D2 = (2 - 1) / 2 = 0.5;
    # F(7) = 7 + 2 * 1 + 0.5 * 1^2 / 2 = 9.25, F(8) = 7 + 2 * 2 + 0.5 * 2^2 / 2 = 12
    history = [(2, t(1.0)), (4, t(3.0)), (6, t(7.0))]
    assert torch.equal(forecast(history, 7.0, 2), t(9.25))
    assert torch.equal(forecast(history, 8.0, 2), t(12.0))
    assert torch.equal(forecast(history, 7.0, 1), t(9.0))  # order 1 takes the last two: 7 + 2 * 1
    # uneven spacing, steps 0, 1, 3 with F = 0, 1, 4: D1' = 1, D1 = 3 / 2, D2 = (1.5 - 1) / 2 (the latest distance,
    # as TaylorSeer divides); F(4) = 4 + 1.5 + 0.25 / 2 = 5.625
    assert torch.equal(forecast([(0, t(0.0)), (1, t(1.0)), (3, t(4.0))], 4.0, 2), t(5.625))


def test_sigma_as_the_variable_worked_out_by_hand():
    # sigmas 1, 0.75, 0.5, 0.25: F = 2 at step 0, 3 at step 1: D1 = 1 / -0.25 = -4; at step 3, h = 0.25 - 0.75 = -0.5:
    # F = 3 + (-4)(-0.5) = 5
    state = Taylor(order=1, in_sigma=True).state()
    state.reset(4, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert torch.equal(state.estimate(3, [(0, t(2.0)), (1, t(3.0))]), t(5.0))
    steps = Taylor(order=1).state()
    steps.reset(4, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert torch.equal(steps.estimate(3, [(0, t(2.0)), (1, t(3.0))]), t(5.0))  # the same here: sigma is linear
    steps.reset(4, [1.0, 0.9, 0.5, 0.25, 0.0])
    state.reset(4, [1.0, 0.9, 0.5, 0.25, 0.0])
    assert not torch.equal(state.estimate(3, [(0, t(2.0)), (1, t(3.0))]), t(5.0))


def test_fewer_computed_steps_than_the_order_needs_lower_it():
    one, two = [(0, t(5.0))], [(0, t(5.0)), (2, t(6.0))]
    assert torch.equal(forecast(one, 3.0, 2), t(5.0))
    assert torch.equal(forecast(two, 3.0, 2), forecast(two, 3.0, 1)) and torch.equal(forecast(two, 3.0, 1), t(6.5))
    assert torch.equal(forecast(two, 3.0, 0), t(6.0))  # order 0: the last value, as a plain skip reuses it
    assert Taylor(order=2).state().history == 3 and Taylor(order=0).state().history == 1
    with pytest.raises(ValueError, match="same coordinate"):
        forecast([(1, t(1.0)), (1, t(2.0))], 3.0, 1)


def taylorseer_numpy(xs, values, x, order):
    """TaylorSeer's recursion as its code writes it, in float64: factors updated at each computed step."""
    factors = None
    for k, (xk, fk) in enumerate(zip(xs, values)):
        new = {0: np.asarray(fk, dtype=np.float64)}
        if factors is not None:
            for j in range(order):
                if j not in factors:
                    break
                new[j + 1] = (new[j] - factors[j]) / (xk - xs[k - 1])
        factors = new
    h = x - xs[-1]
    return sum(factors[j] * h**j / math.factorial(j) for j in factors)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_random_histories_match_taylorseers_recursion(order):
    rng = np.random.default_rng(order)
    for _ in range(20):
        xs = sorted(rng.choice(40, size=order + 1, replace=False).tolist())
        values = [rng.standard_normal(16).astype(np.float32) for _ in xs]
        x = xs[-1] + int(rng.integers(1, 5))
        got = forecast([(s, torch.from_numpy(v)) for s, v in zip(xs, values)], float(x), order)
        np.testing.assert_allclose(got.numpy(), taylorseer_numpy(xs, values, x, order), rtol=1e-5, atol=1e-4)


def test_the_forecast_leaves_the_history_alone():
    history = [(0, t(1.0, 2.0)), (1, t(2.0, 2.0)), (2, t(4.0, 2.0))]
    kept = [v.clone() for _, v in history]
    forecast(history, 5.0, 2)
    assert all(torch.equal(v, k) for (_, v), k in zip(history, kept))


# -- real runs -------------------------------------------------------------------------------------------------

def check_forecasts(result, rec, method, order, state) -> int:
    """Walk a run: every skipped step's final-layer input is what it adds to plus the forecast from the quantities
    the hooks saw at the last computed steps, exactly. Returns how many skips used at least two computed steps."""
    histories: dict[str, list] = {}
    used = 0
    for r in result.report.steps:
        for branch in ("cond", "uncond"):
            seen = rec.seen.get((r.step, branch), {})
            if r.computed:
                entry, quantity = entry_and_quantity(method.reuse, seen)
                histories.setdefault(branch, []).append((r.step, quantity))
                continue
            history = histories[branch]
            expected = forecast(history, state.coordinate(r.step), order, state.coordinate)
            used += len(history) > 1 and order > 0
            entry = entry_of_skip(method.reuse, seen)
            if entry is not None:
                assert torch.equal(seen["final_in"], (entry.float() + expected).to(entry.dtype)), (r.step, branch)
    return used


@pytest.mark.parametrize("key", method_params())
@pytest.mark.parametrize("variant", ["taylor2", "taylor1s"])
def test_a_skipped_step_reuses_the_forecast_exactly(key, variant, pipes, tiny_runs, cal):
    """A forced pattern (computed 0, 1, 2, 4, 6, 7) with the method's indicator and reuse: step 3 forecasts from
    steps 0-2, step 5 from steps 1, 2, 4 (uneven)."""
    pipe = pipes["sdpa"]
    cache = parse_mode(f"{METHOD_MODES[key][0]}+{variant}", cal)
    policy = PatternPolicy({0, 1, 2, 4, 6, 7}, method=cache.method)
    sigmas = GenerationSettings(width=64, height=64, num_frames=7, num_steps=STEPS).sampler_args(0)["sigma_schedule"]
    state = cache.modifiers[0].state()
    state.reset(STEPS, sigmas)
    with Recorder(pipe.dit, sigmas) as rec:
        result = sample(pipe, conditioning(pipe, False), cache, policy=policy)
    assert [r.step for r in result.report.steps if not r.computed] == [3, 5]
    assert check_forecasts(result, rec, cache.method, cache.modifiers[0].order, state) == 4
    without = tiny_runs.sample("sdpa", CacheConfig(cache.method), computed=frozenset(policy.computed))
    assert not torch.equal(result.latents, without.latents)
    assert result.report.to_dict()["cache"]["modifiers"][0]["name"] == variant


@pytest.mark.parametrize("key", method_params())
def test_with_the_methods_own_decisions(key, pipes, tiny_runs, cal):
    pipe = pipes["sdpa"]
    cache = parse_mode(f"{METHOD_MODES[key][0]}+taylor1", cal)
    sigmas = GenerationSettings(width=64, height=64, num_frames=7, num_steps=STEPS).sampler_args(0)["sigma_schedule"]
    state = cache.modifiers[0].state()
    state.reset(STEPS, sigmas)
    with Recorder(pipe.dit, sigmas) as rec:
        result = sample(pipe, conditioning(pipe, False), cache)
    assert check_forecasts(result, rec, cache.method, 1, state) > 0, "no skip after two computed steps"
    base = tiny_runs.sample("sdpa", parse_mode(METHOD_MODES[key][0], cal))
    assert [r.computed for r in base.report.steps] == [r.computed for r in result.report.steps]
    assert not torch.equal(result.latents, base.latents)


@pytest.mark.parametrize("key", method_params())
def test_order_0_or_no_skip_is_bit_identical_to_the_plain_method(key, tiny_runs, cal):
    skipping, zero = METHOD_MODES[key]
    base = tiny_runs.sample("sdpa", parse_mode(skipping, cal))
    order0 = tiny_runs.sample("sdpa", parse_mode(f"{skipping}+taylor0", cal))
    assert base.report.skipped_steps > 0
    assert torch.equal(order0.latents, base.latents)
    never = tiny_runs.sample("sdpa", parse_mode(f"{zero}+taylor2", cal))
    assert never.report.skipped_steps == 0
    assert torch.equal(never.latents, tiny_runs.sample("sdpa", parse_mode("baseline")).latents)


@pytest.mark.parametrize("key", method_params())
def test_batched_and_unbatched_cfg_decide_alike(key, tiny_runs, cal):
    cache = parse_mode(f"{METHOD_MODES[key][0]}+taylor2", cal)  # on flash (varlen attention): batched CFG on CPU too
    unbatched = tiny_runs.sample("flash", cache)
    batched = tiny_runs.sample("flash", cache, batched=True)
    assert [r.computed for r in batched.report.steps] == [r.computed for r in unbatched.report.steps]
    assert batched.report.dit_calls * 2 == unbatched.report.dit_calls
    assert batched.report.skipped_steps > 0
