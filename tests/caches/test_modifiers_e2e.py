"""Modes with modifiers through the whole workflow on the tiny CPU model: the sweep (batch generation, fidelity,
table) with +cfg and +taylor candidates, then evaluate on its videos. Nothing is mocked."""

import json

import pytest
from click.testing import CliRunner

from genmo_teacache.batch.cli import sweep_command
from genmo_teacache.eval.cli import evaluate_command

pytestmark = pytest.mark.slow

SMALL = ["--num_steps", "8", "--num_frames", "7", "--width", "64", "--height", "64"]
CANDIDATES = {"cfg": "fixed_0.05+cfg_s2", "both": "fixed_0.05+cfg_s2+taylor1"}


def test_sweep_and_evaluate_with_modifiers(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car drives through the snowy city\n")
    out = tmp_path / "sweep"
    configs = ",".join(f"{label}={mode}" for label, mode in CANDIDATES.items())
    result = CliRunner().invoke(sweep_command, [
        "--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out),
        "--num-prompts", "1", "--configs", configs, "--metric", "speedup", "--device", "cpu", "--baseline",
        "baseline", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in (out / "sweep_results.csv").read_text().splitlines()]
    assert [r[:2] for r in rows[1:]] == [["baseline", "baseline"], *([k, v] for k, v in CANDIDATES.items())]
    for mode in CANDIDATES.values():
        (report,) = (out / "reports" / mode).glob("*.json")
        generation = json.loads(report.read_text())["generation"]
        assert generation["mode"] == mode and generation["cond_only_steps"] > 0
        assert generation["dit_calls"] == sum(len(s["branches"]) for s in generation["steps"]) < 16
        assert json.loads(report.read_text())["log_entry"]["cache"]["dit_calls"] == generation["dit_calls"]

    result = CliRunner().invoke(evaluate_command, ["--videos", str(out / "videos"), "--baseline", "baseline",
                                                   "--skip-vbench", "--device", "cpu", "--no-grids"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for mode in CANDIDATES.values():
        assert mode in result.output
    assert (out / "results" / "fidelity_metrics" / f"{CANDIDATES['cfg']}_vs_baseline.json").exists()
