"""The caching sampler against upstream's sample_model, on the tiny random model (real upstream classes)."""

import copy

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model


def conditioning(pipe, batched, prompt="a red car drives through the snowy city"):
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        return get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, batched, prompt=prompt,
                                negative_prompt="")


def args(seed=0, width=64, height=64, num_frames=7, steps=6):
    return GenerationSettings(width=width, height=height, num_frames=num_frames, num_steps=steps).sampler_args(seed)


def ours(pipe, cond, cache=None, **kw):
    with torch.inference_mode():
        return sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False, **kw)


@pytest.mark.parametrize("seed, size", [(0, dict(width=64, height=64, num_frames=7, steps=8)),
                                        (7, dict(width=96, height=64, num_frames=13, steps=6))])
@pytest.mark.parametrize("attention, batched", [("sdpa", False), ("flash", True)])
def test_caching_off_is_bit_identical_to_upstream(tiny_runs, attention, batched, seed, size):
    """Upstream's sample_model under a CPU autocast (it autocasts on "cuda" only; ours supplies its own on CPU). The
    first size is the 8-step run the caches' contract compares every method's threshold 0 with."""
    expected = tiny_runs.upstream(attention, batched=batched, seed=seed, **size)
    base = tiny_runs.sample(attention, parse_mode("baseline"), batched=batched, seed=seed, **size)
    assert torch.equal(base.latents, expected)
    steps = size["steps"]
    assert base.report.computed_steps == steps and base.report.dit_calls == (steps if batched else 2 * steps)
    # threshold 0 goes through the cached phases and must compute every step, bit for bit
    zero = tiny_runs.sample(attention, parse_mode("fixed_0.0"), batched=batched, seed=seed, **size)
    assert zero.report.skipped_steps == 0 and torch.equal(zero.latents, expected)


def test_skipped_step_output_is_final_layer_of_x_plus_cached_residual(pipes):
    """Hooks watch the real sampler: on every skipped step, the final layer's input must equal the current
    patch embedding plus the residual cached (per branch) at the last computed step, exactly."""
    pipe = pipes["sdpa"]
    dit = pipe.dit
    seen = {"embed": [], "blocks_out": [], "final_in": []}
    hooks = [
        dit.x_embedder.register_forward_hook(lambda m, i, o: seen["embed"].append(o.clone())),
        dit.blocks[-1].register_forward_hook(lambda m, i, o: seen["blocks_out"].append(o[0].clone())),
        dit.final_layer.register_forward_pre_hook(lambda m, i: seen["final_in"].append(i[0].clone())),
    ]
    try:
        res = ours(pipe, conditioning(pipe, False), parse_mode("fixed_0.3"), **args(steps=8))
    finally:
        for h in hooks:
            h.remove()
    decisions = [r.computed for r in res.report.steps]
    assert not all(decisions), "threshold too low to exercise a skip"
    residual, call, blocks_call = {}, 0, 0
    for computed in decisions:
        for branch in ("cond", "uncond"):
            embed, final_in = seen["embed"][call], seen["final_in"][call]
            if computed:
                out = seen["blocks_out"][blocks_call]
                residual[branch] = out.float() - embed.float()
                blocks_call += 1
                assert torch.equal(final_in, out)
            else:
                assert torch.equal(final_in, (embed.float() + residual[branch]).to(embed.dtype))
            call += 1
    assert blocks_call == len(seen["blocks_out"]) == 2 * sum(decisions)
    assert not torch.equal(residual["cond"], residual["uncond"])  # each branch keeps its own residual


def test_batched_and_unbatched_cfg_decide_alike(tiny_runs):
    cache = parse_mode("fixed_0.15")
    unbatched = tiny_runs.sample("flash", cache, seed=3, steps=10).report
    batched = tiny_runs.sample("flash", cache, batched=True, seed=3, steps=10).report
    assert [r.computed for r in unbatched.steps] == [r.computed for r in batched.steps]
    assert 0 < unbatched.skipped_steps < 8
    for u, b in zip(unbatched.steps[1:], batched.steps[1:]):
        assert u.raw == pytest.approx(b.raw, rel=1e-2)


def test_generations_in_a_row_start_from_clean_state(pipes):
    pipe = pipes["sdpa"]
    cond = conditioning(pipe, False)
    cache = parse_mode("fixed_0.2")
    first = ours(pipe, cond, cache, **args(seed=1, steps=8))
    ours(pipe, conditioning(pipe, False, prompt="an astronaut"), cache, **args(seed=2, steps=8))
    again = ours(pipe, cond, cache, **args(seed=1, steps=8))
    assert torch.equal(first.latents, again.latents)
    assert [r.to_dict() for r in first.report.steps] == [r.to_dict() for r in again.report.steps]


def test_caching_changes_the_result_within_reason(tiny_runs):
    base = tiny_runs.sample("sdpa", parse_mode("baseline"))
    cached = tiny_runs.sample("sdpa", parse_mode("fixed_0.3"))
    assert cached.report.skipped_steps > 0
    diff = (cached.latents - base.latents).abs()
    assert 0 < diff.mean() < base.latents.abs().mean()


def test_bad_frame_count_is_refused(pipes):
    pipe = pipes["sdpa"]
    a = args()
    a["num_frames"] = 8
    with pytest.raises(ValueError, match="num_frames=8"):
        ours(pipe, conditioning(pipe, False), **a)
