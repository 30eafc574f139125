"""The reference workflow's commands as written (its INSTRUCTIONS_MOCHI.md: the seed experiment's batch with
``--output-dir vbench_eval/videos --generation-seed N``, its monitoring commands, the threshold mini-experiment and
the fidelity and compare commands that follow), run from a folder holding ``vbench_eval/``, without --model_dir:
the tiny demo model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from genmo_teacache.batch.cli import REFERENCE_BATCH, REFERENCE_SWEEP, batch_command, sweep_command

REPO = Path(__file__).parents[2]
SUBSET = json.loads((REPO / "vbench_eval" / "prompts_subset.json").read_text())
SCRIPTS = ("batch_generate.py", "run_adaptive_threshold_experiment.py", "run_fidelity_metrics.py",
           "compare_results.py", "run_vbench_eval.py")


@pytest.fixture
def workdir(tmp_path: Path, demo_cache: Path, monkeypatch) -> Path:
    """A folder with ``vbench_eval/`` (the scripts) as the reference runs them, the current directory; the demo
    model is the session's tiny model."""
    (tmp_path / "vbench_eval").mkdir()
    for name in SCRIPTS:
        (tmp_path / "vbench_eval" / name).symlink_to(REPO / "vbench_eval" / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENMO_TEACACHE_CACHE", str(demo_cache))
    return tmp_path


def rows_of(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line[:5].strip().isdigit()]


def test_seed_experiment_dry_run_as_written(workdir: Path) -> None:
    # python3 vbench_eval/batch_generate_mochi_teacache.py --output-dir vbench_eval/videos --generation-seed 0
    #     --start-idx 0 --end-idx 8 [--dry-run]       (no --model_dir: the tiny demo model)
    res = CliRunner().invoke(batch_command, ["--output-dir", "vbench_eval/videos", "--generation-seed", "0",
                                             "--start-idx", "0", "--end-idx", "8", "--dry-run"],
                             default_map=REFERENCE_BATCH, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = rows_of(res.output)
    assert len(rows) == 8 * 4
    assert {r[5] for r in rows} == {"mochi_baseline", "mochi_fixed_0.04", "mochi_fixed_0.12",
                                    "mochi_adaptive_0.12_0.04"}
    # the reference layout: <output-dir>/<mode>/<prompt>-<seed>.mp4, logs beside the mode folders
    assert f"mochi_baseline/{SUBSET[0]['prompt_en']}-0.mp4" in res.output and "videos/mochi" not in res.output
    assert "log vbench_eval/videos/generation_log_0-8.json" in res.output
    assert not (workdir / "vbench_eval" / "videos").exists()


def test_seed_experiment_names_videos_by_seed(workdir: Path) -> None:
    # Scaling up: --generation-seed 1 writes {prompt}-1.mp4 beside the seed-0 videos (VBench reads -0 .. -4)
    res = CliRunner().invoke(batch_command, ["--output-dir", "vbench_eval/videos", "--generation-seed", "1",
                                             "--start-idx", "0", "--end-idx", "1", "--num-samples", "2", "--dry-run"],
                             default_map=REFERENCE_BATCH, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert {(r[4], r[-1].rsplit("-", 1)[-1]) for r in rows_of(res.output)} == {("1", "1.mp4"), ("2", "2.mp4")}


def test_threshold_experiment_dry_run_as_written(workdir: Path) -> None:
    # CUDA_VISIBLE_DEVICES=0 python3 vbench_eval/run_adaptive_threshold_experiment.py --seed 0 --gpu-id 0
    #     --total-gpus 4 [--dry-run]
    res = CliRunner().invoke(sweep_command, ["--seed", "0", "--gpu-id", "0", "--total-gpus", "4", "--dry-run"],
                             default_map=REFERENCE_SWEEP, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert {r[5].partition("=")[0] for r in rows_of(res.output)} == {
        "mochi_baseline", "mochi_adaptive_c1", "mochi_adaptive_c2", "mochi_adaptive_c3", "mochi_adaptive_c4"}
    assert f"mochi_adaptive_c2/{SUBSET[1]['prompt_en']}-0.mp4" in res.output
    assert "vbench_eval/videos_threshold_experiment/generation_log_0-2_gpu0of4.json" in res.output
    assert not (workdir / "vbench_eval" / "videos_threshold_experiment").exists()


def test_the_reference_diffusers_baseline_name_is_the_baseline_with_a_note(workdir: Path, caplog) -> None:
    # the reference's second batch: --modes mochi_diff_baseline,mochi_fixed_0.04,...
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(batch_command, ["--modes", "mochi_diff_baseline,mochi_fixed_0.04", "--end-idx", "1",
                                                 "--dry-run"], default_map=REFERENCE_BATCH, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "mochi_diff_baseline/" in res.output
    assert "here the baseline is upstream's native sampler" in caplog.text


def test_a_folder_of_the_other_layout_is_refused(workdir: Path) -> None:
    (workdir / "out" / "videos" / "baseline").mkdir(parents=True)
    (workdir / "out" / "videos" / "baseline" / "a cat-0.mp4").write_bytes(b"x")
    res = CliRunner().invoke(batch_command, ["--output-dir", "out", "--end-idx", "1", "--dry-run"],
                             default_map=REFERENCE_BATCH)
    assert res.exit_code == 2 and "--layout batch" in res.output


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(list(command), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.slow
def test_seed_experiment_runs_as_written(workdir: Path, demo_cache: Path) -> None:
    """Two seeds of the seed experiment (two modes, one prompt), its monitoring commands, then the reference's
    fidelity and compare commands on the folder it wrote."""
    gen = {"GENMO_TEACACHE_CACHE": str(demo_cache)}
    base = [sys.executable, "vbench_eval/batch_generate.py", "--output-dir", "vbench_eval/videos", "--start-idx", "0",
            "--end-idx", "1", "--modes", "mochi_baseline,mochi_fixed_0.12"]
    for seed in ("0", "1"):
        run(*base, "--generation-seed", seed, cwd=workdir, env=gen)
    videos = workdir / "vbench_eval" / "videos"
    prompt = SUBSET[0]["prompt_en"]
    assert sorted(p.name for p in (videos / "mochi_baseline").iterdir()) == [f"{prompt}-0.mp4", f"{prompt}-1.mp4"]

    # Monitoring progress (INSTRUCTIONS_MOCHI.md, step 4)
    count = run("bash", "-c", "ls -1 vbench_eval/videos/mochi_baseline/*.mp4 | wc -l", cwd=workdir)
    assert count.stdout.strip() == "2"
    logs = run("bash", "-c", "ls vbench_eval/videos/generation_log_*.json", cwd=workdir)
    assert logs.stdout.split() == ["vbench_eval/videos/generation_log_0-1.json"]
    if shutil.which("jq"):
        runs = run("bash", "-c", "cat vbench_eval/videos/generation_log_0-1.json | jq '.runs | length'", cwd=workdir)
        assert runs.stdout.strip() == "4"
    log = json.loads((videos / "generation_log_0-1.json").read_text())
    assert {(r["mode"], r["seed"]) for r in log["runs"]} == {(m, s) for m in ("mochi_baseline", "mochi_fixed_0.12")
                                                              for s in (0, 1)}

    # Step 3 and 4: fidelity and compare, as the reference calls them
    run(sys.executable, "vbench_eval/run_fidelity_metrics.py", "--video-dir", "vbench_eval/videos", "--baseline",
        "mochi_baseline", "--modes", "mochi_fixed_0.12", "--save-dir", "vbench_eval/fidelity_metrics", cwd=workdir)
    fidelity = json.loads((workdir / "vbench_eval/fidelity_metrics/mochi_fixed_0.12_vs_mochi_baseline.json")
                          .read_text())
    assert fidelity["num_videos"] == 2
    res = run(sys.executable, "vbench_eval/compare_results.py", "--fidelity-dir", "vbench_eval/fidelity_metrics",
              "--gen-log-dir", "vbench_eval/videos", "--output-json", "vbench_eval/all_comparison_results.json",
              "--modes", "mochi_baseline,mochi_fixed_0.12", cwd=workdir)
    assert "generation logs (latency, speedup): vbench_eval/videos" in res.stdout
    results = json.loads((workdir / "vbench_eval" / "all_comparison_results.json").read_text())
    assert results["mochi_fixed_0.12"]["speedup"]["end_to_end"] > 0  # both seeds, each against its own baseline
    assert results["mochi_fixed_0.12"]["timing"]["num_videos"] == 2


@pytest.mark.slow
def test_threshold_experiment_runs_and_the_reference_fidelity_command_takes_its_folder(workdir: Path,
                                                                                        demo_cache: Path) -> None:
    run(sys.executable, "vbench_eval/run_adaptive_threshold_experiment.py", "--seed", "0", "--num-prompts", "1",
        "--num_steps", "8", cwd=workdir, env={"GENMO_TEACACHE_CACHE": str(demo_cache)})
    root = workdir / "vbench_eval" / "videos_threshold_experiment"
    assert {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} >= {
        "mochi_baseline", "mochi_adaptive_c1", "mochi_adaptive_c2", "mochi_adaptive_c3", "mochi_adaptive_c4"}
    best = json.loads((root / "best_config.json").read_text())
    assert best["mode"].startswith("mochi_adaptive_c") and "=" not in best["modes"]
    run(sys.executable, "vbench_eval/run_fidelity_metrics.py", "--video-dir",
        "vbench_eval/videos_threshold_experiment", "--baseline", "mochi_baseline", "--modes",
        "mochi_adaptive_c1,mochi_adaptive_c2,mochi_adaptive_c3,mochi_adaptive_c4", "--save-dir",
        "vbench_eval/fidelity_metrics_threshold_experiment", cwd=workdir)
    assert (workdir / "vbench_eval/fidelity_metrics_threshold_experiment/all_fidelity_results.json").exists()
