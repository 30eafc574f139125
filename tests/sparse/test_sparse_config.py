"""Sparse-attention tokens: names round-trip, published warm-ups scale to the run, bad tokens are refused naming
the value and the fix."""

import pytest

from genmo_teacache.sparse import SparseHeads, SparseTile, SparseTopK, parse_sparse


@pytest.mark.parametrize("token, expected", [
    ("sparse_tile_0.17", SparseTile(0.17)),
    ("sparse_tile_0.25_w10", SparseTile(0.25, warmup=10)),
    ("sparse_tile_1.0", SparseTile(1.0)),
    ("sparse_heads_0.3", SparseHeads(0.3)),
    ("sparse_heads_0.125_w0", SparseHeads(0.125, warmup=0)),
    ("sparse_topk_0.5", SparseTopK(0.5)),
    ("sparse_topk_0.4_w6", SparseTopK(0.4, warmup=6)),
])
def test_tokens_round_trip(token, expected):
    config = parse_sparse(token)
    assert config == expected and type(config) is type(expected)
    assert config.token == token
    assert parse_sparse(config.token) == config


def test_names_are_canonical():
    """Another spelling of the same number parses to the same config; its canonical token is the one it prints."""
    assert parse_sparse("sparse_tile_1") == SparseTile(1.0)
    assert parse_sparse("sparse_tile_1").token == "sparse_tile_1.0"
    assert parse_sparse("sparse_heads_0.50").token == "sparse_heads_0.5"


def test_other_tokens_are_not_sparse():
    for token in ("bf16", "compile", "fa3_fp8", "fastest"):
        assert parse_sparse(token) is None


@pytest.mark.parametrize("token, message", [
    ("sparse_tile_0", r"density 0.0 must be in \(0, 1\].*sparse_tile_0.17"),
    ("sparse_tile_1.5", r"density 1.5 must be in \(0, 1\]"),
    ("sparse_heads_2", r"density 2.0 must be in \(0, 1\].*sparse_heads_0.17"),
    ("sparse_tile", r"use sparse_tile_<density>\[_w<dense warm-up steps>\]"),
    ("sparse_tile_0.2_w", "use sparse_tile_<density>"),
    ("sparse_tile_0.2_wx", "use sparse_tile_<density>"),
    ("sparse_tile_-0.2", "use sparse_tile_<density>"),
    ("sparse_radial_0.2", "no such sparse attention; use sparse_tile_<density>.* or sparse_topk_<density>"),
])
def test_malformed_tokens_name_the_value_and_the_grammar(token, message):
    with pytest.raises(ValueError, match=message):
        parse_sparse(token)
    with pytest.raises(ValueError, match=repr(token).replace("[", r"\[")):
        parse_sparse(token)


@pytest.mark.parametrize("kwargs, message", [
    (dict(density=0.0), r"must be in \(0, 1\]"),
    (dict(density=float("nan")), r"must be in \(0, 1\]"),
    (dict(density=0.2, warmup=-1), "whole number of dense steps >= 0"),
    (dict(density=0.2, warmup=True), "whole number of dense steps >= 0"),
    (dict(density=0.2, warmup=2.5), "whole number of dense steps >= 0"),
])
def test_invalid_configs_are_refused(kwargs, message):
    for cls in (SparseTile, SparseHeads, SparseTopK):
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)


def test_published_warmups_scale_to_the_run():
    """STA's HunyuanVideo strategy runs 15 of 50 steps dense, Sparse VideoGen's script 10% of the steps and 3% of
    the layers (floor): 19 and 6 of Mochi's 64 steps, 1 of its 48 blocks; SpargeAttn's examples none; an explicit
    _w<n> wins."""
    assert SparseTile(0.2).warmup_steps(64) == 19 and SparseTile(0.2).warmup_steps(50) == 15
    assert SparseHeads(0.2).warmup_steps(64) == 6 and SparseHeads(0.2).warmup_steps(50) == 5
    assert SparseTile(0.2, warmup=3).warmup_steps(64) == 3
    assert SparseHeads(0.2).dense_layers(48) == 1 and SparseHeads(0.2).dense_layers(4) == 0
    assert SparseTile(0.2).dense_layers(48) == 0
    assert SparseTopK(0.5).warmup_steps(64) == 0 and SparseTopK(0.5).dense_layers(48) == 0  # SpargeAttn: none
    assert SparseTile(0.2).to_dict(64) == {"token": "sparse_tile_0.2", "method": "sliding_tile", "density": 0.2,
                                          "warmup": None, "warmup_steps": 19}
