"""The Ray runner: one worker actor per GPU (or per group of ``gpus_per_worker`` GPUs, or per CPU slot with
``--device cpu``), each loading the model once (a worker of k > 1 GPUs loads the context-parallel pipeline,
whose rank actors hold the GPUs, one each); the driver serves a shared queue longest job first as workers
free up, writes the generation log after every finished job and shows one progress bar.

Speed options (a mode's ``@SPEED``): a worker holds one pipeline at a time. It starts with the options that have
the most queued work per worker already holding them, takes the longest queued job of its own options, and only
when none is left switches (releasing its pipeline, loading the other) to the options with the most queued work
per worker holding them. So a worker loads a set of options again only for a retried job.

Ownership: a job's video and report are written only by the worker running it, and a job runs on one worker at
a time; the log and ``prompt_names.json`` are written only by the driver, which also holds the batch's locks
(``batch.locks``). On a multi-node cluster ``--output-dir`` must be on a file system every node sees.

Background writing: each worker has one writer thread (``execute.JobWriter``); ``run`` generates a job, waits for
the previous job's write, starts this job's write and returns the outcomes of the writes that completed. The driver
counts a job finished only when its write's outcome arrives (``flush`` collects the last one of an idle worker).

Failures: a worker that dies (``RayActorError``: process killed, segfault, out of memory) has its jobs (the one
generating and the one being written) checked on disk: finished ones are logged, the others put back in the queue,
and the worker is replaced by a new one; a job that raises, or whose write fails, is put back too. A job is tried
at most ``1 + max_retries`` times, then reported failed. The driver connects to ``ray_address`` (after checking
that something answers there) or starts a local cluster, and shuts down only what it started.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from genmo_teacache.batch.execute import (
    CRASH_JOB_ENV,
    CRASH_MARKER_ENV,
    JobOptions,
    JobWriter,
    PipelineHolder,
    PipelineSpec,
    WriteOutcome,
    generate_job,
)
from genmo_teacache.batch.jobs import BatchError, Job, longest_first
from genmo_teacache.batch.runner import BatchPlan, BatchResult, Session, prepare, progress_bar
from genmo_teacache.batch.state import clean_stale_tmp
from genmo_teacache.cliutils import setup_logging
from genmo_teacache.parallel import check_ray_address
from genmo_teacache.speed import SpeedOptions

logger = logging.getLogger(__name__)


class BatchWorker:
    """A Ray actor holding one loaded pipeline (wrapped with ``ray.remote`` at run time)."""

    def __init__(self, name: str, spec: PipelineSpec, opts: JobOptions, log_level: int = logging.INFO,
                 speed: SpeedOptions | None = None):
        setup_logging(log_level <= logging.DEBUG)
        self.name, self.opts = name, opts
        self.writer = JobWriter(opts)
        self.pipes = PipelineHolder(spec)
        self.pipes.get(speed or opts.speed)

    def ready(self) -> dict[str, Any]:
        import ray

        return {"name": self.name, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, job: Job, attempt: int) -> list[WriteOutcome]:
        """Generate ``job``, hand it to the writer; the outcomes of the writes that completed meanwhile."""
        self.pipes.get(self.opts.speed_of(job))  # another pipeline if the job's speed options differ
        out = generate_job(self.pipes.pipe, job, self.opts, worker=self.name, attempt=attempt)
        return self.writer.submit(out)

    def flush(self) -> list[WriteOutcome]:
        """Wait for the pending write; its outcome."""
        return self.writer.flush()


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local cluster
    num_workers: int | None = None  # None: every GPU of the cluster (one per CPU slot requested with cpu)
    gpus_per_worker: int = 1
    cpu: bool = False  # CPU workers (num_gpus=0, num_cpus=1 each)
    max_retries: int = 2


def _crash_env() -> dict[str, str]:
    return {k: os.environ[k] for k in (CRASH_JOB_ENV, CRASH_MARKER_ENV) if k in os.environ}


def _init_ray(opts: RayOptions) -> bool:
    """Connect or start a cluster; return whether we started (and so must shut down) the connection."""
    import ray

    if ray.is_initialized():
        return False
    if opts.address:  # an existing cluster (or a ray:// client address): its own settings apply
        try:
            check_ray_address(opts.address)  # ray.init would retry forever where nothing listens
        except ConnectionError as e:
            raise BatchError(str(e)) from None
        try:
            ray.init(address=opts.address)
        except (ConnectionError, RuntimeError) as e:
            raise BatchError(
                f"cannot connect to the Ray cluster at {opts.address}: {e}. Check the address; a cluster with token "
                "authentication (Ray's default) also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN) on this machine"
            ) from None
        return True
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if opts.cpu:  # enough logical CPUs for the CPU workers (and their CPU ranks) even on a small machine
        ranks = opts.gpus_per_worker if opts.gpus_per_worker > 1 else 0
        kwargs["num_cpus"] = max(os.cpu_count() or 1, (opts.num_workers or 1) * (1 + ranks))
    ray.init(**kwargs)
    return True


def _worker_count(opts: RayOptions) -> int:
    import ray

    if opts.cpu:
        return opts.num_workers or 1
    gpus = int(ray.cluster_resources().get("GPU", 0))
    groups = gpus // opts.gpus_per_worker
    if groups < 1:
        raise BatchError(f"the Ray cluster has {gpus} GPU(s), fewer than --gpus-per-worker {opts.gpus_per_worker}: "
                         "use --device cpu for CPU workers, or a cluster with GPUs")
    if opts.num_workers and opts.num_workers > groups:
        logger.warning("--num-workers %d > %d GPU group(s) in the cluster: the extra workers wait for GPUs",
                       opts.num_workers, groups)
    return opts.num_workers or groups


def pick_speed(queue: list[Job], speed_of: Callable[[Job], SpeedOptions],
               holders: list[SpeedOptions]) -> SpeedOptions | None:
    """The speed options a worker without work of its own options should load: those with the most queued cost
    per worker holding them (``holders``: the options of the other workers), on a tie those fewer workers hold,
    then those of the longest queued job; None for an empty queue."""
    cost: dict[SpeedOptions, float] = {}
    for job in queue:  # longest first: max keeps the first of equals, the options of the longer job
        cost[speed_of(job)] = cost.get(speed_of(job), 0.0) + job.cost
    if not cost:
        return None
    return max(cost, key=lambda s: (cost[s] / (1 + holders.count(s)), -holders.count(s)))


def next_job(queue: list[Job], speed_of: Callable[[Job], SpeedOptions], mine: SpeedOptions | None,
             holders: list[SpeedOptions]) -> int | None:
    """Index in ``queue`` (longest first) of the job a free worker holding ``mine`` takes: the longest of its
    own options, else the longest of :func:`pick_speed`'s (a reload); None for an empty queue."""
    for i, job in enumerate(queue):
        if speed_of(job) == mine:
            return i
    other = pick_speed(queue, speed_of, holders)
    return next((i for i, job in enumerate(queue) if speed_of(job) == other), None)


