"""The modifiers (+cfg, +taylor) on two context-parallel CPU ranks through real Ray, gloo and FSDP: both ranks take
the same decisions and drop the same branches, and the latents equal one process's bit for bit (the CFG cache's
FFT works on the all-gathered outputs; the forecast on each rank's shard of the residual). The session's 2-rank
pipeline (conftest's SharedRanks)."""

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for

SETTINGS = GenerationSettings(width=96, height=64, num_frames=13, num_steps=8)  # 72 tokens, split over 2 ranks
PROMPT = "a red balloon rises over a dark forest"
# on the tiny model: 0 full, 1-2 skipped, 3 cond-only, 4 skipped (cond forecast from steps 0 and 3), 5 full,
# 6 cond-only, 7 full
CACHE = parse_mode("fixed_0.08+cfg_s2+taylor1")


def generate(pipe, seed=5):
    with torch.inference_mode():
        return pipe.generate(batch_cfg=False, prompt=PROMPT, negative_prompt="", cache=CACHE, progress=False,
                             **SETTINGS.sampler_args(seed))


def test_two_ranks_drop_the_same_branches_and_match_one_process(tiny_model_dir, two_ranks):
    expected = generate(TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir), device="cpu"))
    branches = [r.branches for r in expected.report.steps]
    assert ["cond"] in branches and [] in branches, "the run should have cond-only and skipped steps"
    got = generate(two_ranks)
    ranks = two_ranks.rank_results
    assert ranks[0]["branches"] == ranks[1]["branches"] == branches
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == [r.computed for r in expected.report.steps]
    assert got.report.dit_calls == expected.report.dit_calls < 2 * SETTINGS.num_steps
    assert torch.equal(got.latents, expected.latents)


def _cfg_parallel_rank(rank: int, port: int, model_dir: str, out: str) -> None:
    """One rank of a CFG-parallel pair (rank 0 runs cond, rank 1 uncond), on CPU through gloo."""
    import torch.distributed as dist
    from genmo.mochi_preview.pipelines import get_conditioning

    from genmo_teacache.sampler import sample_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        pipe = TeaCacheSingleGPUPipeline(**factories_for(model_dir), device="cpu")
        with torch.inference_mode():
            cond = get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, False, prompt=PROMPT,
                                    negative_prompt="")
            result = sample_model(pipe.device, pipe.dit, cond, cache=CACHE, progress=False,
                                  branch_group=dist.new_group([0, 1]), **SETTINGS.sampler_args(5))
        torch.save({"latents": result.latents, "branches": [r.branches for r in result.report.steps]},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cfg_parallel_ranks_rebuild_uncond_from_the_exchanged_cond_output(tiny_model_dir, tmp_path):
    """CFG-parallel: on a cond-only step the uncond rank idles and both ranks rebuild the uncond output from the
    cond output they exchanged; the latents equal one process's bit for bit."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_cfg_parallel_rank, args=(port, str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    expected = generate(TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir), device="cpu"))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["branches"] == [r.branches for r in expected.report.steps]
        assert torch.equal(got["latents"], expected.latents), rank
