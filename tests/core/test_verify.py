"""`genmo-teacache verify`: upstream's own sample_model and DiT against ours, on the user's weights."""

import json

import pytest
from click.testing import CliRunner

from genmo_teacache.verify import verify_command

SMALL = ["--width", "64", "--height", "64", "--num_frames", "13", "--device", "cpu"]


# the slow stage: the ranks' layouts start Ray and ranks of their own (the default stage runs ranks in tests/multigpu);
# a memory option changes no number (tests/core/test_low_memory.py checks its latents too)
@pytest.mark.parametrize("extra", [[], pytest.param(["--num_gpus", "2"], marks=pytest.mark.slow),
                                   pytest.param(["--num_gpus", "2", "--cfg_parallel"], marks=pytest.mark.slow),
                                   pytest.param(["--low_memory", "--dit_dtype", "bf16"], marks=pytest.mark.slow)])
def test_ours_with_caching_off_is_upstreams_result(tiny_model_dir, tmp_path, extra, request):
    if "--num_gpus" in extra:
        request.getfixturevalue("own_ray")  # its ranks need the CPUs the session's two ranks would hold
    out = tmp_path / "verdict.json"
    res = CliRunner().invoke(verify_command, ["--model_dir", str(tiny_model_dir), *SMALL, *extra, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "bit-identical: our latents equal upstream's exactly" in res.output
    verdict = json.loads(out.read_text())
    assert verdict["identical"] and verdict["max_abs_diff"] == 0.0 and verdict["settings"]["num_steps"] == 3
    assert "upstream AsymmDiTJoint" in verdict["upstream_dit"]
    assert ("ranks" in verdict["ours"]) == ("--num_gpus" in extra)
    assert ("low memory" in verdict["ours"]) == ("--low_memory" in extra)


def test_a_difference_is_reported_and_fails(tiny_model_dir):
    """A cached mode moves the latents: verify says by how much and exits 1 (the check can fail)."""
    res = CliRunner().invoke(verify_command, ["--model_dir", str(tiny_model_dir), *SMALL, "--num_steps", "8",
                                              "--cache_mode", "fixed_0.3"])
    assert res.exit_code == 1, res.output
    assert "NOT bit-identical: max |difference|" in res.output and "fixed_0.3" in res.output


@pytest.mark.slow
def test_a_sparse_attention_shows_its_distance_named_with_its_speed_options(tiny_model_dir):
    """Issue 22: verify takes the sparse-attention speed option and reports how far it moves the latents, naming it;
    256 x 256 so that the 2x8x8 tiles make more than one block (a window can drop some)."""
    res = CliRunner().invoke(verify_command, ["--model_dir", str(tiny_model_dir), "--width", "256", "--height",
                                              "256", "--num_frames", "7", "--device", "cpu",
                                              "--sparse_attention", "sparse_tile_0.5_w0"])
    assert res.exit_code == 1, res.output
    assert "NOT bit-identical: max |difference|" in res.output and "baseline@sparse_tile_0.5_w0" in res.output


def test_verify_that_cannot_run_exits_2_before_any_model_loads(tiny_model_dir, tmp_path):
    """Exit codes: 0 identical, 1 different, 2 could not run (never 1, which would say the latents differ)."""
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    for args, message in (
        (["--out", str(blocker / "verdict.json")], "--out"),
        (["--out", str(tmp_path)], "is a directory"),
        (["--cache_mode", "fixd_0.1"], "unknown mode 'fixd_0.1'"),
        (["--seed", str(2**32)], "--seed"),
    ):
        res = CliRunner().invoke(verify_command, ["--model_dir", str(tiny_model_dir), *SMALL, *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Timing load" not in res.output
    res = CliRunner().invoke(verify_command, ["--model_dir", str(tmp_path / "weights"), *SMALL])
    assert res.exit_code == 2 and "does not exist" in res.output
