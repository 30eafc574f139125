"""Where the mode folders are: a videos folder, a batch root (videos/<mode>/ beside logs/), or the doubled layout
that ``batch --output-dir vbench_eval/videos`` makes (vbench_eval/videos/videos/<mode>/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _evalhelpers import smooth_video
from click.testing import CliRunner

from genmo_teacache.eval.cli import compare_command, evaluate_command, fidelity_command
from genmo_teacache.eval.layout import find_videos_dir
from genmo_teacache.video import write_video

MODES = ("mochi_baseline", "fixed_0.1")


def batch_root(root: Path, modes: tuple[str, ...] = MODES, size: int = 16) -> Path:
    """What ``genmo-teacache batch --output-dir root`` leaves: videos/<mode>/, reports/<mode>/, logs/."""
    for i, mode in enumerate(modes):
        write_video(root / "videos" / mode / "a cat-0.mp4", smooth_video(3, size, size, seed=i))
        (root / "reports" / mode).mkdir(parents=True)
    (root / "logs").mkdir()
    runs = [{"mode": m, "prompt": "a cat", "sample": 0, "time_seconds": t} for m, t in zip(modes, (10.0, 4.0))]
    (root / "logs" / "generation_log_0-1.json").write_text(json.dumps({"runs": runs}))
    (root / "prompt_names.json").write_text("{}")
    return root


def test_a_batch_root_and_the_doubled_layout_lead_to_the_mode_folders(tmp_path: Path) -> None:
    root = batch_root(tmp_path / "out")
    assert find_videos_dir(root) == root / "videos"
    assert find_videos_dir(root / "videos") == root / "videos"
    # batch --output-dir vbench_eval/videos: vbench_eval/videos/videos/<mode>
    doubled = batch_root(tmp_path / "vbench_eval" / "videos")
    assert find_videos_dir(doubled) == doubled / "videos"
    assert find_videos_dir(tmp_path / "vbench_eval") == doubled / "videos"


def test_mode_folders_at_two_levels_are_refused_naming_both(tmp_path: Path) -> None:
    root = batch_root(tmp_path / "vb")
    write_video(root / "mochi_baseline" / "a dog-0.mp4", smooth_video(3, 16, 16))  # an older, flat layout
    with pytest.raises(FileNotFoundError) as err:
        find_videos_dir(root)
    assert str(root / "videos") in str(err.value) and "mochi_baseline" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_videos_dir(tmp_path / "missing")


def test_evaluate_given_a_batch_root_finds_modes_logs_and_puts_results_beside(tmp_path: Path) -> None:
    root = batch_root(tmp_path / "vbench_eval" / "videos")  # the doubled layout of the reference workflow
    result = CliRunner().invoke(evaluate_command, ["--videos", str(tmp_path / "vbench_eval" / "videos"),
                                                   "--baseline", "mochi_baseline", "--skip-fidelity",
                                                   "--skip-vbench"])
    assert result.exit_code == 0, result.output
    assert "modes: fixed_0.1" in result.output
    summary = (root / "results" / "summary_table.csv").read_text().splitlines()
    assert summary[2].startswith("fixed_0.1,2.50x,4s")  # the logs of the batch root were found


def test_reference_fidelity_and_compare_commands_on_a_sweep_output(tmp_path: Path) -> None:
    """The mini-experiment's next steps as the reference writes them, pointed at the sweep's --output-dir."""
    root = batch_root(tmp_path / "videos_threshold_experiment", ("mochi_baseline", "mochi_adaptive_0.12_0.04"), 64)
    fid = tmp_path / "fidelity_metrics_threshold_experiment"
    res = CliRunner().invoke(fidelity_command, ["--video-dir", str(root), "--baseline", "mochi_baseline", "--modes",
                                                "mochi_adaptive_0.12_0.04", "--save-dir", str(fid), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((fid / "mochi_adaptive_0.12_0.04_vs_mochi_baseline.json").read_text())["num_videos"] == 1
    assert res.stdout.rstrip().splitlines()[-1].startswith("| mochi_adaptive_0.12_0.04 | ")  # ends with its table
    assert res.stdout.rstrip().splitlines()[-1].endswith(" | 1 |")  # the videos compared
    res = CliRunner().invoke(compare_command, ["--fidelity-dir", str(fid),
                                               "--gen-log-dir", str(root / "videos"), "--output-json",
                                               str(tmp_path / "cmp" / "all_comparison_results.json")])
    assert res.exit_code == 0, res.output
    assert "| mochi_adaptive_0.12_0.04 | 2.50x | 4s | \u2014 |" in res.stdout
