"""Two context-parallel CPU ranks through real Ray, gloo and FSDP, on the tiny model."""

import time

import pytest
import ray
import torch

from genmo_teacache.caches import METHODS, CacheConfig, parse_mode
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline
from genmo_teacache.parallel import check_divisible
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for

# 96x64, 13 frames: 3 latent frames of 4x6 patches = 72 tokens; rank 0 holds frames 0 and half of 1, rank 1 the
# rest, so the two shards see different content and would compute different local indicators.
SETTINGS = GenerationSettings(width=96, height=64, num_frames=13, num_steps=8)
CACHE = parse_mode("fixed_0.15")
PROMPT = "a red balloon rises over a dark forest"


def generate(pipe, cache=CACHE, seed=5):
    with torch.inference_mode():
        return pipe.generate(batch_cfg=False, prompt=PROMPT, negative_prompt="", cache=cache, progress=False,
                             **SETTINGS.sampler_args(seed))


def test_sizes_that_do_not_divide_are_refused_before_loading():
    with pytest.raises(ValueError, match="24 attention heads do not divide over 5 ranks"):
        check_divisible(5, num_heads=24, width=848, height=480, num_frames=163)
    with pytest.raises(ValueError, match="visual tokens"):
        check_divisible(4, num_heads=24, width=16 * 3, height=16, num_frames=1)
    check_divisible(2, num_heads=24, width=848, height=480, num_frames=163)  # 44,520 tokens split fine


def test_cfg_parallel_layouts_that_do_not_fit_are_refused():
    from genmo_teacache.parallel import check_layout

    assert check_layout(2, True) == 1 and check_layout(4, True) == 2 and check_layout(4, False) == 4
    for n in (1, 3):
        with pytest.raises(ValueError, match=f"--num_gpus {n} must be even"):
            check_layout(n, True)


# -- tests with a Ray of their own (they run before the session's two ranks start: see conftest's SharedRanks) ------

START_TIMEOUT_S = 3  # the rank that cannot start is never awaited longer than this


def test_ranks_that_cannot_start_are_reported_not_awaited(tiny_model_dir, monkeypatch, own_ray):
    import genmo_teacache.multigpu as mg

    monkeypatch.setattr(mg, "RANK_START_TIMEOUT_S", START_TIMEOUT_S)
    ray.init(num_cpus=1, include_dashboard=False)  # room for one CPU rank only: the second can never start
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"only [01] of 2 ranks started within {START_TIMEOUT_S} s: each needs "
                                               r"\{'num_cpus': 1, 'num_gpus': 0\}.*lower --num_gpus"):
            TeaCacheMultiGPUPipeline(**factories_for(tiny_model_dir), world_size=2, device_type="cpu")
        # reported once the time is up, not awaited (that rank would never start) ...
        assert time.monotonic() - t0 < START_TIMEOUT_S + 30
        deadline = time.monotonic() + 30  # ... and the rank that did start is stopped: the cluster's CPU is free
        while ray.available_resources().get("CPU", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 1
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_without_hanging(tiny_model_dir, own_ray):
    pipe = TeaCacheMultiGPUPipeline(**factories_for(tiny_model_dir), world_size=2, device_type="cpu")
    # rank 0 starts generating and soon blocks in a collective waiting for rank 1, which raises instead
    refs = [pipe.ctxs[0].generate.remote(batch_cfg=False, prompt=PROMPT, negative_prompt="", cache=CACHE,
                                         progress=False, **SETTINGS.sampler_args(0)),
            pipe.ctxs[1].fail.remote()]
    with pytest.raises(ray.exceptions.RayTaskError, match="rank 1 failed on purpose"):
        pipe._wait(refs)
    assert not ray.is_initialized()  # it started Ray, so it shut it down
    assert pipe.ctxs == []


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_cfg_parallel_matches_one_process_bit_for_bit(tiny_model_dir, world_size, own_ray):
    """CFG-parallel: the cond branch on one half of the ranks, uncond on the other, outputs exchanged each step.
    2 ranks: each holds the whole DiT; 4 ranks: 2 CFG groups x 2 context-parallel ranks (what 4 GPUs would run)."""
    single = TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir), device="cpu")
    expected = {name: generate(single, cache) for name, cache in (("base", CacheConfig.baseline()), ("cached", CACHE))}
    pipe = TeaCacheMultiGPUPipeline(**factories_for(tiny_model_dir), world_size=world_size, device_type="cpu",
                                    cfg_parallel=True)
    try:
        for name, cache in (("base", CacheConfig.baseline()), ("cached", CACHE)):
            got = generate(pipe, cache)
            assert torch.equal(got.latents, expected[name].latents), name
            ranks = pipe.rank_results
            assert all(r["decisions"] == [s.computed for s in expected[name].report.steps] for r in ranks)
            assert got.report.dit_calls == expected[name].report.dit_calls
        assert 0 < expected["cached"].report.skipped_steps < 7
        assert ranks[0]["raws"] == ranks[-1]["raws"]
        if world_size == 2:  # one branch per rank, no sharding: the same sums as one process, exactly
            assert ranks[0]["raws"] == [r.raw for r in expected["cached"].report.steps]
    finally:
        pipe.close()


