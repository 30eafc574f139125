"""Sparse attention installed on the real TeaCacheAsymmDiTJoint (tiny random model), through the real sampler with
CFG: generations run, each step records its density (dense warm-up, dense layers, skipped steps), the layer index
follows the DiT's phases (first-block cache), and removal gives upstream's latents back bit for bit.

Until the sampler calls the state's step hook, ``follow_sigma_schedule`` begins each step from the sigma the DiT is
given; the records are the same either way."""

import copy
import warnings

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for
from genmo_teacache.sampler import sample_model
from genmo_teacache.sparse import (
    SparseHeads,
    SparseStepHook,
    SparseTile,
    SparseTopK,
    follow_sigma_schedule,
    install_sparse_attention,
    installed_state,
    remove_sparse_attention,
)

TILE = (1, 2, 2)  # blocks of 4 tokens: the tiny sizes have a few hundred tokens (the GPU's tile is 2x8x8 = 128)
STEPS = 6


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir, attention_mode="sdpa"), device="cpu")


@pytest.fixture(scope="module")
def cond(pipe):
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        return get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, False,
                                prompt="a red car drives through the snowy city", negative_prompt="")


def sampler_args(steps=STEPS):
    return GenerationSettings(width=128, height=128, num_frames=19, num_steps=steps).sampler_args(0)


def generate(pipe, cond, config, cache=None, steps=STEPS):
    """A generation with ``config`` installed (None: nothing installed); returns latents, report, step records."""
    a = sampler_args(steps)
    state = hook = None
    if config is not None:
        state = install_sparse_attention(pipe.dit, config, tile=TILE)
        hook = follow_sigma_schedule(pipe.dit, state, a["sigma_schedule"])
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # FlexAttention's "called without torch.compile" on CPU
            res = sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False, **a)
        if state is not None:
            state.end_step()
    finally:
        if hook is not None:
            hook.remove()
        remove_sparse_attention(pipe.dit)
    return res, state.records if state is not None else None


@pytest.fixture(scope="module")
def baseline(pipe, cond):
    return generate(pipe, cond, None)[0]


@pytest.mark.slow
def test_sparse_tile_generation_records_its_density_per_step_and_layer(pipe, cond, baseline):
    res, records = generate(pipe, cond, SparseTile(0.3))
    depth = len(pipe.dit.blocks)
    assert [r["step"] for r in records] == list(range(STEPS))
    warmup = SparseTile(0.3).warmup_steps(STEPS)  # floor(15/50 x 6) = 1
    assert warmup == 1
    for r in records:
        assert r["calls"] == 2 * depth  # cond and uncond, every block
        if r["step"] < warmup:
            assert r["dense_step"] and r["density"] == 1.0 and r["layer_density"] == [1.0] * depth
        else:
            assert not r["dense_step"] and 0.1 < r["density"] <= 0.3 and len(set(r["layer_density"])) == 1
            assert r["windows"] and r["token"] == "sparse_tile_0.3"
    assert torch.isfinite(res.latents).all()
    diff = (res.latents - baseline.latents).abs().mean()
    assert 0 < diff < baseline.latents.abs().mean()


@pytest.mark.slow
def test_sparse_heads_with_a_step_cache_records_nothing_on_skipped_steps(pipe, cond):
    res, records = generate(pipe, cond, SparseHeads(0.5, warmup=0), cache=parse_mode("fixed_0.3"))
    depth = len(pipe.dit.blocks)
    computed = [s.computed for s in res.report.steps]
    assert not all(computed), "threshold too low to exercise a skip"
    for r, c in zip(records, computed):
        if c:
            assert r["calls"] == 2 * depth and r["density"] <= 0.5
            assert all(0 <= n <= pipe.dit.num_heads for n in r["spatial_heads"])
        else:
            assert r["calls"] == 0 and r["density"] is None and r["layer_density"] == [None] * depth


