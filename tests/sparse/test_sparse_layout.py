"""The tile order and the block patterns: the reorder is a permutation of the real tokens (no padding), its inverse
undoes it, tiles are whole blocks where the grid allows, STA's window rule, text kept both ways, fitted densities."""

import math

import pytest
import torch

from genmo_teacache.sparse.layout import axis_window, block_keep, density, fit_window, tile_window, token_layout


@pytest.mark.parametrize("grid, text, tile", [((4, 8, 8), 5, (1, 2, 2)), ((3, 5, 7), 0, (2, 2, 4)),
                                               ((28, 30, 53), 40, (2, 8, 8)), ((15, 30, 53), 1, (2, 8, 8))])
def test_reorder_is_a_permutation_of_the_real_tokens_and_the_inverse_undoes_it(grid, text, tile):
    layout = token_layout(grid, text, tile)
    n = math.prod(grid)
    assert layout.seq_len == n + text and layout.perm.numel() == n + text  # nothing padded
    assert torch.equal(layout.perm.sort().values, torch.arange(n + text))
    x = torch.randn(1, 2, n + text, 3)
    assert torch.equal(x[:, :, layout.perm][:, :, layout.inverse], x)
    assert torch.equal(layout.perm[n:], torch.arange(n, n + text))  # text keeps its place, after the visual tokens
    assert layout.num_blocks == -(-(n + text) // math.prod(tile))


def test_tiles_are_blocks_when_the_grid_is_a_multiple_of_the_tile():
    """Grid (4, 8, 8), tile (2, 4, 4): block b holds exactly the 32 tokens of tile b (raster order of tiles)."""
    layout = token_layout((4, 8, 8), 0, (2, 4, 4))
    t, h, w = torch.meshgrid(torch.arange(4), torch.arange(8), torch.arange(8), indexing="ij")
    tile_of_token = ((t // 2) * 2 + h // 4) * 2 + w // 4
    for b in range(layout.num_blocks):
        tokens = layout.perm[b * 32:(b + 1) * 32]
        assert set(tile_of_token.flatten()[tokens].tolist()) == {b}
        assert layout.block_tile[b] == b


def test_edge_tiles_are_packed_and_each_block_takes_its_middle_tokens_tile():
    layout = token_layout((2, 3, 5), 0, (1, 2, 2))  # tiles of 4, 2, ... tokens: 3x... packed, blocks of 4
    t, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(5), indexing="ij")
    tile_of_token = (((t // 1) * 2 + h // 2) * 3 + w // 2).flatten()
    tiles_in_order = tile_of_token[layout.perm]
    assert torch.all(tiles_in_order[1:] >= tiles_in_order[:-1])  # tile by tile
    for b in range(layout.num_blocks):
        middle = min(b * 4 + 2, 29)
        assert layout.block_tile[b] == tiles_in_order[middle]


@pytest.mark.parametrize("n", [1, 4, 7, 14])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_axis_window_is_stas_clamped_window_for_odd_sizes(n, k):
    """fastvideo-kernel tests/support_flex_sta.py: centre = clamp(q, k//2, n-1-k//2), keep |centre - kv| <= k//2
    (a window of k tiles, or of n when k > n)."""
    got = axis_window(n, k)
    q = torch.arange(n)[:, None]
    kv = torch.arange(n)[None, :]
    if k <= n:
        centre = q.clamp(k // 2, n - 1 - k // 2)
        assert torch.equal(got, (centre - kv).abs() <= k // 2)
    else:
        assert got.all()
    assert torch.all(got.sum(1) == min(k, n))  # every query tile attends the same number of tiles


def test_tile_window_is_the_product_of_the_axes():
    tiles = (3, 4, 5)
    keep = tile_window(tiles, (1, 3, 2)).reshape(*tiles, *tiles)
    a = [axis_window(n, k) for n, k in zip(tiles, (1, 3, 2))]
    expected = (a[0][:, None, None, :, None, None] & a[1][None, :, None, None, :, None]
                & a[2][None, None, :, None, None, :])
    assert torch.equal(keep, expected)


def test_text_blocks_are_kept_in_every_row_and_column():
    layout = token_layout((4, 8, 8), 9, (1, 2, 2))  # 256 visual tokens = 64 blocks, text in blocks 64-66
    keep = block_keep(layout, tile_window(layout.tiles, (1, 1, 1)))
    assert layout.text_blocks.nonzero().flatten().tolist() == [64, 65, 66]
    assert keep[64:].all() and keep[:, 64:].all()
    assert torch.equal(keep[:64, :64], torch.eye(64, dtype=torch.bool))  # one tile each: the diagonal


@pytest.mark.parametrize("target", [1.0, 0.5, 0.25, 0.17, 0.1])
def test_fit_window_takes_the_largest_window_within_the_density(target):
    layout = token_layout((6, 8, 12), 7, (1, 2, 2))  # tiles (6, 4, 6)
    fit = fit_window(layout, target)
    assert fit.density == pytest.approx(density(fit.keep)) and fit.density <= target + 1e-9
    assert fit.keep.diagonal().all()  # every block attends to itself
    if target == 1.0:
        assert fit.keep.all() and fit.window == layout.tiles
    bigger = tuple(min(n, k + 1) for n, k in zip(layout.tiles, fit.window))  # one more tile on every axis
    if bigger != fit.window:
        assert density(block_keep(layout, tile_window(layout.tiles, bigger))) > target


def test_fit_window_narrows_only_the_axes_it_is_given():
    layout = token_layout((6, 8, 12), 7, (1, 2, 2))
    spatial, temporal = fit_window(layout, 0.3, (0,)), fit_window(layout, 0.3, (1, 2))
    assert spatial.window[1:] == layout.tiles[1:] and spatial.window[0] < layout.tiles[0]
    assert temporal.window[0] == layout.tiles[0] and temporal.window[1:] < layout.tiles[1:]


def test_a_density_the_grid_cannot_reach_gives_the_smallest_window_and_says_so(caplog):
    layout = token_layout((2, 2, 2), 3, (1, 1, 2))  # 8 visual tokens in 4 blocks of 2, text in 2 more blocks
    fit = fit_window(layout, 0.01)
    assert fit.window == (1, 1, 1) and fit.density > 0.01
    assert "cannot be reached" in caplog.text
