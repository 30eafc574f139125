"""The batch plan (which jobs this invocation owns and where its log goes), resume preparation, the dry-run
table, and the local runner (one process, the model loaded once)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genmo_teacache.batch.execute import PipelineSpec, run_job, settings_dict
from genmo_teacache.batch.jobs import LOGS, Job, log_name, share_of
from genmo_teacache.batch.state import GenerationLog, clean_stale_tmp, finished_entries, record_prompt_names

logger = logging.getLogger(__name__)


@dataclass
class BatchPlan:
    """Everything a runner needs: the job list, this invocation's share of it, settings and output locations."""

    root: Path
    all_jobs: list[Job]  # every job of the selected prompts x modes x samples
    settings: Any  # generate.GenerationSettings
    start_idx: int
    end_idx: int  # exclusive
    gpu_id: int | None = None
    total_gpus: int = 1
    shares: dict[int, int] = field(default_factory=dict)  # job index -> share (when split by hand)

    def __post_init__(self) -> None:
        if self.total_gpus > 1 and not self.shares:
            self.shares = share_of(self.all_jobs, self.total_gpus)

    @property
    def jobs(self) -> list[Job]:
        """The jobs this invocation owns (all of them unless split with --gpu-id/--total-gpus)."""
        if self.gpu_id is None or self.total_gpus <= 1:
            return list(self.all_jobs)
        return [j for j in self.all_jobs if self.shares[j.index] == self.gpu_id]

    @property
    def log_path(self) -> Path:
        return self.root / LOGS / log_name(self.start_idx, self.end_idx, self.gpu_id, self.total_gpus)

    @property
    def settings_dict(self) -> dict[str, Any]:
        return settings_dict(self.settings)

    def log_meta(self) -> dict[str, Any]:
        return {"start_idx": self.start_idx, "end_idx": self.end_idx, "gpu_id": self.gpu_id,
                "total_gpus": self.total_gpus, "settings": self.settings_dict}


@dataclass
class BatchResult:
    total: int  # jobs of this invocation
    already_done: int  # finished before this run
    generated: int = 0
    failed: list[tuple[Job, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def prepare(plan: BatchPlan) -> tuple[GenerationLog, list[Job]]:
    """Remove stale temporary files of our jobs, record prompt names, find finished jobs, (re)write the log with
    them; return the log and the jobs still to do (job order)."""
    jobs = plan.jobs
    plan.root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(jobs, plan.root, plan.log_path)
    done = finished_entries(jobs, plan.root, plan.settings_dict)
    record_prompt_names(plan.root, jobs)
    log = GenerationLog(plan.log_path, jobs, plan.log_meta())
    for index, entry in done.items():
        log.add(index, entry, write=False)
    log.write()
    pending = [j for j in jobs if j.index not in done]
    logger.info("%d job(s): %d finished earlier, %d to generate; log %s", len(jobs), len(done), len(pending),
                plan.log_path)
    return log, pending


def progress_bar(total: int, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, unit="video", desc=desc, dynamic_ncols=True, smoothing=0.1)


def run_local(plan: BatchPlan, spec: PipelineSpec) -> BatchResult:
    """Run this invocation's pending jobs in job order in this process, loading the model once."""
    t0 = time.perf_counter()
    log, pending = prepare(plan)
    result = BatchResult(len(plan.jobs), len(plan.jobs) - len(pending), log_path=plan.log_path)
    if not pending:
        return result
    pipe = spec.load()
    with logging_redirect_tqdm(), progress_bar(result.total, result.already_done, "batch") as bar:
        for job in pending:
            bar.set_postfix_str(job.id[-60:], refresh=False)
            try:
                entry = run_job(pipe, job, plan.settings, plan.root)
            except Exception as e:  # one bad job (e.g. out of memory) must not stop the others
                logger.exception("%s failed", job.id)
                result.failed.append((job, f"{type(e).__name__}: {e}"))
                continue
            log.add(job.index, entry)
            result.generated += 1
            bar.update()
    result.elapsed_s = time.perf_counter() - t0
    return result


def format_job_table(plan: BatchPlan, done: set[int] | None = None, order: list[Job] | None = None) -> str:
    """The dry-run table: one row per job with its cost, share and status, then the load of every share."""
    done = done or set()
    jobs = order if order is not None else plan.all_jobs
    mine = {j.index for j in plan.jobs}
    split = plan.total_gpus > 1
    header = f"{'job':>5} {'share':>5} {'cost':>6} {'status':>7} {'seed':>6}  {'mode':<28} video"
    lines = [header, "-" * len(header)]
    for j in jobs:
        share = str(plan.shares.get(j.index, "")) if split else "-"
        status = "done" if j.index in done else ("todo" if j.index in mine else "other")
        lines.append(f"{j.index:>5} {share:>5} {j.cost:>6.3f} {status:>7} {j.seed:>6}  {j.mode:<28} {j.video_relpath}")
    lines.append("")
    if split:
        for k in range(plan.total_gpus):
            share_jobs = [j for j in plan.all_jobs if plan.shares[j.index] == k]
            mark = "  <- --gpu-id" if k == plan.gpu_id else ""
            lines.append(f"share {k}: {len(share_jobs)} jobs, cost {sum(j.cost for j in share_jobs):.3f}{mark}")
    todo = [j for j in plan.jobs if j.index not in done]
    lines.append(f"this invocation: {len(plan.jobs)} jobs, {len(plan.jobs) - len(todo)} done, {len(todo)} to do "
                 f"(cost {sum(j.cost for j in todo):.3f} baseline videos); log {plan.log_path}")
    return "\n".join(lines)
