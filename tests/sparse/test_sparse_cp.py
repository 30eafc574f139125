"""Sparse attention under context parallelism: two gloo ranks on CPU, each attending the whole sequence with half
the heads (upstream's all-to-all), give one process's output and step record (the head choice and the top-k
selection are per head, so rank-local; the record sums the ranks' spatial heads and averages their densities)."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genmo_teacache.sparse import SparseHeads, SparseTile, SparseTopK

GRID_LATENT = (4, 16, 16)  # latent T, H, W: a 4x8x8 token grid


def forward(config):
    """One DiT forward with ``config`` installed: the tiny architecture (4 heads), seeded, on seeded inputs."""
    from genmo.mochi_preview.pipelines import compute_packed_indices

    from genmo_teacache.model import TeaCacheAsymmDiTJoint, init_random_dit
    from genmo_teacache.pipelines import dit_kwargs
    from genmo_teacache.sparse import install_sparse_attention
    from genmo_teacache.tiny import TINY_DIT_KWARGS

    torch.manual_seed(0)
    dit = init_random_dit(TeaCacheAsymmDiTJoint(**dit_kwargs(dict(TINY_DIT_KWARGS, depth=2)))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 12, *GRID_LATENT, generator=g)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :9] = True
    y_feat = torch.randn(1, 256, 4096, generator=g) * 0.1
    packed = compute_packed_indices(torch.device("cpu"), mask, x[0, 0].numel())
    state = install_sparse_attention(dit, config, tile=(1, 2, 2))
    state.reset(4)
    state.begin_step(2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dit(x, torch.full([1], 0.6), [y_feat], [mask], packed).float()
    return out, state.end_step()


CONFIGS = [SparseHeads(0.4, warmup=0), SparseTile(0.3, warmup=0), SparseTopK(0.3)]


def _rank(rank, world, init_file, out_dir, tokens):
    import genmo.mochi_preview.dit.joint_model.context_parallel as cp

    from genmo_teacache.sparse import parse_sparse

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cp.set_cp_group(dist.new_group(list(range(world))), list(range(world)), rank)
    assert cp.get_cp_rank_size() == (rank, world)
    for i, token in enumerate(tokens):
        out, record = forward(parse_sparse(token))
        torch.save(out, os.path.join(out_dir, f"out{i}_{rank}.pt"))
        with open(os.path.join(out_dir, f"record{i}_{rank}.json"), "w") as f:
            json.dump(record, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every config's forward on two ranks, from one launch (starting the ranks and gloo costs far more than the
    tiny forwards): the folder of ``out{config}_{rank}.pt`` and ``record{config}_{rank}.json``."""
    out = tmp_path_factory.mktemp("sparse_cp")
    mp.spawn(_rank, args=(2, str(out / "init"), str(out), [c.token for c in CONFIGS]), nprocs=2, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_two_context_parallel_ranks_match_one_process(config, two_ranks):
    expected, expected_record = forward(config)
    i = CONFIGS.index(config)
    for rank in (0, 1):
        got = torch.load(two_ranks / f"out{i}_{rank}.pt")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        record = json.loads((two_ranks / f"record{i}_{rank}.json").read_text())
        assert record["layer_density"] == pytest.approx(expected_record["layer_density"], abs=1e-5)
        if "spatial_heads" in expected_record:
            assert record["spatial_heads"] == expected_record["spatial_heads"]  # summed over the ranks' heads
