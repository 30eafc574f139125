"""Oracles for the block-sparse kernel and the head classification, on CPU: FlexAttention over the kept blocks equals
a masked softmax in fp32 by plain math; density 1 equals dense attention through the same kernel; the state's
sparse attention (reorder, kernel, inverse reorder) equals plain math with the same mask in upstream's token order;
Sparse VideoGen's rule picks the spatial pattern for heads built to attend within frames and the temporal one for
heads built to attend across frames."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from genmo_teacache.sparse import SparseAttentionState, SparseHeads, SparseTile, SparseTopK
from genmo_teacache.sparse.kernel import (
    block_mask,
    block_sparse_attention,
    classify_heads,
    pattern_errors,
    topk_blocks,
)

HEAD_DIM = 32  # the tiny DiT's (128 // 4 heads); the full-size model has 128


def masked_softmax_attention(q, k, v, mask):
    """The oracle: softmax(q k^T / sqrt(d) masked to -inf where ``mask`` is False) v, in float32."""
    q, k, v = q.float(), k.float(), v.float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def random_keep(b, h, blocks, seed, share=0.3):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, h, blocks, blocks, generator=g) < share
    keep |= torch.eye(blocks, dtype=torch.bool)  # every row keeps at least one block
    return keep


def element_mask(keep, seq_len, block):
    idx = torch.arange(seq_len) // block
    return keep[:, :, idx][:, :, :, idx]


@pytest.mark.parametrize("seq_len, block, heads_in_mask", [(300, 16, 3), (300, 16, 1), (64, 8, 3), (257, 32, 1)])
def test_block_sparse_attention_equals_masked_softmax(seq_len, block, heads_in_mask):
    """Sequence lengths that are not multiples of the block: the last block is partial and bounded by the kernel."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, seq_len, HEAD_DIM) for _ in range(3))
    keep = random_keep(1, heads_in_mask, -(-seq_len // block), seed=seq_len)
    out = block_sparse_attention(q, k, v, block_mask(keep, seq_len, block, exact=True), compiled=False)
    expected = masked_softmax_attention(q, k, v, element_mask(keep, seq_len, block))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


def test_density_one_equals_dense_attention_through_the_same_kernel():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, 200, HEAD_DIM) for _ in range(3))
    keep = torch.ones(1, 1, 13, 13, dtype=torch.bool)
    out = block_sparse_attention(q, k, v, block_mask(keep, 200, 16, exact=True), compiled=False)
    torch.testing.assert_close(out, flex_attention(q, k, v), atol=0, rtol=0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-6, rtol=1e-5)


@pytest.mark.slow
def test_compiled_kernel_reads_the_block_lists_alone():
    """On a GPU the kernel sees only the lists of kept blocks (all "full", no element mask); compiled on CPU the
    same path (inductor's FlexAttention template) must give the masked softmax too. Compiling takes ~40 s."""
    torch.manual_seed(2)
    seq_len, block = 300, 128
    q, k, v = (torch.randn(1, 2, seq_len, HEAD_DIM) for _ in range(3))
    keep = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)[None, None].repeat(1, 2, 1, 1)
    keep[0, 1, 0, 1] = True  # the heads differ
    out = block_sparse_attention(q, k, v, block_mask(keep, seq_len, block, exact=False), compiled=True)
    expected = masked_softmax_attention(q, k, v, element_mask(keep, seq_len, block))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


def state_for(config, grid, tile=(1, 2, 2), step=5):
    state = SparseAttentionState(config, depth=3, tile=tile)
    state.grid = grid
    state.reset(10)
    state.begin_step(step)
    return state


def upstream_order_mask(state, seq_len, pattern_of_head):
    """The plan's block pattern as an element mask over upstream's token order: token i sits at position
    ``inverse[i]`` of the reordered sequence, in block ``inverse[i] // block``."""
    plan = state.plan(seq_len, torch.device("cpu"))
    blk = plan.inverse // plan.block
    return torch.stack([plan.keep[p][blk][:, blk] for p in pattern_of_head])[None]


