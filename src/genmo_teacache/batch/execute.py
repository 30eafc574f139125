"""One job on a loaded pipeline: generate, write the sidecar report, then the video (the video is the marker of a
finished job), and return the job's log entry. Used alike by the local runner and by the Ray workers.

Fault injection for tests: if ``GENMO_TEACACHE_TEST_CRASH_JOB`` names a job id (``<mode>/<stem>-<i>``) and the
file named by ``GENMO_TEACACHE_TEST_CRASH_MARKER`` does not exist yet, the process creates that file and kills
itself with SIGKILL when it starts that job, i.e. the first time only, wherever the job runs.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from genmo_teacache.batch.jobs import Job
from genmo_teacache.batch.state import jsonable
from genmo_teacache.video import write_json, write_video

logger = logging.getLogger(__name__)

CRASH_JOB_ENV = "GENMO_TEACACHE_TEST_CRASH_JOB"
CRASH_MARKER_ENV = "GENMO_TEACACHE_TEST_CRASH_MARKER"
TIMING_KEYS = ("text_encoding_s", "denoising_s", "decoding_s", "total_s")


def settings_dict(settings: Any) -> dict[str, Any]:
    """The generation settings as a JSON-able dict (what a finished video is checked against on resume)."""
    if is_dataclass(settings) and not isinstance(settings, type):
        return jsonable(asdict(settings))
    return jsonable(dict(vars(settings)))


@dataclass(frozen=True)
class PipelineSpec:
    """How a worker loads its pipeline: the keyword arguments of ``generate.load_pipeline``."""

    model_dir: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        from genmo_teacache.generate import load_pipeline

        t0 = time.perf_counter()
        pipe = load_pipeline(self.model_dir, **self.kwargs)
        logger.info("pipeline loaded in %.1f s (pid %d)", time.perf_counter() - t0, os.getpid())
        return pipe


def maybe_crash(job: Job) -> None:
    """The test hook described in the module docstring."""
    target, marker = os.environ.get(CRASH_JOB_ENV), os.environ.get(CRASH_MARKER_ENV)
    if not target or not marker or target != job.id:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    logger.warning("test hook: process %d kills itself on job %s", os.getpid(), job.id)
    os.kill(os.getpid(), signal.SIGKILL)


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return len(value)
    return None


def log_entry(job: Job, result: Any, *, worker: str, attempt: int) -> dict[str, Any]:
    """The job's entry of the generation log (reference keys first: mode, prompt, time_seconds)."""
    timings = {k: float(result.timings[k]) for k in TIMING_KEYS if k in result.timings}
    report = result.report or {}
    return {
        "mode": job.mode,
        "prompt": job.prompt,
        "time_seconds": timings.get("total_s"),
        "sample": job.sample,
        "seed": job.seed,
        "video": job.video_relpath,
        "timings": timings,
        "cache": {"computed_steps": _count(report.get("computed_steps")),
                  "skipped_steps": _count(report.get("skipped_steps")),
                  "dit_calls": _count(report.get("dit_calls"))},
        "peak_memory_gb": result.peak_memory_gb,
        "worker": worker,
        "attempt": attempt,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished_unix": time.time(),  # sub-second, for throughput measurements
    }


def run_job(pipe: Any, job: Job, settings: Any, root: str | Path, *, worker: str = "local",
            attempt: int = 1) -> dict[str, Any]:
    """Generate one video and write its report and video atomically (report first); return its log entry."""
    from genmo_teacache.generate import generate

    maybe_crash(job)
    root = Path(root)
    result = generate(pipe, prompt=job.prompt, cache=job.cache, seed=job.seed, settings=settings, progress=False)
    entry = log_entry(job, result, worker=worker, attempt=attempt)
    write_json(job.report_path(root), {
        "log_entry": entry,
        "job": job.to_dict(),
        "settings": settings_dict(settings),
        "generation": jsonable(result.report),
    })
    write_video(job.video_path(root), result.frames)
    logger.info("%s: %.1f s (%s computed steps)", job.id, entry["time_seconds"] or float("nan"),
                entry["cache"]["computed_steps"])
    return entry
