"""`genmo-teacache verify`: upstream's own sample_model and DiT against ours, on the user's weights."""

import json

import pytest
from click.testing import CliRunner

from genmo_teacache.verify import verify_command

SMALL = ["--width", "64", "--height", "64", "--num_frames", "13", "--device", "cpu"]


@pytest.mark.parametrize("extra", [[], ["--num_gpus", "2"], ["--num_gpus", "2", "--cfg_parallel"],
                                   ["--low_memory", "--dit_dtype", "bf16"]])  # a memory option changes no number
def test_ours_with_caching_off_is_upstreams_result(tiny_model_dir, tmp_path, extra):
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
