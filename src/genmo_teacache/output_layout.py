"""Where a batch puts its outputs under ``--output-dir``, and the names every reader looks for: the one place that
defines the output layout (the batch writes it, :mod:`genmo_teacache.eval.layout` reads it).

Two layouts, chosen with ``--layout``; readers (``evaluate``, ``compare-videos``, the ``vbench_eval/`` scripts)
accept both:

``batch`` (``genmo-teacache batch`` and ``sweep``)::

    videos/<mode>/<prompt stem>-<i>.mp4      videos only (VBench reads the suffix off the first listed file)
    reports/<mode>/<prompt stem>-<i>.json    per-video sidecar: job, settings, generation report, log entry
    logs/generation_log_<start>-<end>[_gpu<k>of<n>].json   {"runs": [...]}: one entry per finished job
    logs/delta_temni/<mode>/<prompt stem>-<i>_delta_TEMNI.txt (and _plot.png)   with --delta_temni_plot
    prompt_names.json                        {file stem: prompt} for prompts mapped to safe names

``reference`` (the ``vbench_eval/`` scripts: the reference workflow's ``--output-dir vbench_eval/videos``, its
monitoring commands ``ls vbench_eval/videos/mochi_baseline/*.mp4`` and ``jq '.runs | length'
vbench_eval/videos/generation_log_0-9.json``); videos are named by their seed, as the reference's
``{prompt}-{seed}.mp4``, so that runs with ``--generation-seed 0``, ``1``, ... add videos beside each other (a
video's sample number is its seed)::

    <mode>/<prompt stem>-<seed>.mp4
    generation_log_<start>-<end>[_gpu<k>of<n>].json
    .reports/<mode>/<prompt stem>-<i>.json   (hidden: the output folder lists mode folders and logs only)
    .reports/delta_temni/<mode>/...
    prompt_names.json
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIX = ".mp4"
PROMPT_NAMES = "prompt_names.json"
LOG_GLOB = "generation_log_*.json"
LOG_GLOBS = (LOG_GLOB, "generation_log.json")  # and the older single log of the reference's first scripts
DELTA_TEMNI = "delta_temni"


@dataclass(frozen=True)
class Layout:
    """Folders relative to the output folder ("" is the output folder itself)."""

    name: str
    videos: str  # holds one folder per mode
    reports: str  # holds one folder per mode, of sidecar reports
    logs: str  # holds the generation logs
    traces: str  # holds one folder per mode, of delta-TEMNI traces
    by_seed: bool = False  # a video's number (``<stem>-<n>.mp4``) is its seed, not its sample index

    def videos_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.videos

    def logs_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.logs

    def video_relpath(self, mode: str, name: str) -> str:
        """``name`` (``<stem>-<i>``) of ``mode``'s video, relative to the output folder."""
        return _join(self.videos, mode, name + VIDEO_SUFFIX)

    def report_relpath(self, mode: str, name: str) -> str:
        return _join(self.reports, mode, name + ".json")

    def trace_relpath(self, mode: str, name: str) -> str:
        """The path whose stem a video's delta-TEMNI files take (``generate.write_delta_temni`` adds suffixes)."""
        return _join(self.traces, mode, name + VIDEO_SUFFIX)

    def mode_folders(self, mode: str) -> str:
        """Where a mode's outputs are, as a user deletes them to generate the mode again."""
        return f"{_join(self.videos, mode)}/ and {_join(self.reports, mode)}/"


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


BATCH = Layout("batch", videos="videos", reports="reports", logs="logs", traces="logs/" + DELTA_TEMNI)
REFERENCE = Layout("reference", videos="", reports=".reports", logs="", traces=".reports/" + DELTA_TEMNI,
                   by_seed=True)
LAYOUTS = {layout.name: layout for layout in (BATCH, REFERENCE)}


def has_videos(folder: Path) -> bool:
    """Whether ``folder`` holds a finished video (a ``.mp4`` whose name does not start with ``.``)."""
    try:
        return any(p.suffix == VIDEO_SUFFIX and not p.name.startswith(".") and p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def found_layout(root: str | os.PathLike) -> Layout | None:
    """The layout of the videos already under ``root`` (None: no video yet). A folder with videos of both is
    reported as the batch layout's (the reader says which one is meant)."""
    root = Path(root)
    videos = root / BATCH.videos
    if videos.is_dir() and any(has_videos(p) for p in videos.iterdir() if p.is_dir()):
        return BATCH
    if root.is_dir() and any(has_videos(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        return REFERENCE
    return None
