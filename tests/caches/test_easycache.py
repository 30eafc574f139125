"""EasyCache: its decisions on hand-worked traces (input changes and transformation rates as the sampler hands them
in), its config and mode names, and on the tiny model that the sampler measures and reuses what the published rule
says: a skipped step's output is the input latent plus the branch's cached transformation vector."""

import copy
import re

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.easycache import DEFAULT_WARMUP, EasyCache
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model


def run(config, raws, rates):
    """Drive the policy as the sampler does: ``decide`` on every step, then ``observe`` after a computed step for
    which the sampler has a rate (``rates[step]``; the first computed step has none)."""
    policy = config.policy()
    policy.reset(len(raws))
    records = []
    for step, raw in enumerate(raws):
        record = policy.decide(step, 1.0 - step / len(raws), raw)
        records.append(record)
        if record.computed and rates.get(step) is not None:
            policy.observe(step, rates[step])
    return records


def computed(records):
    return [r.step for r in records if r.computed]


def test_decisions_worked_out_by_hand():
    raws = [None, 0.02, 0.03, 0.03, 0.05, 0.01, 0.02, 0.03, 0.04, 0.03]
    rates = {1: 2.0, 3: 1.0, 7: 0.5}  # k measured after the computed steps 1, 3 and 7
    recs = run(EasyCache(threshold=0.1, warmup=2), raws, rates)
    # step 0: first; step 1: warm-up (k = 2 from now on)
    # step 2: pred 2 * 0.03 = 0.06,  acc 0.06          skip
    # step 3: pred 2 * 0.03 = 0.06,  acc 0.12 >= 0.1   compute, acc = 0 (k = 1 from now on)
    # step 4: pred 0.05, acc 0.05 skip; step 5: pred 0.01, acc 0.06 skip; step 6: pred 0.02, acc 0.08 skip
    # step 7: pred 0.03, acc 0.11 >= 0.1   compute (k = 0.5 from now on)
    # step 8: pred 0.5 * 0.04 = 0.02, acc 0.02 skip; step 9: the last step is always computed
    assert computed(recs) == [0, 1, 3, 7, 9]
    assert [r.reason for r in recs] == ["first", "warmup", "skip", "threshold", "skip", "skip", "skip", "threshold",
                                        "skip", "last"]
    assert [r.rescaled for r in recs] == pytest.approx([None, None, 0.06, 0.06, 0.05, 0.01, 0.02, 0.03, 0.02, None])
    assert [r.accumulated for r in recs] == pytest.approx([0, 0, 0.06, 0.12, 0.05, 0.06, 0.08, 0.11, 0.02, 0])
    assert [r.rate for r in recs] == [None, None, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert [r.raw for r in recs] == raws and all(r.threshold == 0.1 for r in recs)


def test_the_sum_reaching_tau_computes():
    """``acc < tau`` skips: a sum exactly equal to tau computes (0.25 + 0.25 = 0.5 in binary floating point)."""
    recs = run(EasyCache(threshold=0.5, warmup=1), [None, 0.25, 0.25, 0.25, 0.25], {})
    assert computed(recs) == [0, 1, 2, 3, 4] and recs[1].reason == "warmup"  # k never observed: all computed
    recs = run(EasyCache(threshold=0.5, warmup=2), [None, 0.1, 0.25, 0.25, 0.25, 0.1], {1: 1.0})
    assert computed(recs) == [0, 1, 3, 5]
    assert [r.accumulated for r in recs] == [0.0, 0.0, 0.25, 0.5, 0.25, 0.0]


def test_an_unknown_rate_computes_after_the_warm_up():
    """With no warm-up, step 1 has no rate yet (it needs two computed steps): computed, as the reference does."""
    recs = run(EasyCache(threshold=0.2, warmup=0), [None, 0.01, 0.01, 0.01, 0.01, 0.01], {1: 3.0})
    assert computed(recs) == [0, 1, 5] and [r.reason for r in recs][:3] == ["first", "warmup", "skip"]
    assert [r.accumulated for r in recs][2:5] == pytest.approx([0.03, 0.06, 0.09])


def test_tau_zero_computes_every_step_and_nan_computes():
    assert computed(run(EasyCache(threshold=0.0, warmup=1), [None] + [0.0] * 7, {1: 1.0})) == list(range(8))
    recs = run(EasyCache(threshold=1.0, warmup=1), [None, 0.1, float("nan"), 0.1, 0.1], {1: 1.0})
    assert computed(recs) == [0, 1, 2, 4] and recs[3].accumulated == pytest.approx(0.1)


def test_reset_starts_a_generation_clean():
    policy = EasyCache(threshold=1.0, warmup=1).policy()
    policy.reset(6)
    policy.decide(0, 1.0, None)
    policy.decide(1, 0.9, 0.1)
    policy.observe(1, 2.0)
    assert not policy.decide(2, 0.8, 0.1).computed and policy.accumulated == pytest.approx(0.2)
    policy.reset(6)
    assert (policy.rate, policy.accumulated) == (None, 0.0)


@pytest.mark.parametrize("mode", ["easycache_0.05", "easycache_0.025_w5", "easycache_0.0", "easycache_1e-05_w0",
                                  "easycache_0.1_w12"])
def test_mode_names_round_trip(mode):
    cfg = parse_mode(mode)
    assert cfg.name == mode and isinstance(cfg.method, EasyCache)
    assert parse_mode(cfg.name) == cfg == parse_mode("mochi_" + mode)


def test_mode_defaults_and_fields():
    cfg = parse_mode("easycache_0.05").method
    assert cfg == EasyCache(threshold=0.05, warmup=DEFAULT_WARMUP) == EasyCache()
    assert parse_mode(f"easycache_0.05_w{DEFAULT_WARMUP}").name == "easycache_0.05"  # the default is left out
    assert (cfg.indicator, cfg.reuse, cfg.uses_calibration) == ("model_io", "model", False)
    assert cfg.to_dict(64) == {"mode": "easycache_0.05", "method": "easycache", "threshold": 0.05,
                               "warmup": DEFAULT_WARMUP}
    assert cfg.check(64) == [] and "covers the whole 7-step run" in cfg.check(7)[0]
    assert parse_mode("easycache_0.05").with_method_options(max_skips=3) == parse_mode("easycache_0.05")


def test_cost_estimate():
    # the published HunyuanVideo setting (tau 0.025, 5 warm-up steps of 50): 6 forced + 44 * 0.015 / 0.04 = 22.5
    assert EasyCache(threshold=0.025, warmup=5).computed_fraction(50) == pytest.approx(0.45)
    assert EasyCache(threshold=0.0).computed_fraction(64) == 1.0
    fractions = [EasyCache(threshold=t).computed_fraction(64) for t in (0.02, 0.05, 0.1)]
    assert fractions == sorted(fractions, reverse=True) and 0 < fractions[-1] < 1
    assert EasyCache(threshold=0.1, warmup=10).computed_fraction(4) == 1.0


@pytest.mark.parametrize("mode, fragment", [("easycache_-0.1", "not an EasyCache mode"),
                                            ("easycache_0.1_wx", "not an EasyCache mode"),
                                            ("easycache_nan", "not an EasyCache mode"),
                                            ("easycache_0.1-max3", "not an EasyCache mode")])
def test_bad_modes_name_the_mode(mode, fragment):
    with pytest.raises(ValueError, match=re.escape(f"mode {mode!r} is {fragment}")):
        parse_mode(mode)


@pytest.mark.parametrize("kw, fragment", [(dict(threshold=-1.0), "threshold -1.0 (EasyCache tau)"),
                                          (dict(threshold=float("inf")), "threshold inf"),
                                          (dict(warmup=-1), "warm-up -1"), (dict(warmup=2.5), "warm-up 2.5")])
def test_bad_configs_name_the_value(kw, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        EasyCache(**kw)


# -- on the tiny model ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(pipes):
    return pipes["sdpa"]  # the session's


def _abs_sum(t):
    return t.float().abs().sum().double().item()


def test_skipped_step_is_input_plus_cached_transformation_vector(pipe):
    """Hooks on the DiT see every input latent and output of the computed steps (cond, then uncond). From them the
    published rule is replayed: each skipped step's branch output is that step's input latent plus the branch's
    ``output - input`` of the last computed step, the Euler loop continues from it, and the final latents must be
    exactly the sampler's. The indicator and rate the policy got are the published ones too."""
    from genmo.mochi_preview.pipelines import get_conditioning
    from genmo.mochi_preview.vae.vae_stats import dit_latents_to_vae_latents

    with torch.inference_mode():
        cond = get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, False,
                                prompt="a red car drives through the snowy city", negative_prompt="")
    args = GenerationSettings(width=64, height=64, num_frames=7, num_steps=8).sampler_args(0)
    seen = {"input": [], "output": []}

    def pre(module, a, kw):
        if kw.get("phase") == "prepare":
            seen["input"].append(a[0].clone())

    def post(module, a, kw, out):
        if kw.get("phase") == "finish":
            seen["output"].append(out.float().clone())

    hooks = [pipe.dit.register_forward_pre_hook(pre, with_kwargs=True),
             pipe.dit.register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.inference_mode():
            res = sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=parse_mode("easycache_0.2_w2"),
                               progress=False, **args)
    finally:
        for h in hooks:
            h.remove()
    steps = res.report.steps
    assert not all(r.computed for r in steps), "tau too low to exercise a skip"
    assert len(seen["input"]) == len(seen["output"]) == 2 * sum(r.computed for r in steps)  # no DiT on a skip

    sigmas, cfgs = args["sigma_schedule"], args["cfg_schedule"]
    vector, call, z, previous, last = {}, 0, None, None, None
    for i, record in enumerate(steps):
        outs = {}
        for branch in ("cond", "uncond"):
            if record.computed:
                z = seen["input"][call] if z is None else z
                assert torch.equal(seen["input"][call], z)  # the replayed trajectory is the sampler's
                outs[branch] = seen["output"][call]
                vector[branch] = outs[branch] - z.float()
                call += 1
            else:
                outs[branch] = (z.float() + vector[branch]).to(z.dtype).float()
        if previous is not None:  # raw: input change from the previous step over the last computed cond output
            assert record.raw == pytest.approx(_abs_sum(z - previous) / _abs_sum(last[1]), rel=1e-9)
        if record.computed:
            if last is not None:  # k: output change over input change between the last two computed steps
                k = _abs_sum(outs["cond"] - last[1]) / _abs_sum(z - last[0])
                if i + 1 < len(steps):
                    assert steps[i + 1].rate == pytest.approx(k, rel=1e-9)
            last = (z, outs["cond"])
        previous = z
        pred = outs["uncond"] + cfgs[i] * (outs["cond"] - outs["uncond"])
        z = z + (sigmas[i] - sigmas[i + 1]) * pred
    assert torch.equal(dit_latents_to_vae_latents(z), res.latents)
    assert not torch.equal(vector["cond"], vector["uncond"])  # each branch keeps its own vector