@pytest.mark.parametrize("grid, text", [((4, 8, 8), 5), ((3, 5, 7), 0), ((2, 6, 10), 11)])
def test_sparse_tile_equals_plain_math_with_the_same_mask_in_upstreams_order(grid, text):
    torch.manual_seed(3)
    seq_len = math.prod(grid) + text
    q, k, v = (torch.randn(1, 4, seq_len, HEAD_DIM) for _ in range(3))
    state = state_for(SparseTile(0.3), grid)
    out = state.attend(1, q, k, v)
    mask = upstream_order_mask(state, seq_len, [0])
    assert mask[..., math.prod(grid):].all() and mask[..., math.prod(grid):, :].all()  # text both ways
    torch.testing.assert_close(out, masked_softmax_attention(q, k, v, mask), atol=2e-6, rtol=1e-5)
    record = state.end_step()
    assert record["layer_density"][1] == pytest.approx(state.plan(seq_len, q.device).densities[0].item(), abs=1e-5)
    assert record["density"] < 0.31 and record["calls"] == 1


def test_density_one_through_the_state_equals_dense_attention():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 4, 4 * 8 * 8 + 5, HEAD_DIM) for _ in range(3))
    for config in (SparseTile(1.0), SparseHeads(1.0)):
        out = state_for(config, (4, 8, 8)).attend(1, q, k, v)
        torch.testing.assert_close(out, flex_attention(q, k, v), atol=2e-6, rtol=1e-5)


