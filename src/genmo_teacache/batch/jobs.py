"""Jobs (prompt x mode x sample), where their files go, what they cost, and how they are split.

Where a job's files go under ``<output-dir>`` is the job's :class:`~genmo_teacache.output_layout.Layout` (the batch's
own, or the reference workflow's for the ``vbench_eval/`` scripts).

Sample ``i`` of every prompt uses seed ``generation_seed + i`` in every mode, so modes are compared on the same
noise.

Cost model (:func:`estimate_cost`, used for longest-first scheduling and for balancing ``--gpu-id`` shares; only
ratios matter): a baseline video costs 1.0, :data:`FIXED_COST_SHARE` of it for text encoding and decoding, the rest
for the denoising forwards, of which each cache method predicts the share it runs (``computed_fraction``).

Speed options: a mode may carry its own after ``@`` (``baseline@fast``), else the run's apply
(:func:`job_speed`). A process holds one pipeline at a time and loads another when a job needs other options, so
jobs are taken grouped by their options (:func:`by_speed`).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genmo_teacache.batch.naming import prompt_stem, split_folder
from genmo_teacache.batch.prompts import PromptEntry
from genmo_teacache.caches import CacheConfig, parse_mode
from genmo_teacache.output_layout import BATCH, Layout
from genmo_teacache.speed import SpeedOptions, split_mode

MAX_SAMPLES = 5  # VBench's standard mode reads samples 0-4
SEED_MAX = 2**32 - 1  # upstream's sample_model seeds numpy, whose seeds are 0 .. 2**32 - 1
FIXED_COST_SHARE = 0.05  # text encoding + decoding, as a share of a baseline video


class BatchError(Exception):
    """A problem with the batch's inputs or outputs that the user must fix; the message says what and how."""


def estimate_cost(cache: CacheConfig, num_steps: int) -> float:
    """Relative cost of one video; a baseline video costs exactly 1.0. Raises ValueError if the mode cannot run
    ``num_steps`` steps."""
    cache.check(num_steps)
    return FIXED_COST_SHARE + (1.0 - FIXED_COST_SHARE) * cache.computed_fraction(num_steps)


@dataclass(frozen=True)
class Job:
    """One video: a prompt in a mode, sample ``sample`` with seed ``seed``."""

    index: int  # position in the job list: prompt-major, then mode (as given), then sample
    prompt_index: int  # index of the prompt in the prompt list
    prompt: str
    stem: str  # file stem of the prompt (the prompt itself unless unsafe)
    mode: str  # the folder name: the mode as the user wrote it (with its @SPEED, if any), or FOLDER of FOLDER=MODE
    sample: int  # the video's number in its file name: 0, 1, ... (its seed in a layout that names videos by seed)
    seed: int
    cost: float
    # the resolved config (with a calibrated polynomial or MagCache ratios, which the mode name does not carry)
    config: CacheConfig | None = field(default=None, compare=False, repr=False)
    spec: str = ""  # MODE of FOLDER=MODE (the mode that runs, where the folder is named otherwise)
    layout: Layout = field(default=BATCH, compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.mode}/{self.stem}-{self.sample}"

    @property
    def as_written(self) -> str:
        """The mode as given to ``--modes`` (``FOLDER=MODE`` where the folder is named otherwise)."""
        return f"{self.mode}={self.spec}" if self.spec else self.mode

    @property
    def cache(self) -> CacheConfig:
        return self.config if self.config is not None else parse_mode(split_mode(self.spec or self.mode)[0])

    @property
    def speed(self) -> SpeedOptions | None:
        """The speed options of the mode's ``@SPEED`` suffix; None: the run's apply."""
        return split_mode(self.spec or self.mode)[1]

    @property
    def video_relpath(self) -> str:
        return self.layout.video_relpath(self.mode, f"{self.stem}-{self.sample}")

    @property
    def report_relpath(self) -> str:
        return self.layout.report_relpath(self.mode, f"{self.stem}-{self.sample}")

    def video_path(self, root: str | Path) -> Path:
        return Path(root) / self.video_relpath

    def report_path(self, root: str | Path) -> Path:
        return Path(root) / self.report_relpath

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.cache.to_dict()  # the resolved config, in its JSON form
        d["layout"] = self.layout.name
        d["id"] = self.id
        return d


def job_speed(job: Job, run: SpeedOptions) -> SpeedOptions:
    """The speed options ``job`` runs with: its mode's ``@SPEED``, else the run's (``run``)."""
    speed = job.speed
    return run if speed is None else speed


