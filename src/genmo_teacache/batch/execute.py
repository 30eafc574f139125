"""One job on a loaded pipeline: generate, then write the outputs (video encoded and verified under a temporary
name, the sidecar report, then the video renamed: the video is the marker of a finished job), and return the job's
log entry. Used alike by the local runner and by the Ray workers.

Writing can run in the background (:class:`JobWriter`): one writer thread per process encodes a video while the
next one generates; at most one write is pending, so at most two videos' frames are in memory. A job counts as
finished only when its write has returned (video verified and renamed); a write that fails is that job's failure.

Fault injection for tests: if ``GENMO_TEACACHE_TEST_CRASH_JOB`` names a job id (``<mode>/<stem>-<i>``) and the
file named by ``GENMO_TEACACHE_TEST_CRASH_MARKER`` does not exist yet, the process creates that file and kills
itself with SIGKILL when it starts that job, i.e. the first time only, wherever the job runs. With the suffix
``@write`` (``<mode>/<stem>-<i>@write``) it does so in the middle of the job's write instead: after the report is
written and before the video is renamed into place.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genmo_teacache.batch.fingerprint import job_fingerprint
from genmo_teacache.batch.jobs import Job, job_speed
from genmo_teacache.batch.state import jsonable
from genmo_teacache.files import atomic_path, file_identity, write_json
from genmo_teacache.speed import SpeedOptions
from genmo_teacache.video import encode_video

logger = logging.getLogger(__name__)

CRASH_JOB_ENV = "GENMO_TEACACHE_TEST_CRASH_JOB"
CRASH_MARKER_ENV = "GENMO_TEACACHE_TEST_CRASH_MARKER"
# total_s (the job's latency, its log entry's time_seconds) leaves out warmup_s: what the pipeline's first call of
# an input shape cost beyond the work (compile, lazy CUDA initialisation), reported apart
TIMING_KEYS = ("text_encoding_s", "denoising_s", "decoding_s", "total_s", "warmup_s")


def settings_dict(settings: Any) -> dict[str, Any]:
    """The generation settings as a JSON-able dict (what a finished video is checked against on resume)."""
    if is_dataclass(settings) and not isinstance(settings, type):
        return jsonable(asdict(settings))
    return jsonable(dict(vars(settings)))


@dataclass(frozen=True)
class PipelineSpec:
    """How a worker loads its pipeline: the keyword arguments of ``generate.load_pipeline`` (``speed``: its
    :class:`~genmo_teacache.speed.SpeedOptions`)."""

    model_dir: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def speed(self) -> SpeedOptions:
        return self.kwargs.get("speed") or SpeedOptions()

    def with_speed(self, options: SpeedOptions) -> PipelineSpec:
        """The same pipeline with these speed options instead of its own."""
        return PipelineSpec(self.model_dir, {**self.kwargs, "speed": options})

    def load(self) -> Any:
        from genmo_teacache.generate import load_pipeline

        t0 = time.perf_counter()
        pipe = load_pipeline(self.model_dir, **self.kwargs)
        logger.info("pipeline (speed options %s) loaded in %.1f s (pid %d)", self.speed.spec(),
                    time.perf_counter() - t0, os.getpid())
        return pipe


class PipelineHolder:
    """One loaded pipeline at a time, for the speed options of the job at hand: :meth:`get` loads the pipeline
    of other options only after releasing the one it holds (two full pipelines never fit in memory together)."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.pipe: Any = None
        self.speed: SpeedOptions | None = None

    def get(self, speed: SpeedOptions) -> Any:
        if self.pipe is None or speed != self.speed:
            if self.speed is not None:
                logger.info("releasing the pipeline of speed options %s for %s", self.speed.spec(), speed.spec())
            self.release()
            self.pipe = self.spec.with_speed(speed).load()
            self.speed = speed
        return self.pipe

    def release(self) -> None:
        pipe, self.pipe, self.speed = self.pipe, None, None
        if pipe is None:
            return
        close = getattr(pipe, "close", None)  # the multi-GPU pipeline's rank actors
        if callable(close):
            close()
        del pipe
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class JobOptions:
    """What every job of a batch shares besides the pipeline: where its outputs go and how they are made."""

    root: str
    settings: Any  # generate.GenerationSettings
    fingerprint: dict[str, Any] | None = None  # batch.fingerprint: recorded in every report
    model_paths: dict[str, Any] | None = None  # where the weights were (information only)
    observe_only: bool = False  # --delta_temni_plot: no skipping, the indicator of every step recorded
    background_write: bool = True
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # the run's; a mode's @SPEED replaces them

    def speed_of(self, job: Job) -> SpeedOptions:
        return job_speed(job, self.speed)


def delta_temni_base(root: str | Path, job: Job) -> Path:
    """The path whose stem the job's delta-TEMNI files take (``generate.write_delta_temni`` adds the suffixes):
    ``logs/delta_temni/<mode>/<stem>-<i>`` in the batch layout, where ``genmo-teacache evaluate`` finds them (one
    plot per mode)."""
    return Path(root) / job.layout.trace_relpath(job.mode, f"{job.stem}-{job.sample}")