def run_ray(plan: BatchPlan, spec: PipelineSpec, opts: RayOptions) -> BatchResult:
    """Run this invocation's pending jobs on Ray workers (see the module docstring)."""
    t0 = time.perf_counter()
    session = prepare(plan)
    result = BatchResult(len(plan.jobs), len(plan.jobs) - len(session.pending), log_path=plan.log_path)
    try:
        if session.pending:
            _run_ray(session, spec, opts, result)
        session.collect_elsewhere(result)
    finally:
        session.close()
    result.elapsed_s = time.perf_counter() - t0
    return result


def _run_ray(session: Session, spec: PipelineSpec, opts: RayOptions, result: BatchResult) -> None:
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    plan = session.plan
    started = _init_ray(opts)
    remote_cls = ray.remote(BatchWorker)
    # With k > 1 GPUs per worker the worker's context-parallel pipeline starts its own rank actors, which claim
    # the GPUs (one each); the worker itself then must not hold any, or the ranks would wait forever.
    gpus = 0 if opts.cpu or opts.gpus_per_worker > 1 else 1
    resources = dict(num_cpus=1, num_gpus=gpus)
    env = _crash_env()
    actor_opts: dict[str, Any] = dict(max_restarts=0, max_concurrency=1, **resources)
    if env:
        actor_opts["runtime_env"] = {"env_vars": env}
    log_level = logging.getLogger("genmo_teacache").getEffectiveLevel()
    job_opts = plan.options

    workers: dict[str, Any] = {}
    starting: dict[Any, str] = {}  # ready ref -> worker name
    running: dict[Any, tuple[str, Job | None]] = {}  # run ref -> (worker, job); flush ref -> (worker, None)
    unconfirmed: dict[str, dict[int, Job]] = {}  # worker -> jobs given to it whose write has not been reported
    orphaned: list[Job] = []  # jobs of workers that died: their temporary files are cleaned once all are done
    idle: list[str] = []
    attempts: dict[int, int] = {}
    queue = longest_first(session.pending)
    holds: dict[str, SpeedOptions] = {}  # worker -> the speed options of its pipeline (once its job starts)
    counter = 0
    start_errors: list[str] = []

    def start_worker() -> None:
        nonlocal counter
        name = f"ray-{counter}"
        counter += 1
        speed = pick_speed(queue, job_opts.speed_of, list(holds.values())) or job_opts.speed
        actor = remote_cls.options(**actor_opts).remote(name, spec, job_opts, log_level, speed)
        workers[name] = actor
        holds[name] = speed
        unconfirmed[name] = {}
        starting[actor.ready.remote()] = name

    def retire(name: str) -> None:
        actor = workers.pop(name, None)
        holds.pop(name, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)

    def give_back(job: Job, why: str) -> None:
        if attempts[job.index] > opts.max_retries:
            logger.error("%s failed %d time(s), giving up: %s", job.id, attempts[job.index], why)
            session.jobs.release(job)
            result.failed.append((job, why))
        else:
            logger.warning("%s: %s; retrying (attempt %d of %d)", job.id, why, attempts[job.index] + 1,
                           opts.max_retries + 1)
            queue.append(job)
            queue.sort(key=lambda j: (-j.cost, j.index))

    def handle(name: str, outcomes: list[WriteOutcome], bar: Any) -> None:
        for o in outcomes:
            unconfirmed[name].pop(o.job.index, None)
            if o.error is not None:
                give_back(o.job, o.error)
            elif session.outcome(o, result):
                bar.set_postfix_str(o.job.id[-60:], refresh=False)
                bar.update()

    def worker_lost(name: str, why: str, bar: Any) -> None:
        nonlocal replacements_left
        retire(name)
        lost = list(unconfirmed.pop(name, {}).values())
        orphaned.extend(lost)
        done = plan.finished(lost)  # a write may have completed before the worker died
        for job in lost:
            if job.index in done:
                session.jobs.release(job)
                if session.record(job, done[job.index], result):
                    bar.update()
            else:
                clean_stale_tmp([job], plan.root)  # the dead worker's half-written files; nobody else writes them
                give_back(job, why)
        if replacements_left > 0:
            replacements_left -= 1
            start_worker()

    def dispatch() -> None:
        while idle and queue:
            name = idle[0]
            others = [s for n, s in holds.items() if n != name]
            i = next_job(queue, job_opts.speed_of, holds.get(name), others)
            job = queue.pop(i or 0)
            if attempts.get(job.index) is None and not session.claim(job, result):
                continue
            idle.pop(0)
            holds[name] = job_opts.speed_of(job)
            attempts[job.index] = attempts.get(job.index, 0) + 1
            unconfirmed[name][job.index] = job
            running[workers[name].run.remote(job, attempts[job.index])] = (name, job)
        for name in [n for n in idle if unconfirmed[n]]:  # nothing to generate: collect their last writes
            idle.remove(name)
            running[workers[name].flush.remote()] = (name, None)

    replacements_left = 0
    try:
        n = _worker_count(opts)
        replacements_left = max(n, 1) * opts.max_retries
        logger.info("starting %d Ray worker(s) (%s each) for %d job(s)", n,
                    "1 CPU" if opts.cpu else f"{opts.gpus_per_worker} GPU(s)", len(queue))
        for _ in range(n):
            start_worker()
        with logging_redirect_tqdm(), progress_bar(result.total, result.already_done, "batch (ray)") as bar:
            while True:
                dispatch()  # afterwards, no running call means that no write is unconfirmed either
                if not running and (not queue or not starting):
                    why = "no Ray worker left" + (f" (last start error: {start_errors[-1]})" if start_errors else "")
                    for job in queue:
                        session.jobs.release(job)
                        result.failed.append((job, why))
                    break
                [ref], _ = ray.wait(list(running) + list(starting), num_returns=1)
                if ref in starting:
                    name = starting.pop(ref)
                    try:
                        info = ray.get(ref)
                    except RayError as e:
                        start_errors.append(f"{type(e).__name__}: {e}")
                        logger.error("worker %s failed to start: %s", name, e)
                        retire(name)
                        if not idle and not running and not starting and not result.generated:
                            raise BatchError(f"no Ray worker could load the model: {e}") from None
                        continue
                    logger.info("worker %s ready: pid %s, GPUs %s", name, info["pid"], info["gpus"] or "none")
                    idle.append(name)
                    continue
                name, job = running.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except RayActorError as e:  # the worker process is gone: redo its jobs elsewhere, replace it
                    worker_lost(name, f"worker {name} died ({type(e).__name__})", bar)
                    continue
                except RayTaskError as e:  # the job's generation raised; the worker is fine
                    idle.append(name)
                    if job is not None:
                        unconfirmed[name].pop(job.index, None)
                        give_back(job, f"{type(e.cause).__name__ if e.cause else 'error'}: {e.cause or e}")
                    continue
                except RayError as e:  # anything else from Ray: do not trust this worker any more
                    worker_lost(name, f"worker {name} lost ({type(e).__name__}: {e})", bar)
                    continue
                handle(name, outcomes, bar)
                idle.append(name)
        # a dead worker's encoder (ffmpeg, a child process) can outlive it for a moment and leave a temporary file
        # after the cleaning above: with every worker of this batch done, whatever remains of those jobs is stale
        clean_stale_tmp(orphaned, plan.root)
    finally:
        for name in list(workers):
            retire(name)
        if started:
            ray.shutdown()
