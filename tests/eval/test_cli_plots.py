"""`genmo-teacache evaluate` end to end on small synthetic folders, the reference-named scripts, and the plots."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from _evalhelpers import FLICKER_PROMPTS, HUNYUAN_MODES, REPO, smooth_video
from click.testing import CliRunner

from genmo_teacache.eval import plots
from genmo_teacache.eval.cli import evaluate_command, vbench_command
from genmo_teacache.video import write_video


def _png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def _project(root: Path) -> Path:
    """vb/videos/{mochi_baseline, fixed_low, fixed_high}/<prompt>-0.mp4, vb/logs/generation_log_0-6.json and
    delta-TEMNI files, as the generate and batch commands lay them out."""
    videos, logs = root / "videos", root / "logs"
    for i, prompt in enumerate(FLICKER_PROMPTS):
        base = smooth_video(9, seed=i)
        write_video(videos / "mochi_baseline" / f"{prompt}-0.mp4", base)
        for mode, amp in (("fixed_low", 4), ("fixed_high", 20)):
            noise = np.random.default_rng(i).integers(-amp, amp + 1, (9, 6, 8, 3)).repeat(8, 1).repeat(8, 2)
            write_video(videos / mode / f"{prompt}-0.mp4", np.clip(base + noise, 0, 255).astype(np.uint8))
    runs = []
    for mode, total, denoise, skipped in (("mochi_baseline", 100.0, 90.0, 0), ("fixed_low", 70.0, 60.0, 20),
                                          ("fixed_high", 40.0, 30.0, 40)):
        for prompt in FLICKER_PROMPTS:
            runs.append({"mode": mode, "prompt": prompt, "sample": 0, "time_seconds": total,
                         "timings": {"text_encoding_s": 1.0, "denoising_s": denoise, "decoding_s": 9.0},
                         "cache": {"computed_steps": 64 - skipped, "skipped_steps": skipped}})
    logs.mkdir(parents=True)
    (logs / "generation_log_0-6.json").write_text(json.dumps({"runs": runs}))
    for prompt in FLICKER_PROMPTS:
        values = 0.05 * np.abs(np.sin(np.arange(64) / 4 + len(prompt)))
        (logs / f"{prompt}-0_delta_TEMNI.txt").write_text("\n".join(f"{v:.6f}" for v in values) + "\n")
    return videos


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_evaluate_end_to_end_and_resume(tmp_path: Path) -> None:
    videos = _project(tmp_path / "vb")
    args = ["--videos", str(videos), "--baseline", "mochi_baseline", "--dimensions", "temporal_flickering",
            "--device", "cpu"]
    result = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "vb" / "results"  # default: beside the videos folder

    fid_low = json.loads((out / "fidelity_metrics" / "fixed_low_vs_mochi_baseline.json").read_text())
    fid_high = json.loads((out / "fidelity_metrics" / "fixed_high_vs_mochi_baseline.json").read_text())
    assert fid_low["num_videos"] == 2 and fid_low["psnr"]["mean"] > fid_high["psnr"]["mean"]
    assert fid_low["lpips"]["mean"] < fid_high["lpips"]["mean"]
    for mode in ("mochi_baseline", "fixed_low", "fixed_high"):
        assert (out / "vbench_scores" / mode / "temporal_flickering_eval_results.json").is_file()

    summary = _rows(out / "summary_table.csv")
    assert summary[0] == ["Mode", "Speedup", "Latency (s)", "VBench Total", "PSNR", "SSIM", "LPIPS",
                          "Denoising (s)", "Denoising Speedup"]
    assert [r[0] for r in summary[1:]] == ["mochi_baseline", "fixed_high", "fixed_low"]
    assert summary[2][1:4] == ["2.50x", "40s", "\u2014"]  # only one VBench dimension: no total
    assert summary[2][4] == f"{fid_high['psnr']['mean']:.4f}" and summary[2][7:] == ["30s", "3.00x"]
    vb = _rows(out / "vbench_scores_table.csv")
    flicker = json.loads((out / "vbench_scores" / "fixed_low" / "temporal_flickering_eval_results.json").read_text())
    assert vb[3][3] == f"{flicker['temporal_flickering'][0]:.4f}"
    comparison = json.loads((out / "all_comparison_results.json").read_text())
    assert comparison["fixed_low"]["timing"]["avg_skipped_steps"] == 20
    assert comparison["fixed_low"]["speedup"] == {"end_to_end": 100 / 70, "denoising": 1.5}
    for name in ("speedup_vs_psnr.png", "speedup_vs_lpips.png", "vbench_dimensions.png", "delta_temni_logs.png"):
        assert len(_png_shape(out / "plots" / name)) == 3, name
    for name in ("summary_table.md", "fidelity_table.md", "vbench_scores_table.md"):
        assert (out / name).read_text().startswith("# ")
    assert f"in {out}: vbench_scores_table.csv" in result.output and "summary_table.csv" in result.output
    assert result.stdout.rstrip().splitlines()[-1].startswith("| fixed_low | 1.43x |")  # ends with the table

    # second run: everything is resumed, nothing recomputed
    stamps = {p: p.stat().st_mtime_ns for p in (out / "fidelity_metrics").glob("*_vs_*.json")}
    stamps |= {p: p.stat().st_mtime_ns for p in (out / "vbench_scores").rglob("*_eval_results.json")}
    result = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "3 exists" in result.output


def test_evaluate_names_the_missing_baseline(tmp_path: Path) -> None:
    for mode in ("mochi_baseline", "fixed_0.04"):
        (tmp_path / "videos" / mode).mkdir(parents=True)
    result = CliRunner().invoke(evaluate_command, ["--videos", str(tmp_path / "videos"), "--baseline", "baseline"])
    assert result.exit_code == 2
    assert "baseline" in result.output and "fixed_0.04, mochi_baseline" in result.output
    result = CliRunner().invoke(evaluate_command, ["--videos", str(tmp_path / "videos"), "--baseline",
                                                   "mochi_baseline", "--dimensions", "sharpness"])
    assert result.exit_code == 2 and "sharpness" in result.output and "temporal_flickering" in result.output


def test_reference_named_scripts(hunyuan: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp" / "all_comparison_results.json"
    cmd = [sys.executable, str(REPO / "vbench_eval" / "compare_results.py"), "--baseline", "hunyuan_baseline",
           "--scores-dir", str(hunyuan / "vbench_scores"), "--fidelity-dir", str(hunyuan / "fidelity_metrics"),
           "--output-json", str(out), "--modes", ",".join(HUNYUAN_MODES[1:])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)  # no vbench_eval/logs there
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: no generation log" in proc.stderr
    ours = _rows(out.parent / "vbench_scores_table.csv")
    ref = _rows(hunyuan / "vbench_scores_table.csv")
    assert [r[0] for r in ours[1:]] == HUNYUAN_MODES
    assert [r[1:-1] for r in ours] == [r[1:-1] for r in ref]  # all but labels and the (log-less) latency
    assert (out.parent / "plots" / "vbench_dimensions.png").is_file()
    for script in ("run_fidelity_metrics.py", "run_vbench_eval.py"):
        proc = subprocess.run([sys.executable, str(REPO / "vbench_eval" / script), "--help"], capture_output=True,
                              text=True)
        assert proc.returncode == 0 and "--video-dir" in proc.stdout and "--save-dir" in proc.stdout


def test_pareto_front() -> None:
    xs, psnr = [1.3, 2.4, 1.4, 2.0, 1.3], [21.6, 17.5, 17.7, 17.4, 21.0]
    assert plots.pareto_front(xs, psnr, higher_y_better=True) == [0, 2, 1]
    lpips = [0.22, 0.35, 0.34, 0.36, 0.30]
    assert plots.pareto_front(xs, lpips, higher_y_better=False) == [0, 2, 1]
    assert plots.pareto_front([], []) == []


def test_plot_delta_temni(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"prompt number {i}-0_delta_TEMNI.txt"
        # as generate writes them: nan for the first step (no predecessor), then one value per step
        p.write_text("nan\n" + "\n".join(str(v) for v in np.linspace(0, 0.05 * (i + 1), 63)) + "\n\n")
        paths.append(p)
    values = plots.read_delta_temni(paths[2])
    assert len(values) == 64 and np.isnan(values[0]) and values[-1] == pytest.approx(0.15)
    out = plots.plot_delta_temni(paths, tmp_path / "curves.png")
    height, width, _ = _png_shape(out)
    assert width > 600 and height > 300
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_delta_temni([], tmp_path / "none.png")
    found = plots.find_delta_temni(tmp_path, None, tmp_path / "missing")
    assert list(found) == [tmp_path.name] and len(found[tmp_path.name]) == 3


def test_evaluate_says_each_na_reason_once_and_ends_with_the_table(tmp_path: Path) -> None:
    """Three dimensions none of whose prompts has a video, in two modes: one reason, said once, without paths; the
    output ends with the summary table (the warning about the missing logs comes last, on stderr)."""
    for mode in ("mochi_baseline", "fixed_0.1"):
        write_video(tmp_path / "vb" / "videos" / mode / "a cat-0.mp4", smooth_video(3, 16, 16))
    result = CliRunner().invoke(evaluate_command, ["--videos", str(tmp_path / "vb"), "--skip-fidelity",
                                                   "--dimensions", "human_action,color,scene"])
    assert result.exit_code == 0, result.output
    reason = "none of the videos is of a prompt in this dimension's list"
    assert result.output.count(reason) == 1, result.output
    assert "- n/a: mochi_baseline, fixed_0.1 / human_action, color, scene: " + reason in result.stdout
    assert "site-packages" not in result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    table = lines.index(next(line for line in lines if line.startswith("| Mode | Speedup |")))
    assert [line.split(" | ")[0] for line in lines[table + 2:table + 4]] == ["| mochi_baseline", "| fixed_0.1"]
    assert all(line.startswith(("| ", "|-", "- ", "Dimensions", "Videos")) for line in lines[table:]), lines[table:]
    assert "WARNING: no generation log" in result.stderr.strip().splitlines()[-1]

    # run_vbench_eval.py has no table to follow: it says the reason itself, once
    result = CliRunner().invoke(vbench_command, ["--video-dir", str(tmp_path / "vb"), "--save-dir",
                                                 str(tmp_path / "scores"), "--dimensions", "human_action,color"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(reason) == 1
    assert "- n/a: fixed_0.1, mochi_baseline / human_action, color: " + reason in result.stdout
