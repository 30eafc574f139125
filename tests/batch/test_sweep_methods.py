"""The sweep across cache methods on the tiny CPU model, end to end: candidates of every registered method (one with a
calibration file) generated on a Ray worker, fidelity, one table with a method column and one Pareto plot; a re-run
resumes (nothing generated again). No method is named in the sweep's code: the candidates are the registered
methods' test modes."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genmo_teacache.caches import METHODS

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]
STEPS = 8  # the test modes skip some steps of an 8-step tiny run


def test_sweep_across_methods_with_ray_and_resume(tiny_model_dir, method_calibration, tmp_path):
    modes = {m.key: m.test_modes[0] for m in METHODS if m.enabled}
    cal = method_calibration  # for the methods that take one (MagCache's ratios)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car drives through the snowy city\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "vbench_eval" / "run_adaptive_threshold_experiment.py"), "--model_dir",
           str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out), "--num-prompts", "1",
           "--candidates", ",".join(modes.values()), "--calibration", str(cal), "--metric", "lpips", "--device", "cpu",
           "--width", "64", "--height", "64", "--num_frames", "7", "--num_steps", str(STEPS), "--layout", "batch"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([*cmd, "--ray", "--num-workers", "1"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    with open(out / "sweep_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["method"]) for r in rows] == [("mochi_baseline", "baseline")] + [
        (mode, key) for key, mode in modes.items()]
    for r in rows[1:]:  # every candidate skipped steps and has its fidelity against the baseline
        assert 0 < float(r["computed_fraction"]) < 1, r
        if "fidelity failed" not in proc.stdout:
            assert math.isfinite(float(r["psnr"])) and 0 <= float(r["lpips"]) < 1, r
    for key, mode in modes.items():
        (report,) = (out / "reports" / mode).glob("*.json")
        assert json.loads(report.read_text())["generation"]["cache"]["method"] == key
    if "fidelity failed" not in proc.stdout:
        assert (out / "sweep_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"Pareto plot: {out / 'sweep_pareto.png'}" in proc.stdout
        assert json.loads((out / "best_config.json").read_text())["method"] in modes

    table = (out / "sweep_results.csv").read_text()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # resumes: nothing to do
    assert again.returncode == 0, again.stderr[-4000:]
    assert "0 to generate" in again.stderr
    assert (out / "sweep_results.csv").read_text() == table
