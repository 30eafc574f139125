"""What is finished, what is stale, and the generation log.

A job is finished when its video exists, decodes as it did when it was written, and was made with the same
prompt, seed, settings, cache config and weights as this run asks for. A job encodes its video under a temporary
name, checks that it decodes to every frame, writes its sidecar report (with the video's size and SHA-256 and the
run's fingerprint, ``batch.fingerprint``) and renames the video last, each atomically (``files.atomic_path``), so a
finished video always has its report, and a killed run leaves at most a report without a video (the job is simply
redone) and ``.tmp-*`` files (removed by the next run, for jobs whose lock it holds, so that concurrent batches
never delete each other's files in flight). A video that no longer matches its report (truncated, emptied,
replaced) is generated again.

The generation log is derived from the reports: after every finished job the log is rewritten atomically with
the log entries of all finished jobs of this invocation's job set, in job order, followed by the entries of other
jobs that earlier invocations with the same log name wrote (e.g. other modes), which are kept as they were.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genmo_teacache.batch.fingerprint import differences, job_fingerprint
from genmo_teacache.batch.jobs import BatchError, Job
from genmo_teacache.batch.locks import shared_file_lock
from genmo_teacache.caches import is_baseline
from genmo_teacache.files import TMP_PREFIX, file_identity, write_json
from genmo_teacache.output_layout import LAYOUTS, LOG_GLOB, PROMPT_NAMES
from genmo_teacache.speed import MODE_SEPARATOR
from genmo_teacache.speedup import (
    denoising_seconds,
    forward_ratio,
    ideal_speedup,
    is_noise,
    noise_text,
    ratio,
    time_seconds,
)
from genmo_teacache.video import VideoWriteError, verify_video

logger = logging.getLogger(__name__)

_RANDOM_PART = re.compile(r"[a-z0-9_]+")  # tempfile's random names: never a "-"
STALE_AFTER_S = 300.0  # a shared file's temporary copy older than this is left over from a killed run


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...), for comparisons with stored files."""
    return json.loads(json.dumps(value, default=str))


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_PATH_KEYS = ("source", "mag_source")  # where a calibration file was read from: not what it contains


def _config_for_comparison(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _config_for_comparison(v) for k, v in config.items() if k not in _PATH_KEYS}
    return config


def _mismatch(job: Job, report: dict[str, Any], settings: dict[str, Any],
              fingerprint: dict[str, Any] | None) -> list[str]:
    """What differs between a finished job's report and this run (empty if nothing)."""
    rjob = report.get("job", {})
    if rjob.get("prompt") != job.prompt:
        return [f"prompt {rjob.get('prompt')!r} != {job.prompt!r}"]
    if rjob.get("seed") != job.seed:
        return [f"seed {rjob.get('seed')} != {job.seed}"]
    diff = differences(report.get("settings", {}), settings)
    old_config = rjob.get("config")
    if isinstance(old_config, dict):
        new = jsonable(_config_for_comparison(job.cache.to_dict()))
        if differences(_config_for_comparison(old_config), new):
            diff.append("cache_config (" + ", ".join(differences(_config_for_comparison(old_config), new)) + ")")
    old_fp = report.get("fingerprint")
    if fingerprint is not None and isinstance(old_fp, dict):
        diff += differences(old_fp, jsonable(fingerprint))
    return diff