# -- the session's two ranks (conftest's SharedRanks) ---------------------------------------------------------------


def forget_warm_up(pipe) -> None:
    """Make the ranks' warm-up state a fresh pipeline's (the session's ranks may have run this shape for another
    test): every rank forgets the input shapes it ran."""
    ray.get([ctx.run.remote(lambda ctx: ctx.warmed.clear()) for ctx in pipe.ctxs])


def test_two_ranks_match_one_process_bit_for_bit(two_ranks, tiny_model_dir):
    single = TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir), device="cpu")
    expected = generate(single)
    forget_warm_up(two_ranks)
    got = generate(two_ranks)
    ranks = two_ranks.rank_results
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == [r.computed for r in expected.report.steps]
    assert 0 < expected.report.skipped_steps < 7
    # each rank's indicator is the all-reduced one: equal on both ranks, equal to one process up to summation order
    assert ranks[0]["raws"] == ranks[1]["raws"]
    assert ranks[0]["raws"][1:] == pytest.approx([r.raw for r in expected.report.steps][1:], rel=1e-5)
    assert torch.equal(got.latents, expected.latents)
    assert got.frames.shape == expected.frames.shape
    base_single = generate(single, CacheConfig.baseline())
    base_two = generate(two_ranks, CacheConfig.baseline())
    assert torch.equal(base_two.latents, base_single.latents)
    # the ranks keep their warm-up state as one process does: the first generation ran the warm-up pass (timed
    # apart, on both ranks alike, or their collectives would hang), the second found the shape warm
    assert got.timings["warmup_s"] > 0 and base_two.timings["warmup_s"] == 0


# -- every registered method on the session's two ranks ---------------------------------------------------------

CONTRACT = {m.key: m.test_modes for m in METHODS}  # the contract suite's modes, one entry per registered method


@pytest.mark.parametrize("key", sorted(k for k in CONTRACT if k != "baseline"))
def test_every_method_decides_alike_on_both_ranks(key, two_ranks, method_calibration):
    """Each rank holds half the tokens: a method whose indicator were measured on a rank's own shard would decide
    differently on the two ranks (and hang or diverge). Both ranks must see the same indicator and decisions."""
    pipe = two_ranks
    got = generate(pipe, parse_mode(CONTRACT[key][0], method_calibration))
    ranks = pipe.rank_results
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == [r.computed for r in got.report.steps]
    assert not all(ranks[0]["decisions"]), "the contract's mode should skip here too"
    assert ranks[0]["raws"] == ranks[1]["raws"]
    assert got.report.to_dict()["cache"]["method"] == key