def maybe_crash(job: Job, phase: str = "") -> None:
    """The test hook described in the module docstring (``phase``: "" at the job's start, "write" in its write)."""
    target, marker = os.environ.get(CRASH_JOB_ENV), os.environ.get(CRASH_MARKER_ENV)
    if not target or not marker or target != job.id + (f"@{phase}" if phase else ""):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    logger.warning("test hook: process %d kills itself on job %s %s", os.getpid(), job.id, phase)
    os.kill(os.getpid(), signal.SIGKILL)


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return len(value)
    return None


def speed_record(options: SpeedOptions) -> dict[str, Any]:
    """A report's ``speed``: the spec of the options a video was made with (key ``spec``), and every field."""
    return {"spec": options.spec(), **asdict(options)}


def log_entry(job: Job, result: Any, *, worker: str, attempt: int,
              speed: SpeedOptions | None = None) -> dict[str, Any]:
    """The job's entry of the generation log (reference keys first: mode, prompt, time_seconds); ``speed``: the
    speed options it ran with (their spec goes in the entry)."""
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
        "speed": (speed or SpeedOptions()).spec(),
        "worker": worker,
        "attempt": attempt,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished_unix": time.time(),  # sub-second, for throughput measurements
    }


@dataclass
class JobOutput:
    """A generated job, not yet written."""

    job: Job
    attempt: int
    frames: np.ndarray
    report: dict[str, Any]  # the generation report (per-step trace)
    entry: dict[str, Any]  # its log entry


def generate_job(pipe: Any, job: Job, opts: JobOptions, *, worker: str = "local", attempt: int = 1) -> JobOutput:
    """Generate one video (nothing written yet)."""
    from genmo_teacache.generate import generate

    maybe_crash(job)
    # observe-only records TeaCache's indicator on every step whatever the mode (the sampler measures it)
    result = generate(pipe, prompt=job.prompt, cache=job.cache, seed=job.seed, settings=opts.settings,
                      progress=False, observe_only=opts.observe_only)
    entry = log_entry(job, result, worker=worker, attempt=attempt, speed=opts.speed_of(job))
    return JobOutput(job, attempt, result.frames, result.report, entry)


def write_job(out: JobOutput, opts: JobOptions) -> dict[str, Any]:
    """Write a generated job: the video encoded and verified under a temporary name, the report (with the video's
    size and SHA-256), then the video renamed into place; the delta-TEMNI trace first if asked. Returns the log
    entry; raises (e.g. VideoWriteError, OSError) if anything could not be written."""
    from genmo_teacache.generate import write_delta_temni

    job, root = out.job, Path(opts.root)
    if opts.observe_only:
        write_delta_temni(delta_temni_base(root, job), out.report)
    t0 = time.perf_counter()
    with atomic_path(job.video_path(root)) as tmp:
        encode_video(tmp, out.frames)
        entry = {**out.entry, "write_s": time.perf_counter() - t0}
        write_json(job.report_path(root), {
            "log_entry": entry,
            "job": job.to_dict(),
            "settings": settings_dict(opts.settings),
            "speed": speed_record(opts.speed_of(job)),
            "fingerprint": job_fingerprint(opts.fingerprint, job.speed),
            "model_paths": opts.model_paths,
            "video_file": file_identity(tmp),
            "generation": jsonable(out.report),
        })
        maybe_crash(job, "write")
    warmup = entry["timings"].get("warmup_s") or 0.0
    logger.info("%s: %.1f s (%s computed steps)%s", job.id, entry["time_seconds"] or float("nan"),
                entry["cache"]["computed_steps"], f"; warm-up {warmup:.1f} s apart" if warmup else "")
    return entry


def run_job(pipe: Any, job: Job, opts: JobOptions, *, worker: str = "local", attempt: int = 1) -> dict[str, Any]:
    """Generate one video and write its outputs; return its log entry."""
    return write_job(generate_job(pipe, job, opts, worker=worker, attempt=attempt), opts)


@dataclass
class WriteOutcome:
    """A finished write: the job's log entry, or why it failed."""

    job: Job
    attempt: int
    entry: dict[str, Any] | None = None
    error: str | None = None


class JobWriter:
    """Writes generated jobs, in a background thread (``background``) or right away.

    :meth:`submit` first waits for the pending write, so at most one write runs while the caller generates the
    next video, and returns the outcomes of the writes that completed; :meth:`flush` waits for the pending one.
    Errors of a write become its outcome's ``error`` (the job failed), never an exception of the caller.
    """

    def __init__(self, opts: JobOptions):
        self.opts = opts
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="video-writer") if opts.background_write else None
        self._pending: Future[WriteOutcome] | None = None

    def _write(self, out: JobOutput) -> WriteOutcome:
        try:
            return WriteOutcome(out.job, out.attempt, entry=write_job(out, self.opts))
        except Exception as e:  # a full disk, an unwritable folder, ...: this job failed
            logger.error("%s: writing its outputs failed: %s: %s", out.job.id, type(e).__name__, e)
            return WriteOutcome(out.job, out.attempt, error=f"writing its outputs failed: {type(e).__name__}: {e}")

    def submit(self, out: JobOutput) -> list[WriteOutcome]:
        done = self.flush()
        if self._pool is None:
            return done + [self._write(out)]
        self._pending = self._pool.submit(self._write, out)
        return done

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def flush(self) -> list[WriteOutcome]:
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return [pending.result()]

    def close(self) -> list[WriteOutcome]:
        """Wait for the pending write, stop the thread; the last outcomes."""
        try:
            return self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
