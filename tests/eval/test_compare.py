"""compare_results.py as the reference workflow calls it: no --baseline, --gen-log-dir pointing at the videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _evalhelpers import HUNYUAN_MODES
from click.testing import CliRunner

from genmo_teacache.eval.cli import compare_command


def _reference_latency_runs(hunyuan: Path) -> list[dict]:
    ref = json.loads((hunyuan / "all_comparison_results.json").read_text())
    return [{"mode": mode, "prompt": "p", "sample": 0, "time_seconds": entry["timing"]["avg_time"]}
            for mode, entry in ref.items()]


def _batch_root(hunyuan: Path, root: Path) -> Path:
    """A batch output folder: videos/<mode>/ and, beside it, logs/generation_log_0-1.json."""
    for mode in HUNYUAN_MODES:
        (root / "videos" / mode).mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "logs" / "generation_log_0-1.json").write_text(json.dumps({"runs": _reference_latency_runs(hunyuan)}))
    return root


def _compare(hunyuan: Path, out: Path, *extra: str, scores: Path | None = None):
    args = ["--scores-dir", str(scores or hunyuan / "vbench_scores"), "--fidelity-dir",
            str(hunyuan / "fidelity_metrics"), "--output-json", str(out / "all_comparison_results.json"), *extra]
    return CliRunner().invoke(compare_command, args, catch_exceptions=False)


@pytest.mark.parametrize("layout", ["batch root", "doubled"])
def test_reference_command_without_baseline_finds_it_and_the_logs(hunyuan: Path, tmp_path: Path, layout: str) -> None:
    # reference: --gen-log-dir $MOCHI_VBENCH/videos, with no --baseline
    if layout == "batch root":  # batch --output-dir root: root/videos, root/logs
        gen_log_dir = _batch_root(hunyuan, tmp_path / "root") / "videos"
    else:  # batch --output-dir vbench_eval/videos: vbench_eval/videos/{videos,logs}
        gen_log_dir = _batch_root(hunyuan, tmp_path / "vbench_eval" / "videos")
    result = _compare(hunyuan, tmp_path / "out", "--gen-log-dir", str(gen_log_dir))
    assert result.exit_code == 0, result.output
    assert "baseline: hunyuan_baseline" in result.output
    ours = (tmp_path / "out" / "summary_table.csv").read_text().splitlines()
    ref = (hunyuan / "summary_table.csv").read_text().splitlines()
    assert ours[0] == ref[0]
    # every mode's row (modes sorted by name here, labelled in the reference), speedups included
    assert sorted(row.split(",")[1:] for row in ours[1:]) == sorted(row.split(",")[1:] for row in ref[1:])
    assert "WARNING" not in result.output


def test_baseline_must_be_named_when_not_exactly_one_mode_says_baseline(hunyuan: Path, tmp_path: Path) -> None:
    scores = tmp_path / "scores"
    shutil.copytree(hunyuan / "vbench_scores", scores)
    shutil.copytree(scores / "hunyuan_baseline", scores / "other_baseline")
    result = _compare(hunyuan, tmp_path / "out", scores=scores)
    assert result.exit_code == 2
    assert "hunyuan_baseline, other_baseline" in result.output and "--baseline" in result.output
    result = _compare(hunyuan, tmp_path / "out", "--modes", "hunyuan_fixed_0.1,hunyuan_adaptive")
    assert result.exit_code == 2 and "no mode" in result.output and "--baseline" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_generation_logs_are_reported_loudly(hunyuan: Path, tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    result = _compare(hunyuan, tmp_path / "out", "--gen-log-dir", str(tmp_path / "videos"))
    assert result.exit_code == 2  # named a folder without any log: nothing written, say where it looked
    assert "generation_log_*.json" in result.output and str(tmp_path / "logs") in result.output
    assert not (tmp_path / "out").exists()

    # not named: the tables are written, and the end of the output says why Speedup and Latency are empty
    result = _compare(hunyuan, tmp_path / "out", "--baseline", "hunyuan_baseline")
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output and "Speedup" in result.output.split("WARNING", 1)[1]
    assert (tmp_path / "out" / "summary_table.csv").read_text().splitlines()[2].split(",")[1] == "\u2014"

    # logs without the baseline: speedups cannot be taken, and that is said too
    logs = tmp_path / "logs-no-baseline"
    logs.mkdir()
    runs = [r for r in _reference_latency_runs(hunyuan) if r["mode"] != "hunyuan_baseline"]
    (logs / "generation_log_0-1.json").write_text(json.dumps({"runs": runs}))
    result = _compare(hunyuan, tmp_path / "out2", "--gen-log-dir", str(logs))
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output and "hunyuan_baseline" in result.output.split("WARNING", 1)[1]
