"""Generation timings from the batch generator's logs, and speedups against a named baseline.

Logs are ``generation_log_<start>-<end>.json`` files (and the legacy ``generation_log.json``) shaped
``{"runs": [{"mode", "prompt", "sample", "time_seconds", "timings": {"denoising_s", ...}, "cache": {...}}, ...]}``.
Several logs are merged; a video that appears in more than one log (a resumed or repeated run) counts once, with
the entry of the most recently written log (as the batch generator's own summary does).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genmo_teacache.output_layout import BATCH, LOG_GLOBS
from genmo_teacache.speedup import denoising_seconds, ideal_speedup, is_noise, ratio, time_seconds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModeTiming:
    """Per-mode averages over the videos of the logs (seconds)."""

    avg_time: float
    total_time: float
    num_videos: int
    avg_denoising_time: float | None = None
    num_denoising: int = 0
    avg_computed_steps: float | None = None
    avg_skipped_steps: float | None = None
    # (prompt, sample) -> its log entry: for speedups on the videos two modes share
    runs: dict[Any, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Reference keys (avg_time, total_time, num_videos) plus the optional ones that have a value."""
        out: dict[str, Any] = {"avg_time": self.avg_time, "total_time": self.total_time, "num_videos": self.num_videos}
        if self.avg_denoising_time is not None:
            out["avg_denoising_time"] = self.avg_denoising_time
            out["num_denoising"] = self.num_denoising
        if self.avg_computed_steps is not None:
            out["avg_computed_steps"] = self.avg_computed_steps
        if self.avg_skipped_steps is not None:
            out["avg_skipped_steps"] = self.avg_skipped_steps
        return out


def find_logs(log_dir: str | os.PathLike) -> list[Path]:
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    found = {p for pattern in LOG_GLOBS for p in log_dir.glob(pattern) if not p.name.startswith(".")}
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def log_dir_candidates(path: str | os.PathLike) -> list[Path]:
    """Where the logs of a batch run may be, given their folder, the batch's ``--output-dir`` or its ``videos/``
    folder (the reference workflow passes the videos folder, which holds them in its layout): ``path``,
    ``path/logs``, ``path/../logs``."""
    path = Path(path)
    out: list[Path] = []
    for candidate in (path, path / BATCH.logs, path.parent / BATCH.logs):
        if candidate not in out:
            out.append(candidate)
    return out


def find_log_dir(*paths: str | os.PathLike) -> Path | None:
    """The first of the :func:`log_dir_candidates` of ``paths`` that holds a generation log, or None."""
    for path in paths:
        for candidate in log_dir_candidates(path):
            if find_logs(candidate):
                return candidate
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def load_timings(log_dir: str | os.PathLike) -> dict[str, ModeTiming]:
    """``{mode: ModeTiming}`` from every generation log in ``log_dir`` (empty if there is none)."""
    logs = find_logs(log_dir)
    if not logs:
        logger.info("no generation logs (generation_log_*.json) in %s: latency and speedup are left out", log_dir)
        return {}
    runs: dict[Any, dict[str, Any]] = {}
    for path in logs:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping unreadable generation log %s: %s", path, err)
            continue
        for i, run in enumerate(data.get("runs", [])):
            if "mode" not in run or not isinstance(run.get("time_seconds"), int | float):
                continue
            if "prompt" in run:
                key: Any = (run["mode"], run["prompt"], run.get("sample", 0))
            else:
                key = (run["mode"], str(path), i)
            runs[key] = run
    by_mode: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for key, run in runs.items():
        by_mode.setdefault(run["mode"], []).append((key[1:], run))
    logger.info("timings of %d videos from %d log file(s) in %s", len(runs), len(logs), log_dir)

    result = {}
    for mode, keyed in by_mode.items():
        mode_runs = [r for _, r in keyed]
        times = [float(r["time_seconds"]) for r in mode_runs]
        denoise = [float(r["timings"]["denoising_s"]) for r in mode_runs
                   if isinstance(r.get("timings"), dict) and r["timings"].get("denoising_s") is not None]
        computed = [float(r["cache"]["computed_steps"]) for r in mode_runs
                    if isinstance(r.get("cache"), dict) and r["cache"].get("computed_steps") is not None]
        skipped = [float(r["cache"]["skipped_steps"]) for r in mode_runs
                   if isinstance(r.get("cache"), dict) and r["cache"].get("skipped_steps") is not None]
        result[mode] = ModeTiming(
            avg_time=sum(times) / len(times), total_time=sum(times), num_videos=len(times),
            avg_denoising_time=_mean(denoise), num_denoising=len(denoise),
            avg_computed_steps=_mean(computed), avg_skipped_steps=_mean(skipped),
            runs=dict(keyed),
        )
    return result


def shared_videos(timings: dict[str, ModeTiming], baseline: str, mode: str) -> tuple[int, int, int]:
    """(videos both logged, videos of the mode, videos of the baseline)."""
    base, other = timings[baseline].runs, timings[mode].runs
    return len(set(base) & set(other)), len(other), len(base)


def speedups(timings: dict[str, ModeTiming], baseline: str) -> dict[str, dict[str, float]]:
    """``{mode: {"end_to_end": x, "denoising": y, "ideal": i}}`` relative to ``baseline``, on the videos (prompt,
    sample) both logged: summed baseline time over summed mode time. ``ideal``: the most a speedup can be, from the
    DiT forwards skipped (:mod:`genmo_teacache.speedup`; absent where the logs do not say). A speedup above it is
    noise and goes under ``end_to_end_noise`` / ``denoising_noise`` instead (never shown as a result). A key is absent
    where they share no timed video. Empty when the baseline has no timing (speedups are never taken against a
    guessed mode)."""
    base = timings.get(baseline)
    if base is None:
        if timings:
            logger.debug("baseline %r has no timing in the generation logs (modes with timings: %s): "
                         "no speedups", baseline, ", ".join(sorted(timings)))
        return {}
    out: dict[str, dict[str, float]] = {}
    for mode, t in timings.items():
        pairs = [(base.runs[k], t.runs[k]) for k in sorted(set(base.runs) & set(t.runs))]
        ideal = ideal_speedup(pairs)
        entry = {} if ideal is None else {"ideal": ideal}
        for kind, get in (("end_to_end", time_seconds), ("denoising", denoising_seconds)):
            value = ratio(pairs, get)
            if value is not None:
                entry[f"{kind}_noise" if is_noise(value, ideal) else kind] = value
        out[mode] = entry
    return out
