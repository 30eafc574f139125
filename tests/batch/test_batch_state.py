"""Resume logic, stale temporary files, logs and summaries, on hand-made outputs (no model needed)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

from genmo_teacache.batch.execute import JobOptions, settings_dict
from genmo_teacache.batch.jobs import BatchError, build_jobs, select_prompts
from genmo_teacache.batch.naming import parse_modes
from genmo_teacache.batch.prompts import PromptEntry
from genmo_teacache.batch.runner import BatchPlan, format_job_table, prepare
from genmo_teacache.batch.state import (
    GenerationLog,
    clean_stale_tmp,
    finished_entries,
    format_summary,
    read_logs,
    record_prompt_names,
    summarize,
)
from genmo_teacache.files import TMP_PREFIX, write_json
from genmo_teacache.video import read_video, write_video


@dataclass(frozen=True)
class Settings:  # stands in for generate.GenerationSettings: only its fields matter here
    num_steps: int = 8
    width: int = 32


def make_jobs(prompts=("a cat", "a cat-0", "a/dog"), modes="baseline,fixed_0.1", samples=2):
    entries = [PromptEntry(p, i + 1) for i, p in enumerate(prompts)]
    return build_jobs(select_prompts(entries), parse_modes(modes), samples, 0, 8)


def finish(job, root, settings=Settings(), seconds=2.0, computed=8, video=True):
    entry = {"mode": job.mode, "prompt": job.prompt, "time_seconds": seconds, "sample": job.sample,
             "seed": job.seed, "video": job.video_relpath,
             "timings": {"text_encoding_s": 0.1, "denoising_s": seconds - 0.2, "decoding_s": 0.1, "total_s": seconds},
             "cache": {"computed_steps": computed, "skipped_steps": 8 - computed, "dit_calls": 2 * computed}}
    write_json(job.report_path(root), {"log_entry": entry, "job": job.to_dict(), "settings": settings_dict(settings)})
    if video:
        write_video(job.video_path(root), np.zeros((3, 16, 16, 3), np.float32))
    return entry


def test_finished_means_video_and_report(tmp_path, caplog):
    jobs = make_jobs()
    finish(jobs[0], tmp_path)
    finish(jobs[1], tmp_path, video=False)  # killed between report and video
    write_video(jobs[2].video_path(tmp_path), np.zeros((3, 16, 16, 3), np.float32))  # a video of unknown origin
    done = finished_entries(jobs, tmp_path, settings_dict(Settings()))
    assert set(done) == {0}
    assert "has no readable report" in caplog.text


def test_finished_video_with_other_settings_is_an_error(tmp_path):
    jobs = make_jobs()
    finish(jobs[0], tmp_path, settings=Settings(num_steps=64))
    with pytest.raises(BatchError, match=r"other settings.*num_steps 64 != 8"):
        finished_entries(jobs, tmp_path, settings_dict(Settings()))


def test_clean_stale_tmp_removes_only_our_jobs_files(tmp_path):
    jobs = make_jobs()
    ours = [j for j in jobs if j.prompt == "a cat"]
    theirs = [j for j in jobs if j.prompt != "a cat"]
    paths = []
    for job in jobs:
        for target in (job.video_path(tmp_path), job.report_path(tmp_path)):
            target.parent.mkdir(parents=True, exist_ok=True)
            p = target.parent / f"{TMP_PREFIX}{target.stem}-abc_123x{target.suffix}"
            p.write_text("half")
            paths.append((job, p))
    log = tmp_path / "logs" / "generation_log_0-1.json"
    log.parent.mkdir()
    (log.parent / f"{TMP_PREFIX}generation_log_0-1-zzzzzzzz.json").write_text("x")
    (log.parent / f"{TMP_PREFIX}generation_log_0-3-zzzzzzzz.json").write_text("x")
    removed = clean_stale_tmp(ours, tmp_path, log)
    assert len(removed) == 2 * len(ours) + 1
    for job, p in paths:
        assert p.exists() == (job in theirs), p  # "a cat-0-1" belongs to "a cat-0", not to "a cat" sample 0
    assert (log.parent / f"{TMP_PREFIX}generation_log_0-3-zzzzzzzz.json").exists()


def test_old_prompt_names_tmp_is_removed(tmp_path):
    fresh = tmp_path / f"{TMP_PREFIX}prompt_names-aaaaaaaa.json"
    old = tmp_path / f"{TMP_PREFIX}prompt_names-bbbbbbbb.json"
    fresh.write_text("{}")
    old.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    clean_stale_tmp([], tmp_path)
    assert fresh.exists() and not old.exists()


def test_prompt_names_record_only_mapped_prompts(tmp_path):
    jobs = make_jobs()
    path = record_prompt_names(tmp_path, jobs)
    names = json.loads(path.read_text())
    assert list(names.values()) == ["a/dog"]
    mtime = path.stat().st_mtime_ns
    record_prompt_names(tmp_path, jobs)
    assert path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten


def test_generation_log_is_in_job_order_and_rebuilt_on_resume(tmp_path):
    jobs = make_jobs()
    plan = BatchPlan(JobOptions(str(tmp_path), Settings()), jobs, 0, 3)
    for job in (jobs[5], jobs[1]):
        finish(job, tmp_path)
    (tmp_path / "videos" / jobs[2].mode).mkdir(parents=True, exist_ok=True)
    stale = tmp_path / "videos" / jobs[2].mode / f"{TMP_PREFIX}{jobs[2].stem}-{jobs[2].sample}-k1ll3d00.mp4"
    stale.write_bytes(b"\0" * 10)
    session = prepare(plan)
    session.close()
    log, pending = session.log, session.pending
    assert not stale.exists()
    assert [j.index for j in pending] == [j.index for j in jobs if j.index not in (1, 5)]
    data = json.loads(plan.log_path.read_text())
    assert plan.log_path.name == "generation_log_0-3.json"
    assert [(r["mode"], r["prompt"], r["sample"]) for r in data["runs"]] == [
        (jobs[i].mode, jobs[i].prompt, jobs[i].sample) for i in (1, 5)]
    assert data["settings"] == {"num_steps": 8, "width": 32}
    log.add(jobs[0].index, finish(jobs[0], tmp_path))
    runs = json.loads(plan.log_path.read_text())["runs"]
    assert [r["video"] for r in runs] == [jobs[i].video_relpath for i in (0, 1, 5)]
    for r in runs:
        assert {"mode", "prompt", "time_seconds", "sample", "seed", "video", "timings", "cache"} <= set(r)
    assert read_video(tmp_path / runs[0]["video"]).shape == (3, 16, 16, 3)
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))


def test_split_plans_cover_every_job_once(tmp_path):
    jobs = make_jobs(samples=1)
    owned = []
    for k in range(3):
        plan = BatchPlan(JobOptions(str(tmp_path), Settings()), jobs, 0, 3, gpu_id=k, total_gpus=3)
        owned += [j.index for j in plan.jobs]
        assert plan.log_path.name == f"generation_log_0-3_gpu{k}of3.json"
        table = format_job_table(plan)
        assert "<- --gpu-id" in table
    assert sorted(owned) == [j.index for j in jobs]
    assert not any(tmp_path.iterdir())  # planning and the table write nothing


def test_summary_and_read_logs(tmp_path):
    jobs = make_jobs(prompts=("a", "b"), modes="mochi_baseline,fixed_0.1", samples=1)
    log = GenerationLog(tmp_path / "logs" / "generation_log_0-2.json", jobs)
    for job in jobs:
        fast = job.mode == "fixed_0.1"
        log.add(job.index, finish(job, tmp_path, seconds=1.0 if fast else 2.0, computed=4 if fast else 8))
    GenerationLog(tmp_path / "logs" / "generation_log_0-1.json", jobs[:2]).add(
        0, json.loads(jobs[0].report_path(tmp_path).read_text())["log_entry"])
    runs = read_logs(tmp_path)
    assert len(runs) == 4  # the job in both logs counts once
    rows = {r["mode"]: r for r in summarize(runs, ["mochi_baseline", "fixed_0.1"])}
    assert rows["mochi_baseline"]["speedup"] == 1.0
    assert rows["fixed_0.1"]["speedup"] == pytest.approx(2.0)
    assert rows["fixed_0.1"]["computed_fraction"] == pytest.approx(0.5)
    assert rows["fixed_0.1"]["denoising_speedup"] == pytest.approx(1.8 / 0.8)
    # 8 of 16 forwards: at most 2x; the denoising's 2.25x is noise, and the table says so instead of showing it
    assert rows["fixed_0.1"]["ideal_speedup"] == 2.0 and rows["fixed_0.1"]["noise"] == ["denoising_speedup"]
    assert rows["mochi_baseline"]["noise"] == [] and rows["mochi_baseline"]["skipped_nothing"]
    assert not rows["fixed_0.1"]["skipped_nothing"]
    table = format_summary(list(rows.values()))
    assert "| fixed_0.1 | 2 | 1.0 ± 0.0 | 2.00x | noise (2.25x > ideal 2.00x) | 2.00x | 50% |" in table
    assert "noise: a measured speedup above the ideal" in table


def test_an_unreadable_log_is_moved_aside_and_rebuilt(tmp_path, caplog):
    jobs = make_jobs()
    plan = BatchPlan(JobOptions(str(tmp_path), Settings()), jobs, 0, 3)
    entry = finish(jobs[0], tmp_path)
    plan.log_path.parent.mkdir(parents=True)
    plan.log_path.write_text('{"runs": [{"mode": "other", "prompt": "a"')  # cut short by hand
    session = prepare(plan)
    session.close()
    assert json.loads(plan.log_path.read_text())["runs"] == [entry]
    kept = plan.log_path.with_name(plan.log_path.name + ".unreadable")
    assert kept.read_text().startswith('{"runs": [{"mode": "other"') and "cannot be read: moved to" in caplog.text


def test_the_reference_layout_resumes_cleans_and_logs_in_its_own_folders(tmp_path):
    """<output-dir>/<mode>/<prompt>-<seed>.mp4, reports in .reports/, logs beside the mode folders."""
    from genmo_teacache.output_layout import REFERENCE

    entries = [PromptEntry("a cat", 1)]
    jobs = build_jobs(select_prompts(entries), parse_modes("mochi_baseline"), 2, 3, 8, REFERENCE)
    assert [(j.sample, j.seed, j.video_relpath) for j in jobs] == [(3, 3, "mochi_baseline/a cat-3.mp4"),
                                                                    (4, 4, "mochi_baseline/a cat-4.mp4")]
    assert jobs[0].report_relpath == ".reports/mochi_baseline/a cat-3.json"
    plan = BatchPlan(JobOptions(str(tmp_path), Settings()), jobs, 0, 1)
    assert plan.log_path == tmp_path / "generation_log_0-1.json"
    entry = finish(jobs[0], tmp_path)
    stale = tmp_path / "mochi_baseline" / f"{TMP_PREFIX}a cat-4-abcd1234.mp4"
    stale.write_bytes(b"half")
    session = prepare(plan)
    session.close()
    assert not stale.exists() and [j.index for j in session.pending] == [1]
    assert read_logs(tmp_path) == [entry]