@pytest.mark.slow
def test_sparse_topk_generation_is_sparse_from_the_first_step(pipe, cond):
    """SpargeAttn's examples run no dense step: every step selects blocks, at least the share asked for."""
    res, records = generate(pipe, cond, SparseTopK(0.3))
    depth = len(pipe.dit.blocks)
    assert torch.isfinite(res.latents).all()
    for r in records:
        assert not r["dense_step"] and r["calls"] == 2 * depth and r["windows"] == ["top-k"]
        assert all(0.3 <= d < 1 for d in r["layer_density"])


@pytest.mark.slow
def test_layer_index_follows_the_dits_phases_under_first_block_cache(pipe, cond):
    """fbcache runs block 0 alone (phase first_block) on every step and blocks 1.. (blocks, start=1) on computed
    steps: a skipped step records a call for layer 0 only."""
    res, records = generate(pipe, cond, SparseTile(0.3, warmup=0), cache=parse_mode("fbcache_0.5"))
    computed = [s.computed for s in res.report.steps]
    assert not all(computed)
    for r, c in zip(records, computed):
        assert (r["layer_density"][1] is not None) == c and r["layer_density"][0] is not None


@pytest.mark.slow
def test_removing_gives_upstreams_attention_back_bit_for_bit(pipe, cond, baseline):
    dense, records = generate(pipe, cond, None)
    assert records is None and torch.equal(dense.latents, baseline.latents)
    assert installed_state(pipe.dit) is None and "sdpa_attention" not in pipe.dit.blocks[0].attn.__dict__


def test_install_refuses_what_it_cannot_serve(pipe, tiny_model_dir):
    state = install_sparse_attention(pipe.dit, SparseTile(0.3), tile=TILE)
    try:
        with pytest.raises(ValueError, match="already installed"):
            install_sparse_attention(pipe.dit, SparseTile(0.3))
        from genmo.mochi_preview.pipelines import compute_packed_indices

        x, mask = torch.zeros(1, 12, 3, 8, 12), torch.zeros(1, 256, dtype=torch.bool)
        packed = compute_packed_indices(x.device, mask, 3 * 8 * 12)
        with (torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16),
              pytest.raises(RuntimeError, match="no step begun.*begin_step")):
            pipe.dit(x, torch.full([1], 0.5), [torch.zeros(1, 256, 4096)], [mask], packed)
        with pytest.raises(RuntimeError, match="call state.reset\\(num_steps\\)"):
            state.begin_step(0)
    finally:
        remove_sparse_attention(pipe.dit)
    flash = TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir, attention_mode="flash"), device="cpu")
    with pytest.raises(ValueError, match="attention_mode \\['flash'\\]: build it with attention_mode='sdpa'"):
        install_sparse_attention(flash.dit, SparseTile(0.3))


@pytest.mark.slow
def test_step_hook_protocol_begins_generations_and_fills_the_step_record(pipe):
    """The adapter for the sampler's step hooks (begin_step(info), end_step(info, record)): step 0 resets the state,
    the grid comes from the info, the step's densities land in the record."""
    from types import SimpleNamespace

    from genmo.mochi_preview.pipelines import compute_packed_indices

    state = install_sparse_attention(pipe.dit, SparseTile(0.3, warmup=1), tile=TILE)
    hook = SparseStepHook(state)
    x, mask = torch.randn(1, 12, 4, 16, 16), torch.zeros(1, 256, dtype=torch.bool)
    packed = compute_packed_indices(x.device, mask, 4 * 16 * 16)
    records = []
    try:
        for step in (0, 1, 0):
            info = SimpleNamespace(step=step, num_steps=2, sigma=1.0 - step / 2, grid=(4, 8, 8))
            hook.begin_step(info)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                pipe.dit(x, torch.full([1], info.sigma), [torch.zeros(1, 256, 4096)], [mask], packed)
            record = SimpleNamespace()
            hook.end_step(info, record)
            records.append(record.sparse_attention)
    finally:
        remove_sparse_attention(pipe.dit)
    assert [r["step"] for r in records] == [0, 1, 0] and [r["dense_step"] for r in records] == [True, False, True]
    assert records[1]["density"] < 0.5 and records[0]["density"] == 1.0
    assert state.records == records[2:]  # the second step 0 began a new generation