def video_intact(job: Job, root: Path, report: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """None if the job's video is the one its report recorded (size and SHA-256; a report of an older version
    without them: the video decodes to the expected frame count); else what is wrong with it."""
    video = job.video_path(root)
    recorded = report.get("video_file")
    try:
        if isinstance(recorded, dict):
            actual = file_identity(video)
            if actual != {k: recorded.get(k) for k in actual}:
                return (f"{actual['bytes']} bytes, not the {recorded.get('bytes')} bytes (SHA-256 "
                        f"{str(recorded.get('sha256'))[:12]}...) that were verified when it was written")
            return None
        frames = settings.get("num_frames")
        verify_video(video, frames if isinstance(frames, int) else None)
    except (OSError, VideoWriteError) as e:
        return str(e)
    return None


def finished_entries(jobs: Iterable[Job], root: Path, settings: dict[str, Any],
                     fingerprint: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """job index -> log entry of every finished job (intact video and its report).

    A video that is incomplete or does not match its report (truncated, emptied, replaced) is generated again.
    Raises BatchError if a finished video was made with another prompt, seed, generation settings, cache config
    or (``fingerprint``, the run's: a mode's ``@SPEED`` replaces its speed options) other weights or pipeline
    options, since a resumed evaluation must not mix them: use another ``--output-dir`` or delete the mode's videos
    and reports.
    """
    settings = jsonable(settings)
    done: dict[int, dict[str, Any]] = {}
    conflicts: list[tuple[Job, list[str]]] = []
    unchecked = 0
    for job in jobs:
        video = job.video_path(root)
        if not video.exists():
            continue
        report = read_json(job.report_path(root))
        if not isinstance(report, dict) or "log_entry" not in report:
            logger.warning("%s has no readable report %s: it is generated again", video, job.report_relpath)
            continue
        problem = _mismatch(job, report, settings, job_fingerprint(fingerprint, job.speed))
        if problem:
            conflicts.append((job, problem))
            continue
        broken = video_intact(job, root, report, settings)
        if broken:
            logger.warning("%s is not a finished video (%s): it is generated again", video, broken)
            continue
        unchecked += fingerprint is not None and not isinstance(report.get("fingerprint"), dict)
        done[job.index] = report["log_entry"]
    if unchecked:
        logger.warning("%d finished video(s) in %s were made by an older version that did not record the weights "
                       "and pipeline options: they are kept without checking those", unchecked, root)
    if conflicts:
        fields = sorted({p.split(" ")[0] for _, problem in conflicts for p in problem})
        job, problem = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        folders = ", ".join(sorted({j.layout.mode_folders(j.mode) for j, _ in conflicts}))
        raise BatchError(
            f"{len(conflicts)} finished video(s) in {root} were generated with other settings or weights "
            f"(differing: {', '.join(fields)}), e.g. {job.video_relpath}: {'; '.join(problem)}{more}. Resuming "
            f"would mix them in one evaluation: use another --output-dir, or delete {folders} to generate them "
            f"again."
        )
    return done


def _tmp_base(name: str, suffix: str) -> str | None:
    """The target stem of a temporary file ``.tmp-<stem>-<random><suffix>``, or None."""
    if not (name.startswith(TMP_PREFIX) and name.endswith(suffix)):
        return None
    base, sep, rand = name[len(TMP_PREFIX): len(name) - len(suffix)].rpartition("-")
    return base if sep and _RANDOM_PART.fullmatch(rand) else None


def _remove_tmp(folder: Path, suffix: str, stems: set[str], removed: list[Path]) -> None:
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if _tmp_base(p.name, suffix) in stems:
            p.unlink(missing_ok=True)
            removed.append(p)


def clean_stale_tmp(jobs: Iterable[Job], root: Path, log_path: Path | None = None) -> list[Path]:
    """Remove the temporary files of these jobs (and of this log) that a killed run left behind.

    Only files that belong to the given jobs are touched: other processes may be writing their own.
    """
    folders: dict[tuple[Path, str], set[str]] = {}
    for job in jobs:
        for relpath in (job.video_relpath, job.report_relpath):
            path = root / relpath
            folders.setdefault((path.parent, path.suffix), set()).add(path.stem)
    removed: list[Path] = []
    for (folder, suffix), stems in folders.items():
        _remove_tmp(folder, suffix, stems, removed)
    if log_path is not None:
        _remove_tmp(log_path.parent, ".json", {log_path.stem}, removed)
    # prompt_names.json is shared by every process on this output dir: only an old temporary copy is stale
    now = time.time()
    for p in root.glob(TMP_PREFIX + Path(PROMPT_NAMES).stem + "-*.json") if root.is_dir() else ():
        try:
            if now - p.stat().st_mtime > STALE_AFTER_S:
                p.unlink(missing_ok=True)
                removed.append(p)
        except OSError:
            pass
    if removed:
        logger.info("removed %d stale temporary file(s) of an earlier run", len(removed))
    return removed


def record_prompt_names(root: Path, jobs: Iterable[Job]) -> Path:
    """Add the mapped prompts of these jobs to ``prompt_names.json`` ({file stem: prompt}); written only when it
    changes (it is always present after a run, ``{}`` when no prompt needed mapping)."""
    path = root / PROMPT_NAMES
    mapped = {job.stem: job.prompt for job in jobs if job.stem != job.prompt}
    with shared_file_lock(root, Path(PROMPT_NAMES).stem):  # other batches on this folder add theirs
        old = read_json(path)
        names = {**(old if isinstance(old, dict) else {}), **mapped}
        if names != old:
            write_json(path, dict(sorted(names.items())))
    return path


def _run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return run.get("mode"), run.get("prompt"), run.get("sample", 0)


class GenerationLog:
    """``generation_log_<start>-<end>[...].json`` (in ``logs/`` of the batch layout): ``{"runs": [entry, ...],
    ...}``, one entry per finished job of this job set, in job order, then the entries of other jobs (other modes)
    that the file held before, as they were; rewritten atomically after every change."""

    def __init__(self, path: Path, jobs: list[Job], meta: dict[str, Any] | None = None):
        self.path = path
        self.order = {job.index: i for i, job in enumerate(jobs)}
        self.meta = dict(meta or {})
        self.entries: dict[int, dict[str, Any]] = {}
        self.others: list[dict[str, Any]] = []
        own = {(job.mode, job.prompt, job.sample) for job in jobs}
        old = read_json(path)
        if path.exists() and not (isinstance(old, dict) and isinstance(old.get("runs"), list)):
            kept = path.with_name(path.name + ".unreadable")
            path.replace(kept)  # nothing lost: the entries of other jobs it may hold stay readable by hand
            logger.warning("%s cannot be read: moved to %s; this run's jobs are logged again from their reports (the "
                           "entries of other jobs, e.g. other modes, come back when their batch runs again)", path,
                           kept.name)
        runs = old.get("runs") if isinstance(old, dict) else None
        for run in runs if isinstance(runs, list) else []:
            if isinstance(run, dict) and _run_key(run) not in own:
                self.others.append(run)
        if self.others:
            logger.info("%s: keeping the %d entries of jobs this run does not own (e.g. other modes)", path.name,
                        len(self.others))

    def add(self, job_index: int, entry: dict[str, Any], write: bool = True) -> None:
        self.entries[job_index] = entry
        if write:
            self.write()

    def write(self) -> None:
        runs = [self.entries[i] for i in sorted(self.entries, key=self.order.__getitem__)] + self.others
        write_json(self.path, {"runs": runs, **self.meta, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_logs(root: Path) -> list[dict[str, Any]]:
    """Every run of every ``generation_log_*.json`` of ``root`` (in either layout), one per (mode, prompt, sample): a
    job logged by several overlapping invocations counts once (the most recently written file wins)."""
    runs: dict[tuple[Any, ...], dict[str, Any]] = {}
    folders = dict.fromkeys(layout.logs_dir(root) for layout in LAYOUTS.values())
    files = sorted((p for folder in folders for p in folder.glob(LOG_GLOB)), key=lambda p: p.stat().st_mtime)
    for path in files:
        data = read_json(path)
        for run in data.get("runs", []) if isinstance(data, dict) else []:
            runs[(run.get("mode"), run.get("prompt"), run.get("sample", 0))] = run
    return list(runs.values())


def summarize(runs: list[dict[str, Any]], modes: list[str] | None = None,
              baseline: str | None = None) -> list[dict[str, Any]]:
    """Per mode: videos, mean/std latency, end-to-end and denoising speedup over the baseline on the videos both
    have, share of computed steps, the ideal speedup of the forwards it skipped (``ideal_speedup``, nan when not
    known), whether it skipped nothing (``skipped_nothing``) and which of its speedups are above that ideal
    (``noise``: ["speedup", "denoising_speedup"] or fewer; see :mod:`genmo_teacache.speedup`).

    ``baseline``: the mode to compare with; default the first mode whose cache is off (e.g. ``mochi_baseline``),
    preferring one with the run's own speed options (``baseline`` over ``baseline@fast``).
    """
    by_mode: dict[str, dict[tuple[Any, Any], dict[str, Any]]] = {}
    for run in runs:
        by_mode.setdefault(run["mode"], {})[(run["prompt"], run.get("sample", 0))] = run
    order = [m for m in (modes or sorted(by_mode)) if m in by_mode]
    if baseline is None:
        uncached = [m for m in order if is_baseline(m.partition(MODE_SEPARATOR)[0])]
        baseline = next((m for m in uncached if MODE_SEPARATOR not in m), uncached[0] if uncached else None)
    base = by_mode.get(baseline, {})
    rows = []
    for mode in order:
        mruns = by_mode[mode]
        times = [r["time_seconds"] for r in mruns.values()]
        computed = [r.get("cache", {}).get("computed_steps") for r in mruns.values()]
        skipped = [r.get("cache", {}).get("skipped_steps") for r in mruns.values()]
        fractions = [c / (c + s) for c, s in zip(computed, skipped, strict=True)
                     if isinstance(c, int | float) and isinstance(s, int | float) and c + s > 0]
        pairs = [(base[k], mruns[k]) for k in sorted(set(mruns) & set(base))]
        ideal, forwards = ideal_speedup(pairs), forward_ratio(pairs)
        fraction = statistics.fmean(fractions) if fractions else math.nan
        row = {
            "mode": mode,
            "videos": len(mruns),
            "latency_s": statistics.fmean(times),
            "latency_std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
            "speedup": _nan(ratio(pairs, time_seconds)),
            "denoising_speedup": _nan(ratio(pairs, denoising_seconds)),
            "computed_fraction": fraction,
            "ideal_speedup": _nan(ideal),
            "skipped_nothing": forwards <= 1.0 if forwards is not None else fraction >= 1.0,
        }
        row["noise"] = [k for k in ("speedup", "denoising_speedup") if is_noise(row[k], ideal)]
        rows.append(row)
    return rows


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def speedup_cell(row: dict[str, Any], key: str) -> str:
    """A speedup of a :func:`summarize` row as the tables show it: ``2.10x``, the noise flag, or empty."""
    if math.isnan(row[key]):
        return ""
    return noise_text(row[key], row["ideal_speedup"]) if key in row.get("noise", ()) else f"{row[key]:.2f}x"


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows (a speedup above the ideal of the forwards skipped reads
    "noise")."""
    lines = ["| mode | videos | latency (s) | speedup | denoising speedup | ideal | computed steps |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed, dspeed = (speedup_cell(r, k) for k in ("speedup", "denoising_speedup"))
        ideal = "" if math.isnan(r["ideal_speedup"]) else f"{r['ideal_speedup']:.2f}x"
        frac = "" if math.isnan(r["computed_fraction"]) else f"{100 * r['computed_fraction']:.0f}%"
        lines.append(f"| {r['mode']} | {r['videos']} | {r['latency_s']:.1f} ± {r['latency_std_s']:.1f} | {speed} "
                     f"| {dspeed} | {ideal} | {frac} |")
    if any(r["noise"] for r in rows):
        lines.append("\nnoise: a measured speedup above the ideal of the DiT forwards the mode skipped (the most it "
                     "can be) is noise, not a result: the times varied more than what was skipped saved.")
    return "\n".join(lines)
