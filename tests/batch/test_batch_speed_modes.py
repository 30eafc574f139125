"""Speed options per mode (``baseline@bf16``, ``fixed_0.1@fast``): parsing, grouping, scheduling, fingerprints,
the checks before any model loads, and a real batch on the tiny CPU model that ``evaluate`` then compares."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from genmo_teacache import speed
from genmo_teacache.batch.cli import batch_command
from genmo_teacache.batch.fingerprint import differences, job_fingerprint, pipeline_fingerprint
from genmo_teacache.batch.jobs import build_jobs, by_speed, job_speed, longest_first, select_prompts, speed_groups
from genmo_teacache.batch.naming import parse_modes, stem_is_safe
from genmo_teacache.batch.prompts import PromptEntry
from genmo_teacache.batch.ray_runner import next_job, pick_speed
from genmo_teacache.batch.state import summarize
from genmo_teacache.batch.sweep import parse_candidates
from genmo_teacache.caches import parse_mode
from genmo_teacache.eval.layout import pick_baseline
from genmo_teacache.speed import PRESETS, SpeedOptions, parse_speed, speed_from_options

DEFAULT, BF16 = SpeedOptions(), parse_speed("bf16")
MODES = "baseline,baseline@bf16,fixed_0.1,fixed_0.1@bf16"


def speed_of(job) -> SpeedOptions:
    return job_speed(job, DEFAULT)


def jobs_of(modes: str, prompts: int = 2) -> list:
    return build_jobs(select_prompts([PromptEntry(f"p{i}", i + 1) for i in range(prompts)]), parse_modes(modes),
                      1, 0, 64)


def test_a_mode_name_carries_its_speed_options_and_keeps_its_folder_name(caplog):
    modes = parse_modes("baseline,baseline@bf16,mochi_fixed_0.1@fast,fixed_0.1@compile+bf16")
    assert [m for m, _ in modes] == ["baseline", "baseline@bf16", "mochi_fixed_0.1@fast", "fixed_0.1@compile+bf16"]
    assert [c for _, c in modes] == [parse_mode(m) for m in ("baseline", "baseline", "fixed_0.1", "fixed_0.1")]
    assert "same cache config" not in caplog.text  # baseline@bf16 is not a repeat of baseline
    assert all(stem_is_safe(m) for m, _ in modes)
    jobs = build_jobs(select_prompts([PromptEntry("a cat", 1)]), modes, 1, 0, 64)
    assert [j.speed for j in jobs] == [None, BF16, PRESETS["fast"], SpeedOptions(dit_dtype="bf16", compile_dit=True)]
    assert jobs[2].cache == parse_mode("fixed_0.1")
    assert jobs[2].video_relpath == "videos/mochi_fixed_0.1@fast/a cat-0.mp4"
    assert job_speed(jobs[0], BF16) == BF16 and job_speed(jobs[1], DEFAULT) == BF16  # the run's, or the mode's own
    with pytest.raises(ValueError, match=r"mode 'baseline@turbo'.*unknown token 'turbo'"):
        parse_modes("baseline,baseline@turbo")


def test_jobs_of_one_set_of_speed_options_are_taken_together():
    jobs = jobs_of(MODES)  # prompt-major: p0 baseline, p0 baseline@bf16, p0 fixed_0.1, ...
    ordered = by_speed(jobs, DEFAULT)
    assert [j.mode for j in ordered] == ["baseline", "fixed_0.1"] * 2 + ["baseline@bf16", "fixed_0.1@bf16"] * 2
    assert [j.index for j in ordered[:4]] == sorted(j.index for j in ordered[:4])  # job order within a group
    assert list(speed_groups(jobs, DEFAULT)) == [DEFAULT, BF16]
    assert list(speed_groups(jobs, BF16)) == [BF16]  # run in bf16: one pipeline serves every mode


def test_ray_workers_keep_their_options_while_jobs_of_them_are_queued():
    queue = longest_first(jobs_of(MODES, prompts=3))
    assert speed_of(queue[0]) == DEFAULT and speed_of(queue[1]) == BF16  # baselines first, interleaved
    # a worker holding bf16 takes the longest bf16 job, though a default one is first in the queue
    assert queue[next_job(queue, speed_of, BF16, [DEFAULT])] is queue[1]
    # workers start on the options with the most queued work per worker already holding them
    assert pick_speed(queue, speed_of, []) == DEFAULT and pick_speed(queue, speed_of, [DEFAULT]) == BF16
    # with no bf16 job left, a bf16 worker switches to the default ones
    rest = [j for j in queue if speed_of(j) == DEFAULT]
    assert next_job(rest, speed_of, BF16, [DEFAULT]) == 0 and next_job([], speed_of, BF16, []) is None


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_ray_scheduling_reloads_far_less_than_a_queue_blind_to_options(workers):
    """The driver's dispatch (next_job) on a simulated cluster: each free worker takes its next job; count
    pipeline loads (the first of each worker and every switch)."""
    jobs = jobs_of("baseline,baseline@bf16,fixed_0.1,baseline@sdpa_math", prompts=8)

    def simulate(aware: bool) -> int:
        queue, holds, busy_until = longest_first(jobs), {}, dict.fromkeys(range(workers), 0.0)
        for w in range(workers):
            holds[w] = pick_speed(queue, speed_of, list(holds.values())) if aware else speed_of(queue[0])
        loads, done = workers, []
        while queue:
            w = min(busy_until, key=lambda k: (busy_until[k], k))
            others = [s for k, s in holds.items() if k != w]
            job = queue.pop(next_job(queue, speed_of, holds[w], others) if aware else 0)
            loads += speed_of(job) != holds[w]
            holds[w] = speed_of(job)
            busy_until[w] += job.cost
            done.append(job.index)
        assert sorted(done) == [j.index for j in jobs]
        return loads

    groups = len(speed_groups(jobs, DEFAULT))
    loads = simulate(aware=True)
    assert loads <= workers * groups and loads < simulate(aware=False)
    if workers == 1:
        assert loads == groups


def test_the_fingerprint_records_the_speed_options_a_video_is_made_with(tiny_model_dir):
    fp, _ = pipeline_fingerprint(tiny_model_dir, {"speed": speed_from_options({"speed_preset": "fast",
                                                                               "compile_dit": False})}, gpu=False)
    assert (fp["speed"], fp["dit_dtype"], fp["attention_kernel"], fp["compile_dit"]) == ("fast", "bf16", "fa3_fp8",
                                                                                        True)
    plain, _ = pipeline_fingerprint(tiny_model_dir, {"speed": speed_from_options({"dit_dtype": "fp32"})}, gpu=False)
    assert plain["speed"] == "default" and job_fingerprint(plain, None) == plain
    mode_bf16 = job_fingerprint(plain, BF16)
    assert differences(plain, mode_bf16) == ["speed 'default' != 'bf16'", "dit_dtype 'fp32' != 'bf16'"]
    assert job_fingerprint(fp, DEFAULT) == plain  # a mode's options replace the run's, nothing else changes


def test_the_baseline_is_the_one_without_speed_options():
    assert pick_baseline(["baseline@bf16", "baseline", "fixed_0.1"], "here") == "baseline"
    assert pick_baseline(["baseline@fast", "fixed_0.1"], "here") == "baseline@fast"
    with pytest.raises(ValueError, match="several"):
        pick_baseline(["baseline", "mochi_baseline", "baseline@fast"], "here")
    runs = [{"mode": m, "prompt": "p", "sample": 0, "time_seconds": t, "timings": {"denoising_s": t}}
            for m, t in (("baseline@bf16", 5.0), ("baseline", 10.0))]
    rows = {r["mode"]: r for r in summarize(runs, ["baseline@bf16", "baseline"])}
    assert rows["baseline@bf16"]["speedup"] == 2.0 and rows["baseline"]["speedup"] == 1.0


def test_sweep_candidates_take_speed_options():
    assert parse_candidates("fast=baseline@fast,fixed_0.1@bf16") == [("fast", "baseline@fast"),
                                                                    ("fixed_0.1@bf16", "fixed_0.1@bf16")]
    with pytest.raises(ValueError, match="is the baseline"):
        parse_candidates("baseline")
    with pytest.raises(ValueError, match="fixed_0.1@turbo"):
        parse_candidates("fixed_0.1@turbo")


@pytest.fixture
def prompts(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\na dog\n")
    return p


def test_the_dry_run_names_the_pipelines_in_their_order(tiny_model_dir, prompts, tmp_path):
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts),
                                             "--output-dir", str(tmp_path / "out"), "--modes",
                                             "baseline@bf16,baseline,fixed_0.1", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "speed options: 2 pipeline(s), loaded one at a time, in this order: bf16 (2 job(s)), " \
           "default (4 job(s))" in res.output
    assert "videos/baseline@bf16/a cat-0.mp4" in res.output


def test_options_that_cannot_run_are_refused_before_any_model_loads(tiny_model_dir, prompts, tmp_path, monkeypatch):
    monkeypatch.setitem(speed._PACKAGES, "fa3", ("genmo_teacache_no_such_module", "pip install fa3-fwd"))
    out = tmp_path / "out"
    common = ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out),
              "--device", "cpu"]
    res = CliRunner().invoke(batch_command, [*common, "--modes", "baseline,baseline@fa3"])
    assert res.exit_code == 2, res.output
    assert "modes baseline@fa3 (speed options fa3)" in res.output and "needs a CUDA GPU" in res.output
    assert "Timing load" not in res.output and not (out / "videos").exists()
    res = CliRunner().invoke(batch_command, [*common, "--modes", "baseline,baseline@bf16", "--num_gpus", "2"])
    assert res.exit_code == 2 and "modes baseline@bf16: speed options bf16 need the whole DiT" in res.output
    res = CliRunner().invoke(batch_command, [*common, "--modes", "baseline", "--speed_preset", "turbo"])
    assert res.exit_code == 2 and "unknown token 'turbo'" in res.output


# -- a real batch: two modes that differ only in their speed options ------------------------------------------
SMALL = ["--num_steps", "4", "--num_frames", "7", "--width", "32", "--height", "32"]


def loads(caplog) -> list[str]:
    """The speed specs of the pipelines loaded, in order (PipelineSpec.load's log line)."""
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline (speed options ")]
    caplog.clear()
    return [m.split()[3].rstrip(")") for m in found]


@pytest.mark.slow
def test_a_batch_with_speed_options_per_mode_resumes_and_evaluates(tiny_model_dir, prompts, tmp_path, caplog):
    from genmo_teacache.eval.cli import evaluate_command

    caplog.set_level(logging.INFO, logger="genmo_teacache.batch.execute")
    out = tmp_path / "out"
    args = ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out),
            "--modes", "baseline,baseline@bf16", "--device", "cpu", *SMALL]
    res = CliRunner().invoke(batch_command, args)
    assert res.exit_code == 0, res.output
    assert loads(caplog) == ["default", "bf16"]  # once per set of options, though the jobs alternate
    assert sorted(p.relative_to(out).as_posix() for p in (out / "videos").rglob("*.mp4")) == [
        f"videos/{m}/{p}-0.mp4" for m in ("baseline", "baseline@bf16") for p in ("a cat", "a dog")]
    for mode, spec, dtype in (("baseline", "default", "fp32"), ("baseline@bf16", "bf16", "bf16")):
        report = json.loads((out / "reports" / mode / "a dog-0.json").read_text())
        assert report["speed"] == {"spec": spec, "dit_dtype": dtype, "sdpa_backend": "auto", "compile_dit": False,
                                   "attention_kernel": "sdpa", "fp8_linear": False,
                                   "fp8_mm": False, "sparse_attention": "none"}
        assert (report["fingerprint"]["speed"], report["fingerprint"]["dit_dtype"]) == (spec, dtype)
        assert report["log_entry"]["speed"] == spec
    runs = json.loads((out / "logs" / "generation_log_0-2.json").read_text())["runs"]
    assert sorted((r["mode"], r["speed"]) for r in runs) == [("baseline", "default")] * 2 + [
        ("baseline@bf16", "bf16")] * 2

    res = CliRunner().invoke(batch_command, args)  # resumed: nothing to do, no pipeline loaded
    assert res.exit_code == 0 and "0 video(s) generated, 4 done before" in res.output, res.output
    assert loads(caplog) == []

    # the run's own options changed: the videos of the mode without @ were made with others
    res = CliRunner().invoke(batch_command, [*args, "--speed_preset", "bf16"])
    assert res.exit_code == 1 and "speed 'default' != 'bf16'" in res.output, res.output
    assert "delete videos/baseline/ and reports/baseline/ to" in res.output and "baseline@bf16/" not in res.output
    assert loads(caplog) == []

    res = CliRunner().invoke(evaluate_command, ["--videos", str(out), "--skip-vbench", "--device", "cpu",
                                                "--no-grids", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "baseline baseline; modes: baseline@bf16" in res.output
    fidelity = json.loads((out / "results" / "fidelity_metrics" / "baseline@bf16_vs_baseline.json").read_text())
    assert fidelity["num_videos"] == 2
    with open(out / "results" / "summary_table.csv", newline="") as f:
        assert [row[0] for row in csv.reader(f)][1:] == ["baseline", "baseline@bf16"]
