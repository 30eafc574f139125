"""The block-sparse kernel (FlexAttention over whole blocks), Sparse VideoGen's online head classification and
SpargeAttn's pooled top-k block selection.

On a GPU, ``torch.compile(flex_attention)`` runs only the kept blocks, all of them whole (listed as "full" blocks:
no element mask is evaluated); it compiles once per sequence length and pattern shape. Without compile (CPU),
``flex_attention`` runs its reference implementation, which materialises every score and applies only the element
mask, so the same block pattern is also given as an element mask (``exact=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

log = logging.getLogger(__name__)

_compiled: Callable | None = None


def compiled_flex() -> Callable:
    """FlexAttention through ``torch.compile``. It specialises on the sequence length and the pattern's shape (per CFG
    branch, frame count, method); past dynamo's recompile limit it would run eagerly, materialising every score (about
    190 GB at 163 frames), so the limit is raised first (``speed.raise_recompile_limit``)."""
    global _compiled
    if _compiled is None:
        from genmo_teacache.dynamo import raise_recompile_limit

        raise_recompile_limit()
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _kv_lists(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, heads, q blocks, kv blocks) bool -> counts (B, heads, q blocks) and the kv block indices, kept first."""
    counts = keep.sum(-1, dtype=torch.int32)
    indices = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts, indices


def block_mask(keep: torch.Tensor, seq_len: int, block: int, *, exact: bool) -> BlockMask:
    """A FlexAttention ``BlockMask`` whose kept blocks are all "full" (no element mask on the fused kernel).
    ``keep`` is (B or 1, heads or 1, q blocks, kv blocks) bool on the attention's device. ``exact`` adds the same
    pattern as an element mask, for ``flex_attention`` run without compile (its reference implementation reads only
    that)."""
    counts, indices = _kv_lists(keep)
    mask_mod = None
    if exact:
        per_batch, per_head = keep.shape[0] > 1, keep.shape[1] > 1

        def mask_mod(b, h, q_idx, kv_idx):
            return keep[b if per_batch else 0, h if per_head else 0, q_idx // block, kv_idx // block]

    # no partial blocks: their count is 0 and their index list a distinct zero tensor (passing the full list twice
    # makes one aliased kernel input, which inductor's CPU template fails to compile)
    return BlockMask.from_kv_blocks(torch.zeros_like(counts), torch.zeros_like(indices), counts, indices,
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(seq_len, seq_len))


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, *,
                           compiled: bool) -> torch.Tensor:
    """Attention of (B, heads, S, D) tensors over the kept blocks of ``mask`` (see :func:`block_mask`)."""
    fn = compiled_flex() if compiled else flex_attention
    return fn(q, k, v, block_mask=mask)


def sampled_rows(visual: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``count`` query positions drawn uniformly (with replacement, as Sparse VideoGen's ``torch.randint``) from the
    visual tokens, by a generator of their own on ``device`` (no host copy): the run's random state is left alone
    and reruns draw the same."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, visual, (count,), generator=g, device=device)


def pattern_errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, patterns: torch.Tensor,
                   block: int) -> torch.Tensor:
    """Sparse VideoGen's profiling (svg/models/hyvideo/attention.py, ``sample_mse``): the sampled query ``rows``
    attend to every key (the reference) and under each pattern (masked softmax); the mean squared difference of
    the outputs, per pattern and head: (patterns, B, heads). ``patterns`` is (P, q blocks, kv blocks) bool over the
    same (reordered) sequence as q, k, v."""
    scale = q.shape[-1] ** -0.5
    scores = (q[:, :, rows] @ k.transpose(-1, -2)).float() * scale  # (B, H, R, S)
    reference = torch.softmax(scores, dim=-1).to(v.dtype) @ v
    key_block = torch.arange(k.shape[-2], device=q.device) // block
    errors = []
    for keep in patterns:
        allowed = keep[rows // block][:, key_block]  # (R, S)
        out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).to(v.dtype) @ v
        errors.append((out.float() - reference.float()).pow(2).mean(dim=(-1, -2)))
    return torch.stack(errors)


def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, S, D) -> (B, H, blocks, D) float32: the mean of each block's tokens (the last block may be partial),
    summed in float32 without a full-size copy."""
    S = x.shape[-2]
    full = S // block
    parts = [x[:, :, :full * block].unflatten(2, (full, block)).sum(3, dtype=torch.float32) / block]
    if S > full * block:
        parts.append(x[:, :, full * block:].sum(2, keepdim=True, dtype=torch.float32) / (S - full * block))
    return torch.cat(parts, dim=2)


def _self_similar(x: torch.Tensor, block: int, threshold: float) -> torch.Tensor:
    """(B, H, blocks) bool: the mean cosine similarity of a block's token pairs (diagonal included), which is
    ``|mean of its unit tokens|^2``, exceeds ``threshold``. Never negative, so any negative threshold (SpargeAttn's
    default -0.1) passes every block and nothing is computed."""
    if threshold < 0:
        return torch.ones(x.shape[:2] + (-(-x.shape[-2] // block),), dtype=torch.bool, device=x.device)
    unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).clamp(min=1e-12).to(x.dtype)
    return _block_means(unit, block).pow(2).sum(-1) > threshold


def topk_blocks(q: torch.Tensor, k: torch.Tensor, block: int, share: float, sim_threshold: float) -> torch.Tensor:
    """SpargeAttn's block selection (spas_sage_attn/utils.py, ``get_block_map_meansim_fuse_quant`` with ``topk``):
    pooled scores ``mean(q_block) . mean(k_block) / sqrt(d)``, softmax over the key blocks that are self-similar,
    the top ``int(share x key blocks)`` per row (at least one, as ``triton_fill_block_map_kernel``); key blocks and
    query blocks that are not self-similar are kept whole (keys after subtracting their mean over the sequence, as
    its ``smooth_k``). Returns (B, H, q blocks, kv blocks) bool."""
    similar_q = _self_similar(q, block, sim_threshold)
    similar_k = _self_similar(k - k.mean(dim=-2, keepdim=True) if sim_threshold >= 0 else k, block, sim_threshold)
    scores = (_block_means(q, block) @ _block_means(k, block).transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~similar_k[:, :, None, :], float("-inf")).softmax(dim=-1)
    count = max(1, int(share * scores.shape[-1]))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(-1, scores.topk(count, dim=-1).indices, True)
    keep |= ~similar_k[:, :, None, :] | ~similar_q[:, :, :, None]
    return keep


def classify_heads(errors: torch.Tensor) -> torch.Tensor:
    """The pattern each head runs: the one of least error (``argmin``, ties to the first, as Sparse VideoGen's
    ``best_mask_idx``). (patterns, B, heads) -> (B, heads) int64."""
    return errors.argmin(dim=0)
