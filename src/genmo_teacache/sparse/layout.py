"""The token order in which a local window is whole attention blocks, and the block patterns over it.

Upstream's joint attention sees ``N = T*H*W`` visual tokens in frame-major order (after 2x2 patchify), then the
valid text tokens. Here the visual tokens are reordered tile by tile (tiles of ``tile = (t, h, w)`` tokens, in
raster order of tiles, each tile's tokens in raster order), the text tokens follow unchanged. A tile of the default
2x8x8 holds 128 tokens, one FlexAttention block. Mochi's grids are not multiples of the tile (480x848: 30x53 per
frame, 53 is prime), so the edge tiles are smaller; they are packed one after another without padding, and a block
(128 consecutive tokens of the new order) may then hold the tail of one tile and the head of the next. Each block
takes the place of the tile holding its middle token: patterns are windows over the tile grid, and a block pair is
kept when their tiles' pair is. So every kept block is whole, the block density stays close to the tile-level one
(163 frames, window 6x2x3 of the 14x4x7 tiles: 0.105 against 0.092), and the tokens of a straddling block get the
window of their block's tile, at most one tile off. Nothing is padded: every token of the sequence is a real one,
so no padding can be attended to; the kernel bounds the last, partial block itself.

Text keeps full attention both ways: a block holding any text token is kept in every row and every column (so the
few visual tokens sharing the first text block are attended by, and attend to, everything).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

TILE = (2, 8, 8)  # 128 tokens: one FlexAttention block (docs/METHODS.md, "Sparse attention")
AXES = ("t", "h", "w")


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """One sequence shape: visual grid, text length, tile. ``perm[i]`` is the upstream index of the token at
    position ``i`` of the reordered sequence; ``inverse`` undoes it."""

    grid: tuple[int, int, int]
    text: int
    tile: tuple[int, int, int]
    tiles: tuple[int, int, int]  # tiles per axis (edge tiles may be smaller)
    perm: torch.Tensor  # (S,) int64
    inverse: torch.Tensor  # (S,) int64
    block_tile: torch.Tensor  # (blocks,) int64: the tile of each block's middle visual token
    text_blocks: torch.Tensor  # (blocks,) bool: blocks holding a text token

    @property
    def visual(self) -> int:
        return math.prod(self.grid)

    @property
    def seq_len(self) -> int:
        return self.visual + self.text

    @property
    def block(self) -> int:
        return math.prod(self.tile)

    @property
    def num_blocks(self) -> int:
        return self.block_tile.shape[0]


def token_layout(grid: tuple[int, int, int], text: int, tile: tuple[int, int, int] = TILE) -> TokenLayout:
    T, H, W = grid
    if min(grid) < 1 or text < 0:
        raise ValueError(f"token grid {grid} with {text} text tokens: every axis needs at least one token")
    tt, th, tw = tile
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    tiles = (-(-T // tt), -(-H // th), -(-W // tw))
    tile_id = ((t // tt) * tiles[1] + h // th) * tiles[2] + w // tw
    within = ((t % tt) * th + h % th) * tw + w % tw
    order = torch.argsort((tile_id * math.prod(tile) + within).flatten(), stable=True)
    n = T * H * W
    perm = torch.cat([order, torch.arange(n, n + text)])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    block = math.prod(tile)
    num_blocks = -(-perm.numel() // block)
    middle = (torch.arange(num_blocks) * block + block // 2).clamp(max=n - 1)
    block_tile = tile_id.flatten()[order[middle]]
    text_blocks = torch.zeros(num_blocks, dtype=torch.bool)
    text_blocks[torch.arange(n, n + text) // block] = True
    return TokenLayout(grid, text, tile, tiles, perm, inverse, block_tile, text_blocks)


def axis_window(n: int, k: int) -> torch.Tensor:
    """(n, n) bool: query tile i keeps key tiles [s, s + k), s = clamp(i - (k - 1) // 2, 0, n - k). For odd ``k`` this
    is STA's rule (window centred on the query tile, centre clamped so the window stays inside the grid)."""
    k = max(1, min(k, n))
    i = torch.arange(n)
    start = (i - (k - 1) // 2).clamp(0, n - k)
    return (i[None, :] >= start[:, None]) & (i[None, :] < start[:, None] + k)


def tile_window(tiles: tuple[int, int, int], window: tuple[int, int, int]) -> torch.Tensor:
    """(tiles, tiles) bool: the 3-D window, the product of the three axes' windows."""
    a = [axis_window(n, k).to(torch.float32) for n, k in zip(tiles, window)]
    return torch.kron(torch.kron(a[0], a[1]), a[2]).bool()


def block_keep(layout: TokenLayout, tile_keep: torch.Tensor) -> torch.Tensor:
    """(blocks, blocks) bool: a block pair is kept when their tiles' pair is, or when either block holds text."""
    keep = tile_keep[layout.block_tile][:, layout.block_tile].clone()
    keep[layout.text_blocks, :] = True
    keep[:, layout.text_blocks] = True
    return keep


def density(keep: torch.Tensor) -> float:
    """The share of (query block, key block) pairs kept (the mean over heads for a per-head pattern)."""
    return keep.float().mean().item()


@dataclass(frozen=True, eq=False)
class FittedWindow:
    window: tuple[int, int, int]  # tiles per axis
    keep: torch.Tensor  # (blocks, blocks) bool
    density: float


def fit_window(layout: TokenLayout, target: float, axes: tuple[int, ...] = (0, 1, 2)) -> FittedWindow:
    """The largest window whose block density is at most ``target``: the axes in ``axes`` take the same share
    ``f`` of their tiles (rounded, at least one tile), the others stay whole; ``f`` goes down from 1 until the
    density fits. When even one tile per axis exceeds ``target`` (small grids: text alone is a block row and
    column), that smallest window is returned and a warning logged."""
    candidates: list[tuple[int, int, int]] = []
    for step in range(1000, -1, -1):
        f = step / 1000
        window = tuple(max(1, min(n, round(f * n))) if a in axes else n for a, n in enumerate(layout.tiles))
        if not candidates or window != candidates[-1]:
            candidates.append(window)  # type: ignore[arg-type]
    fitted = None
    for window in candidates:
        keep = block_keep(layout, tile_window(layout.tiles, window))
        fitted = FittedWindow(window, keep, density(keep))
        if fitted.density <= target + 1e-9:
            return fitted
    assert fitted is not None
    log.warning("sparse attention: density %s cannot be reached on the %s token grid with %d text tokens; the "
                "smallest window (%s) keeps %.3f", target, "x".join(map(str, layout.grid)), layout.text,
                "x".join(map(str, fitted.window)), fitted.density)
    return fitted
