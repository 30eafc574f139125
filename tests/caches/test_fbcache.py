"""The first-block cache: its decisions on hand-worked indicator traces, its config and mode names, and on the tiny
model that the sampler measures and reuses what the published rule says: the indicator compares block 0's residual
with the last computed step's, and a skipped step's final-layer input is block 0's output plus the cached residual
of blocks 1..N."""

import copy
import re

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.fbcache import FirstBlockCache
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model


def run(config, raws):
    policy = config.policy()
    policy.reset(len(raws))
    return [policy.decide(i, 1.0 - i / len(raws), raw) for i, raw in enumerate(raws)]


def computed(records):
    return [r.step for r in records if r.computed]


def test_decisions_worked_out_by_hand():
    # raw: block 0's residual change against the last computed step (the sampler measures it that way)
    raws = [None, 0.05, 0.08, 0.12, 0.02, 0.1, 0.099, 0.01]
    recs = run(FirstBlockCache(threshold=0.1), raws)
    # 0: first; 1, 2: below 0.1, skip; 3: 0.12, compute; 4: skip; 5: 0.1 is not below 0.1, compute;
    # 6: skip; 7: the last step is always computed (even though 0.01 is below the threshold)
    assert computed(recs) == [0, 3, 5, 7]
    assert [r.reason for r in recs] == ["first", "skip", "skip", "threshold", "skip", "threshold", "skip", "last"]
    assert [r.accumulated for r in recs] == [0.0] + raws[1:]  # no accumulation: the distance itself is compared
    assert all(r.rescaled is None and r.threshold == 0.1 for r in recs)


def test_zero_threshold_never_skips_and_bad_indicators_compute():
    assert computed(run(FirstBlockCache(threshold=0.0), [None] + [0.0] * 6)) == list(range(7))
    recs = run(FirstBlockCache(threshold=0.5), [None, float("nan"), float("inf"), 0.1, 0.2])
    assert computed(recs) == [0, 1, 2, 4]


@pytest.mark.parametrize("mode", ["fbcache_0.1", "fbcache_0.06", "fbcache_0.0", "fbcache_1e-05", "fbcache_2.5"])
def test_mode_names_round_trip(mode):
    cfg = parse_mode(mode)
    assert cfg.name == mode and isinstance(cfg.method, FirstBlockCache)
    assert parse_mode(cfg.name) == cfg == parse_mode("mochi_" + mode)


def test_config_and_fields():
    cfg = parse_mode("fbcache_0.1").method
    assert (cfg.indicator, cfg.reuse, cfg.compare_with_last_computed, cfg.uses_calibration) == (
        "first_block_residual", "after_first_block", True, False)
    assert cfg.to_dict(8) == {"mode": "fbcache_0.1", "method": "fbcache", "threshold": 0.1}
    assert cfg.check(2) == [] and cfg.with_options(max_skips=2) == cfg
    # cost: first and last, then 0.1 / (0.1 + t) of the others
    assert cfg.computed_fraction(12) == pytest.approx((2 + 10 * 0.5) / 12)
    assert FirstBlockCache(threshold=0.0).computed_fraction(64) == 1.0 and cfg.computed_fraction(2) == 1.0


@pytest.mark.parametrize("mode", ["fbcache_-0.1", "fbcache_0.1_w2", "fbcache_nan", "fbcache_"])
def test_bad_modes_name_the_mode(mode):
    with pytest.raises(ValueError, match=re.escape(f"mode {mode!r} is not a first-block cache mode")):
        parse_mode(mode)


def test_bad_threshold_names_the_value():
    with pytest.raises(ValueError, match=re.escape("threshold -1.0 (first-block cache)")):
        FirstBlockCache(threshold=-1.0)


# -- on the tiny model ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(pipes):
    return pipes["sdpa"]  # the session's


def test_skipped_step_is_first_block_plus_cached_residual_of_the_rest(pipe):
    """Hooks on the real blocks: every step runs block 0 for both branches; on a computed step blocks 1..N run from
    block 0's output and the final layer gets their output; on a skipped step the final layer's input is exactly
    block 0's output plus the branch's residual of blocks 1..N cached at the last computed step. The indicator the
    policy got is the relative L1 change of block 0's residual (both branches) against the last computed step's."""
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        cond = get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, False,
                                prompt="a red car drives through the snowy city", negative_prompt="")
    dit = pipe.dit
    seen = {"first_in": [], "first_out": [], "second_in": [], "blocks_out": [], "final_in": []}

    def first(module, inputs, output):
        seen["first_in"].append(inputs[0].clone())
        seen["first_out"].append(output[0].clone())

    hooks = [
        dit.blocks[0].register_forward_hook(first),
        dit.blocks[1].register_forward_pre_hook(lambda m, i: seen["second_in"].append(i[0].clone())),
        dit.blocks[-1].register_forward_hook(lambda m, i, o: seen["blocks_out"].append(o[0].clone())),
        dit.final_layer.register_forward_pre_hook(lambda m, i: seen["final_in"].append(i[0].clone())),
    ]
    try:
        with torch.inference_mode():
            res = sample_model(pipe.device, dit, copy.deepcopy(cond), cache=parse_mode("fbcache_0.5"),
                               progress=False, **GenerationSettings(width=64, height=64, num_frames=7,
                                                                    num_steps=8).sampler_args(0))
    finally:
        for h in hooks:
            h.remove()
    steps = res.report.steps
    assert not all(r.computed for r in steps) and not steps[1].computed, "threshold too low to exercise skips"
    assert len(seen["first_out"]) == len(seen["final_in"]) == 2 * len(steps)  # block 0 and final layer every step
    assert len(seen["blocks_out"]) == len(seen["second_in"]) == 2 * sum(r.computed for r in steps)

    residual, first_residual, call, rest = {}, {}, 0, 0
    for record in steps:
        now = {}
        for branch in ("cond", "uncond"):
            block0, final_in = seen["first_out"][call], seen["final_in"][call]
            now[branch] = block0.float() - seen["first_in"][call].float()
            if record.computed:
                assert torch.equal(seen["second_in"][rest], block0)  # blocks 1..N continue from block 0's output
                out = seen["blocks_out"][rest]
                residual[branch] = out.float() - block0.float()
                assert torch.equal(final_in, out)
                rest += 1
            else:
                assert torch.equal(final_in, (block0.float() + residual[branch]).to(block0.dtype))
            call += 1
        if first_residual:  # against the last computed step's block-0 residual, both branches summed
            num = sum((now[b] - first_residual[b]).abs().sum().double() for b in now).item()
            den = sum(first_residual[b].abs().sum().double() for b in now).item()
            assert record.raw == pytest.approx(num / den, rel=1e-9)
        if record.computed:
            first_residual = now
    assert not torch.equal(residual["cond"], residual["uncond"])  # each branch keeps its own residual
