"""End to end on the tiny CPU model: a real batch process killed with SIGKILL and resumed, the Ray runner with a
worker that dies in the middle of a job, and the sweep. Nothing is mocked."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from genmo_teacache.batch.cli import batch_command
from genmo_teacache.batch.execute import CRASH_JOB_ENV, CRASH_MARKER_ENV
from genmo_teacache.batch.naming import prompt_stem
from genmo_teacache.files import TMP_PREFIX
from genmo_teacache.video import read_video

REPO = Path(__file__).parents[2]
PROMPTS = ["a cat playing the piano", "a red/blue ball"]  # the second one needs a safe file name
MODES = ["baseline", "fixed_0.1", "mochi_fixed_0.3"]
# smaller than the tiny model's defaults, to keep the tests short on 2 cores
SMALL = ["--num_steps", "6", "--num_frames", "7", "--width", "64", "--height", "64"]


def expected_videos() -> set[str]:
    return {f"videos/{m}/{prompt_stem(p)}-0.mp4" for m in MODES for p in PROMPTS}


def batch_cmd(model_dir: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    # the script, in genmo-teacache batch's own layout (videos/, reports/, logs/)
    return [sys.executable, str(REPO / "vbench_eval" / "batch_generate.py"), "--model_dir", str(model_dir),
            "--prompts-file", str(prompts), "--output-dir", str(out), "--modes", ",".join(MODES), "--device", "cpu",
            "--layout", "batch", *SMALL, *extra]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(extra)
    return e


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def check_outputs(out: Path) -> dict:
    """Every video once, decodable; no temporary file; the log holds exactly one entry per job."""
    videos = {p.relative_to(out).as_posix() for p in (out / "videos").rglob("*.mp4")}
    assert videos == expected_videos()
    for v in videos:
        frames = read_video(out / v)
        assert frames.shape == (7, 64, 64, 3) and frames.dtype == np.uint8
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    log = json.loads((out / "logs" / "generation_log_0-2.json").read_text())
    keys = [(r["mode"], r["prompt"], r["sample"]) for r in log["runs"]]
    assert sorted(keys) == sorted((m, p, 0) for m in MODES for p in PROMPTS)
    for r in log["runs"]:
        assert set(r) >= {"mode", "prompt", "time_seconds", "sample", "seed", "video", "timings", "cache"}
        assert set(r["timings"]) == {"text_encoding_s", "denoising_s", "decoding_s", "total_s", "warmup_s"}
        assert r["cache"]["computed_steps"] + r["cache"]["skipped_steps"] == 6
        assert r["seed"] == 0 and r["video"] in videos
        if r["mode"] == "baseline":
            assert r["cache"]["skipped_steps"] == 0
    assert json.loads((out / "prompt_names.json").read_text()) == {prompt_stem(PROMPTS[1]): PROMPTS[1]}
    return log


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_model_dir, prompts_file, tmp_path_factory) -> dict:
    """Run the batch, SIGKILL it after its second report, re-run it to completion."""
    out = tmp_path_factory.mktemp("local")
    proc = subprocess.Popen(batch_cmd(tiny_model_dir, prompts_file, out), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        reports = [p for p in (out / "reports").rglob("*.json") if not p.name.startswith(TMP_PREFIX)]
        if len(reports) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    before = {p: p.stat().st_mtime_ns for p in (out / "videos").rglob("*.mp4") if not p.name.startswith(".")}
    for p in before:  # whatever the kill left behind that looks finished is finished
        read_video(p)
    # a half-written video, as a kill during the write of the first job would leave it
    stale = out / "videos" / MODES[0] / f"{TMP_PREFIX}{prompt_stem(PROMPTS[0])}-0-k1ll3dxx.mp4"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    t0 = time.monotonic()
    rerun = subprocess.run(batch_cmd(tiny_model_dir, prompts_file, out), env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return {"out": out, "before": before, "rerun_s": time.monotonic() - t0, "stdout": rerun.stdout}


@pytest.mark.slow
def test_kill_and_resume_completes_exactly_the_missing_jobs(killed_and_resumed):
    out, before = killed_and_resumed["out"], killed_and_resumed["before"]
    log = check_outputs(out)
    assert len(before) < len(expected_videos())  # the kill really landed in the middle
    for p, mtime in before.items():  # finished videos were skipped, not regenerated
        assert p.stat().st_mtime_ns == mtime
    assert sum(1 for r in log["runs"] if r["attempt"] == 1) == len(log["runs"])
    assert "| baseline | 2 |" in killed_and_resumed["stdout"]  # the latency summary


@pytest.mark.slow
def test_ray_workers_produce_the_same_files_and_redo_a_killed_job(tiny_model_dir, prompts_file, tmp_path,
                                                                 killed_and_resumed):
    out = tmp_path / "ray"
    marker = tmp_path / "crashed"
    victim = f"fixed_0.1/{prompt_stem(PROMPTS[1])}-0"
    proc = subprocess.run(batch_cmd(tiny_model_dir, prompts_file, out, "--ray", "--num-workers", "2"),
                          env=env(**{CRASH_JOB_ENV: victim, CRASH_MARKER_ENV: str(marker)}), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert marker.exists(), "the test hook never fired: the victim job did not run on a worker"
    log = check_outputs(out)
    assert files(out) == files(killed_and_resumed["out"])
    redone = [r for r in log["runs"] if f"{r['mode']}/{prompt_stem(r['prompt'])}-{r['sample']}" == victim]
    assert len(redone) == 1 and redone[0]["attempt"] == 2
    assert {r["worker"] for r in log["runs"]} <= {"ray-0", "ray-1", "ray-2"}
    assert "died" in proc.stderr
    # same seeds and settings on another process: the same videos
    for v in expected_videos():
        a, b = read_video(out / v).astype(np.int16), read_video(killed_and_resumed["out"] / v).astype(np.int16)
        assert np.abs(a - b).max() <= 2, v


@pytest.mark.slow
def test_sweep_on_finished_videos_writes_a_table_naming_the_best(tiny_model_dir, prompts_file, tmp_path,
                                                                  killed_and_resumed):
    """The sweep resumes on the videos of the batch above (same prompts, modes and settings, so nothing is
    generated), then measures fidelity against the baseline and writes the table."""
    out = tmp_path / "sweep"
    shutil.copytree(killed_and_resumed["out"], out)
    cmd = [sys.executable, str(REPO / "vbench_eval" / "run_adaptive_threshold_experiment.py"), "--model_dir",
           str(tiny_model_dir), "--prompts-file", str(prompts_file), "--output-dir", str(out), "--num-prompts", "2",
           "--configs", f"lo={MODES[1]},hi={MODES[2]}", "--metric", "psnr", "--device", "cpu", "--baseline",
           MODES[0], "--layout", "batch", *SMALL]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "0 to generate" in proc.stderr
    rows = [line.split(",") for line in (out / "sweep_results.csv").read_text().splitlines()]
    assert rows[0][:4] == ["label", "mode", "method", "speedup"]
    assert rows[0][-4:] == ["psnr", "ssim", "lpips", "videos"]
    assert [r[:2] for r in rows[1:]] == [["baseline", "baseline"], ["lo", MODES[1]], ["hi", MODES[2]]]
    assert all(r[-1] == "2" for r in rows[1:])
    if importlib.util.find_spec("genmo_teacache.eval.fidelity") is None:
        assert "not installed" in proc.stdout
    elif "fidelity failed" not in proc.stdout:  # e.g. LPIPS weights that cannot be downloaded here
        assert "Best by psnr:" in proc.stdout
        assert all(float(r[-4]) > 0 for r in rows[2:])
        assert (out / "fidelity" / f"{MODES[1]}_vs_baseline.json").exists()
        best = json.loads((out / "best_config.json").read_text())
        assert best["label"] in ("lo", "hi") and best["modes"] == f"baseline,{best['mode']}"
        assert (out / "best_modes.txt").read_text().strip() == best["modes"]
    assert (out / "sweep_results.md").read_text() in proc.stdout


# the default stage's batch end to end (one real video, in process); the tests above are the slow stage's
def test_a_failing_job_is_reported_and_does_not_stop_the_others(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    (out / "reports").mkdir(parents=True)
    (out / "reports" / "fixed_0.3").write_text("a file where the mode's report folder should be")
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts_file),
                                             "--output-dir", str(out), "--modes", "fixed_0.3,fixed_0.5",
                                             "--end-idx", "1", "--device", "cpu", *SMALL])
    assert res.exit_code == 1, res.output
    assert f"1 job(s) failed (re-run the same command to retry them):\n  fixed_0.3/{PROMPTS[0]}-0:" in res.output
    assert [p.relative_to(out).as_posix() for p in (out / "videos").rglob("*.mp4")] == [
        f"videos/fixed_0.5/{PROMPTS[0]}-0.mp4"]
    runs = json.loads((out / "logs" / "generation_log_0-1.json").read_text())["runs"]
    assert [(r["mode"], r["prompt"]) for r in runs] == [("fixed_0.5", PROMPTS[0])]
