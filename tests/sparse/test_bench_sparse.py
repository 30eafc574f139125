"""bench/bench_sparse.py runs end to end on CPU at tiny size (the GPU run is the lead's) and writes the fields the
team reads: ``device``, ``frames``, and ``variants`` of {name, forward_s, density, mean_abs_diff}, upstream's default
and the base preset among them, from the same run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_sparse_tiny_writes_the_results_file(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, str(REPO / "bench" / "bench_sparse.py"), "--tiny", "--frames", "163,31", "--repeats", "1",
           "--attn_repeats", "1", "--loop_steps", "2", "--methods", "sparse_tile_0.5,sparse_heads_0.5"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "done" in run.stdout and "[" in run.stdout  # progress lines with the elapsed time
    d = json.loads((tmp_path / "sparse_attention_tiny.json").read_text())
    assert {"device", "frames", "variants", "attention", "command"} <= d.keys() and d["frames"] == 163
    names = [v["name"] for v in d["variants"]]
    assert names[:2] == ["upstream_default", "bf16"] and len(names) == len(set(names))
    assert {"bf16+sparse_tile_0.5", "bf16+sparse_heads_0.5"} <= set(names)
    for v in d["variants"]:
        assert {"name", "forward_s", "density", "mean_abs_diff"} <= v.keys(), v
        assert v["forward_s"] > 0 and 0 < v["density"] <= 1 and v["mean_abs_diff"] >= 0
    by_name = {v["name"]: v for v in d["variants"]}
    assert by_name["upstream_default"]["mean_abs_diff"] == 0 and by_name["upstream_default"]["density"] == 1
    sparse = by_name["bf16+sparse_tile_0.5"]
    assert sparse["density"] < 1 and sparse["mean_abs_diff"] > 0 and sparse["loop_latents_rel_diff"] > 0
    assert sparse["attention_ms_per_call"] > 0 and sparse["windows"]
    kernels = {(a["kernel"], a["frames"]) for a in json.loads((tmp_path / "sparse_attention_tiny_3sizes.json")
                                                             .read_text())["attention"]}
    assert {("sparse_tile_0.5", 31), ("sparse_heads_0.5", 163), ("sdpa (cuDNN on Hopper)", 31)} <= kernels
    checks = [a for a in json.loads((tmp_path / "sparse_attention_tiny_3sizes.json").read_text())["attention"]
              if a["kernel"].endswith("against SDPA with its mask")]
    assert [c["frames"] for c in checks] == [31] and all(c["max_abs_diff"] < 0.05 for c in checks)