def speed_groups(jobs: list[Job], run: SpeedOptions) -> dict[SpeedOptions, list[Job]]:
    """The jobs by the speed options they run with: groups in the order of their first job, jobs in the given
    order within each. Each group needs its own pipeline."""
    groups: dict[SpeedOptions, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job_speed(job, run), []).append(job)
    return groups


def by_speed(jobs: list[Job], run: SpeedOptions) -> list[Job]:
    """``jobs`` with those of one set of speed options together (:func:`speed_groups`), so that a process that
    holds one pipeline at a time loads each set once."""
    return [job for group in speed_groups(jobs, run).values() for job in group]


def select_prompts(prompts: list[PromptEntry], start_idx: int = 0,
                   end_idx: int | None = None) -> list[tuple[int, PromptEntry]]:
    """``prompts[start_idx:end_idx]`` with their indices; raises BatchError on an empty or invalid range."""
    n = len(prompts)
    end = n if end_idx is None else min(end_idx, n)
    if start_idx < 0 or start_idx >= n or end <= start_idx:
        raise BatchError(f"--start-idx {start_idx} / --end-idx {end_idx} select no prompts of the {n} in the list "
                         f"(use 0 <= start < end, end <= {n})")
    return list(enumerate(prompts))[start_idx:end]


def build_jobs(prompts: list[tuple[int, PromptEntry]], modes: list[tuple[str, CacheConfig]], num_samples: int,
               generation_seed: int, num_steps: int, layout: Layout = BATCH) -> list[Job]:
    """Every (prompt, mode, sample) job (``modes`` as :func:`~genmo_teacache.batch.naming.parse_modes` returns
    them), its files in ``layout``. Checks that every mode's schedule fits ``num_steps`` and that no two prompts
    share a file stem; raises BatchError naming the mode or prompts otherwise."""
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise BatchError(f"--num-samples {num_samples}: use 1 to {MAX_SAMPLES} (VBench reads samples 0-4)")
    if not 0 <= generation_seed <= SEED_MAX - (num_samples - 1):
        raise BatchError(f"seed {generation_seed} with {num_samples} sample(s): seeds must lie in 0 .. {SEED_MAX} "
                         "(numpy's range, which upstream's sampler seeds): use a smaller --generation-seed")
    costs: dict[str, float] = {}
    for mode, cache in modes:
        try:
            costs[mode] = estimate_cost(cache, num_steps)
        except ValueError as e:
            raise BatchError(f"mode {mode!r} cannot run --num_steps {num_steps}: {e}") from None
    stems: dict[str, str] = {}
    jobs: list[Job] = []
    for prompt_index, entry in prompts:
        stem = prompt_stem(entry.text)
        if stems.setdefault(stem, entry.text) != entry.text:
            raise BatchError(f"prompts {stems[stem]!r} and {entry.text!r} map to the same file name {stem!r}")
        for mode, cache in modes:
            folder, spec = split_folder(mode)
            for i in range(num_samples):
                seed = generation_seed + i
                jobs.append(Job(len(jobs), prompt_index, entry.text, stem, folder, seed if layout.by_seed else i,
                                seed, costs[mode], cache, spec, layout))
    return jobs


def longest_first(jobs: list[Job]) -> list[Job]:
    """Most expensive first; ties keep job order (deterministic)."""
    return sorted(jobs, key=lambda j: (-j.cost, j.index))


def split_jobs(jobs: list[Job], shares: int) -> list[list[Job]]:
    """Cost-balanced split into ``shares`` lists: longest job first onto the least loaded share (ties: the lowest
    share). Deterministic, so every process computes the same split from the same job list; every job lands in
    exactly one share. Each share is returned in job order."""
    if shares < 1:
        raise BatchError(f"--total-gpus {shares}: use a positive number of shares")
    heap = [(0.0, k) for k in range(shares)]
    out: list[list[Job]] = [[] for _ in range(shares)]
    for job in longest_first(jobs):
        load, k = heapq.heappop(heap)
        out[k].append(job)
        heapq.heappush(heap, (load + job.cost, k))
    return [sorted(share, key=lambda j: j.index) for share in out]


def share_of(jobs: list[Job], shares: int) -> dict[int, int]:
    """job index -> share number under :func:`split_jobs`."""
    return {job.index: k for k, share in enumerate(split_jobs(jobs, shares)) for job in share}


def log_name(start_idx: int, end_idx: int, gpu_id: int | None = None, total_gpus: int = 1) -> str:
    """``generation_log_<start>-<end>.json`` (prompt index range, end exclusive), with ``_gpu<k>of<n>`` when the
    jobs are split by hand."""
    name = f"generation_log_{start_idx}-{end_idx}"
    if gpu_id is not None and total_gpus > 1:
        name += f"_gpu{gpu_id}of{total_gpus}"
    return name + ".json"
