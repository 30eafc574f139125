"""What a multi-rank run prints: the summary of one process, nothing of Ray or of the ranks (real Ray, two CPU
ranks, the demo command in a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
SMALL = ["--num_steps", "6", "--width", "64", "--height", "64", "--num_frames", "13", "--prompt", "a cat",
         "--seed", "3", "--cache_mode", "fixed_0.1"]
RAY_NOISE = ("(pid=", "RankContext", "Ray instance", "ray", "Token authentication", "Loading weights")


def demo(model_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(REPO / "demos" / "cli_teacache.py"), "--model_dir", str(model_dir),
                          "--device", "cpu", "--out_dir", str(out), *SMALL, *extra], capture_output=True, text=True,
                         env=os.environ, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def summary(stdout: str, out: Path) -> str:
    """The summary with its measured numbers and output names masked (what any two runs share); upstream's
    "Timing load_..." lines of a one-process load are not part of it."""
    lines = [line for line in stdout.splitlines() if not line.startswith("Timing load_")]
    text = "\n".join(lines).replace(str(out), "OUT")
    return re.sub(r"output_\d+_", "output_N_", re.sub(r"\d+\.\d+", "X", text))


@pytest.mark.slow
def test_a_multi_rank_run_prints_the_summary_of_one_process_without_ray_noise(tiny_model_dir, tmp_path):
    one = summary(demo(tiny_model_dir, tmp_path / "one").stdout, tmp_path / "one")
    assert one.startswith("Mode fixed_X: computed 3 of 6 steps")
    for name, layout in (("cp", ["--num_gpus", "2"]), ("cfg", ["--num_gpus", "2", "--cfg_parallel"])):
        ranks = demo(tiny_model_dir, tmp_path / name, *layout)
        assert summary(ranks.stdout, tmp_path / name) == one  # the same lines: counts, measurements, files
        noise = [line for line in ranks.stderr.splitlines() if any(n in line for n in RAY_NOISE)]
        assert not noise, noise
        assert "Sampling (fixed_0.1)" in ranks.stderr  # rank 0's progress bar, drawn by the driver