def constructed_heads(grid, text=4, strength=6.0):
    """Head 0 attends within its own frame (q = k = a one-hot of the frame), head 1 across frames at its own spatial
    tile (one-hot of the 2x2 spatial tile); scores of strength**2/sqrt(d) = 6.4 against 0. Upstream's token order."""
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    frame = F.one_hot(t.flatten(), HEAD_DIM).float()
    place = F.one_hot(((h // 2) * (W // 2) + w // 2).flatten(), HEAD_DIM).float()
    g = torch.Generator().manual_seed(5)
    text_qk = torch.randn(text, HEAD_DIM, generator=g) * 0.1
    qk = torch.stack([torch.cat([frame, text_qk]), torch.cat([place, text_qk])])[None] * strength
    v = torch.randn(1, 2, math.prod(grid) + text, HEAD_DIM, generator=g)
    return qk, qk.clone(), v


def test_head_classification_follows_the_published_rule_on_constructed_heads():
    grid = (8, 4, 8)  # tiles (1, 2, 2): 8 x 2 x 4 tiles, 8 spatial tiles per frame
    q, k, v = constructed_heads(grid)
    state = state_for(SparseHeads(0.2), grid)
    plan = state.plan(q.shape[-2], q.device)
    assert plan.window == "spatial 1x2x4 tiles / temporal 8x1x1 tiles"  # own frame; own spatial tile in every frame
    qt, kt, vt = (x[:, :, plan.perm] for x in (q, k, v))
    rows = torch.arange(0, math.prod(grid), 7)
    errors = pattern_errors(qt, kt, vt, rows, plan.keep, plan.block)  # (pattern, B, head)
    assert errors.shape == (2, 1, 2)
    assert errors[0, 0, 0] < 0.01 * errors[1, 0, 0]  # head 0: the spatial pattern loses almost nothing
    assert errors[1, 0, 1] < 0.01 * errors[0, 0, 1]  # head 1: the temporal one does
    assert classify_heads(errors).tolist() == [[0, 1]]  # 0 = spatial, 1 = temporal
    # through the state: the same choice, and each head runs its pattern (plain math, upstream's order)
    state.note(0, 1.0)  # what the router records for a dense block (Sparse VideoGen's first layers)
    out = state.attend(2, q, k, v)
    mask = upstream_order_mask(state, q.shape[-2], [0, 1])
    torch.testing.assert_close(out, masked_softmax_attention(q, k, v, mask), atol=2e-6, rtol=1e-5)
    record = state.end_step()
    assert record["spatial_heads"] == [None, None, 1.0] and record["layer_density"][0] == 1.0


def test_ties_go_to_the_spatial_pattern():
    assert classify_heads(torch.zeros(2, 1, 3)).tolist() == [[0, 0, 0]]


def pooled_scores_by_loops(q, k, block):
    """The oracle for SpargeAttn's selection: block means by explicit loops, their scaled dot products, softmax."""
    B, H, S, D = q.shape
    qp, kp = torch.zeros(B, H, -(-S // block), D), torch.zeros(B, H, -(-S // block), D)
    for b in range(B):
        for h in range(H):
            for i in range(qp.shape[2]):
                qp[b, h, i] = q[b, h, i * block:(i + 1) * block].float().mean(0)
                kp[b, h, i] = k[b, h, i * block:(i + 1) * block].float().mean(0)
    return torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(D), dim=-1)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 1.0])
def test_topk_keeps_the_blocks_of_highest_pooled_score(share):
    torch.manual_seed(6)
    seq_len, block = 150, 16  # 10 blocks, the last one partial
    q, k = torch.randn(1, 2, seq_len, HEAD_DIM), torch.randn(1, 2, seq_len, HEAD_DIM)
    keep = topk_blocks(q, k, block, share, sim_threshold=-0.1)
    scores = pooled_scores_by_loops(q, k, block)
    count = max(1, int(share * 10))
    assert torch.all(keep.sum(-1) == count)  # the published threshold -0.1 never forces a block: |mean unit|^2 >= 0
    kept_min = scores.masked_fill(~keep, float("inf")).amin(-1)
    dropped_max = scores.masked_fill(keep, float("-inf")).amax(-1)
    assert torch.all(kept_min > dropped_max)  # every kept block outscores every dropped one, row by row


def test_self_similarity_is_the_mean_cosine_of_the_token_pairs():
    """|mean of the unit tokens|^2 equals the mean over all token pairs (diagonal included) of their cosine: never
    negative, so SpargeAttn's default threshold -0.1 passes every block."""
    from genmo_teacache.sparse.kernel import _block_means

    torch.manual_seed(9)
    x = torch.randn(1, 1, 16, HEAD_DIM)
    unit = x / x.norm(dim=-1, keepdim=True)
    pairs = (unit[0, 0] @ unit[0, 0].T).mean()
    assert _block_means(unit, 16).pow(2).sum().item() == pytest.approx(pairs.item(), abs=1e-6)
    assert pairs >= 0


def test_topk_keeps_blocks_that_are_not_self_similar_whole():
    """A threshold of 0.5: a block of unrelated tokens (mean cosine ~ 1/16) is kept in every row (as keys) and
    attends to everything (as queries); blocks of one repeated token are self-similar and go through top-k."""
    torch.manual_seed(7)
    block = 16
    similar = torch.randn(1, 1, 1, HEAD_DIM).expand(1, 1, 4 * block, HEAD_DIM)  # 4 blocks of one repeated token
    noisy = torch.randn(1, 1, block, HEAD_DIM)  # block 4: unrelated tokens
    q = k = torch.cat([similar + 0.01 * torch.randn(1, 1, 4 * block, HEAD_DIM), noisy], dim=2)
    keep = topk_blocks(q, k, block, 0.2, sim_threshold=0.5)[0, 0]
    assert keep[:, 4].all() and keep[4].all()
    assert torch.all(keep[:4, :4].sum(-1) == 1)  # int(0.2 x 5) = 1 selected among the similar ones


def test_sparse_topk_through_the_state_equals_plain_math_with_its_selection():
    torch.manual_seed(8)
    grid = (4, 8, 8)
    seq_len = math.prod(grid) + 6
    q, k, v = (torch.randn(1, 4, seq_len, HEAD_DIM) for _ in range(3))
    state = state_for(SparseTopK(0.25), grid)
    out = state.attend(1, q, k, v)
    plan = state.plan(seq_len, q.device)
    keep = topk_blocks(q[:, :, plan.perm], k[:, :, plan.perm], plan.block, 0.25, SparseTopK.SIM_THRESHOLD)
    keep[:, :, plan.text_blocks] = True
    keep[:, :, :, plan.text_blocks] = True
    blk = plan.inverse // plan.block
    mask = keep[:, :, blk][:, :, :, blk]
    torch.testing.assert_close(out, masked_softmax_attention(q, k, v, mask), atol=2e-6, rtol=1e-5)
    record = state.end_step()
    assert record["layer_density"][1] == pytest.approx(keep.float().mean().item(), abs=1e-5)
