"""Drive the official VBench (0.1.5) per mode and dimension, resumably.

For each mode folder ``{videos}/{mode}`` and each dimension, the result goes to
``{scores_dir}/{mode}/{dimension}_eval_results.json`` (VBench's own format, ``{dim: [mean, [per-video...]]}``, with
video paths pointing at the real videos). Each dimension runs in a fresh worker process inside the VBench environment
(:mod:`.vbench_env`), so a crash or a missing model costs that dimension only. What happened to every dimension is
recorded in ``{scores_dir}/vbench_status.json`` (``{mode: {dimension: {"status", "reason", "seconds", "log",
"inputs", "videos", "left_out"}}}``); a dimension that could not run is reported there with the reason, and shown as
``n/a`` in the tables, never as a score of 0. Failed dimensions are retried on the next run (weights may have been
provided since).

Resuming: ``inputs`` is a key of exactly what a result was computed from: the dimension, the videos VBench reads for
it (name, size, mtime), the prompt list and VBench's settings. An existing result is reused only under the same key;
after a video was added or regenerated, that mode's affected dimensions run again. (A result without a recorded key,
from an older run, is reused while none of its videos is newer than it.) ``left_out`` names the videos VBench was
given but scored no result for, with the reason (an undecodable file, or nothing to score under that dimension's
protocol); the tables compare modes on the videos they all have (:mod:`.tables`).

VBench's standard mode finds ``{prompt}-{i}.mp4`` in the folder and takes the file suffix from the first entry of
``os.listdir``, so it must see videos only. It is therefore always given a view: a temporary folder of links to the
finished ``.mp4`` files of the mode (names starting with ``.tmp-`` are unfinished writes and are left out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from genmo_teacache.eval.layout import VIDEO_SUFFIX, describe_error, list_videos, load_prompt_names
from genmo_teacache.eval.scoring import ALL_DIMENSIONS, RESULT_SUFFIX
from genmo_teacache.files import TMP_PREFIX, atomic_path, write_json

logger = logging.getLogger(__name__)

STATUS_FILE = "vbench_status.json"
WORKER = Path(__file__).with_name("vbench_worker.py")
DETECTRON2_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship")
UNAVAILABLE_STATUSES = ("failed", "no_videos", "not_retried")
NOT_RETRIED = "not_retried"  # failed before on the same videos and settings: tried again only when asked
# What the worker passes to VBench besides the videos (vbench_worker.py); part of every result's key.
VBENCH_SETTINGS = {"vbench": "0.1.5", "mode": "vbench_standard", "local": False, "read_frame": False,
                   "imaging_quality_preprocessing_mode": "longer"}
DOWNLOAD_ERRORS = ("URLError", "HTTPError", "ConnectionError", "gaierror", "timeout", "MaxRetryError",
                   "ReadTimeout", "ConnectTimeout", "LocalEntryNotFoundError", "OfflineModeIsEnabled")


@dataclass(frozen=True)
class DimensionOutcome:
    mode: str
    dimension: str
    status: str  # "done", "exists", "failed", "no_videos", "not_retried"
    reason: str | None = None
    seconds: float = 0.0
    log: str | None = None
    inputs: str | None = None  # key of the videos and settings the result was computed from (inputs_key)
    videos: int = 0  # videos VBench was given for this dimension
    left_out: dict[str, str] | None = None  # video file name -> why VBench gave it no score


# ---------------------------------------------------------------- files


def load_status(scores_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """``vbench_status.json``; empty, with a warning naming it, when it cannot be read (the results are then checked
    against their videos by date, and the file is rewritten with the next outcome)."""
    path = Path(scores_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        data = err
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        logger.warning("%s cannot be read (%s): the results beside it are checked against their videos by date, and "
                       "it is written again", path, data if isinstance(data, Exception) else "not {mode: {...}}")
        return {}
    return data


def unavailable_dimensions(mode_status: dict[str, dict[str, Any]], raw: dict[str, float]) -> dict[str, str]:
    """``{dimension: reason}`` of the dimensions of one mode that were tried, could not run, and have no result."""
    return {dim: entry.get("reason") or entry["status"] for dim, entry in mode_status.items()
            if entry.get("status") in UNAVAILABLE_STATUSES and dim not in raw}


def prompts_by_dimension(full_info: str | os.PathLike) -> dict[str, list[str]]:
    with open(full_info) as f:
        entries = json.load(f)
    out: dict[str, list[str]] = {}
    for entry in entries:
        for dim in entry["dimension"]:
            out.setdefault(dim, []).append(entry["prompt_en"])
    return out


def vbench_names(videos: Sequence[Path], prompt_names: dict[str, str] | None = None) -> dict[str, Path]:
    """``{name VBench must see: video}``. A video is ``{stem}-{i}.mp4``; where the batch generator had to map a
    prompt to a safe stem (``prompt_names.json``), VBench sees it under the real prompt again (through a link)."""
    out: dict[str, Path] = {}
    for video in videos:
        stem, sep, index = video.stem.rpartition("-")
        prompt = (prompt_names or {}).get(stem) if sep else None
        name = video.name
        if prompt is not None and "/" not in prompt and "\0" not in prompt and len(prompt.encode()) <= 240:
            name = f"{prompt}-{index}{video.suffix}"
        out[name] = video
    return out


def matching_videos(videos: dict[str, Path] | Sequence[Path], prompts: Sequence[str]) -> list[str]:
    """The names VBench's standard mode picks for these prompts: ``{prompt}-{i}.mp4`` with i in 0..4."""
    names = list(videos) if isinstance(videos, dict) else [v.name for v in videos]
    wanted = {f"{p}-{i}{VIDEO_SUFFIX}" for p in prompts for i in range(5)}
    return [n for n in names if n in wanted]


def file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def inputs_key(dimension: str, videos: dict[str, Path], full_info_hash: str) -> str:
    """A key of what a dimension's result is computed from: the videos VBench reads (the names it sees, their
    files' size and mtime), the prompt list (by content) and VBench's settings."""
    data = {"dimension": dimension, "full_info": full_info_hash, "settings": VBENCH_SETTINGS,
            "videos": sorted([name, path.name, file_stamp(path)] for name, path in videos.items())}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def scored_videos(result: dict[str, Any], dimension: str) -> list[str]:
    """File names of the videos a VBench result has a per-video score for."""
    value = result.get(dimension)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
        return []
    return [os.path.basename(item["video_path"]) for item in value[1]
            if isinstance(item, dict) and isinstance(item.get("video_path"), str)]


def stale_reason(result_file: Path, entry: dict[str, Any], given: dict[str, Path], key: str) -> str | None:
    """Why an existing result cannot be reused for the videos ``given`` under ``key``; None when it can."""
    try:
        result = json.loads(result_file.read_bytes().decode("utf-8"))
        if not isinstance(result, dict):
            raise ValueError(f"expected a JSON object, got {type(result).__name__}")
    except (OSError, ValueError) as err:
        return f"it cannot be read ({err})"
    if "inputs" in entry:
        return None if entry["inputs"] == key else "its videos or settings changed since it was computed"
    dimension = result_file.name[: -len(RESULT_SUFFIX)]
    names = {path.name for path in given.values()}
    gone = [n for n in scored_videos(result, dimension) if n not in names]
    if gone:
        return f"{len(gone)} of its videos are gone ({', '.join(gone[:3])})"
    built = result_file.stat().st_mtime_ns
    newer = [path.name for path in given.values() if path.stat().st_mtime_ns > built]
    if newer:
        return f"{len(newer)} video(s) are newer than it ({', '.join(newer[:3])})"
    return None


def _why_not_scored(video: Path) -> str:
    from genmo_teacache.video import read_video

    try:
        read_video(video)
    except Exception as err:  # the reason VBench dropped it, most likely
        return f"undecodable: {describe_error(err)}"
    return "VBench gave it no score (nothing to score under this dimension's protocol)"


# ---------------------------------------------------------------- failures


_SITE_PACKAGES = re.compile(r"[^\s'\"(\[]*/site-packages/")


def short_paths(text: str) -> str:
    """``text`` without the environment's ``.../site-packages/`` prefixes (``vbench/...`` says enough)."""
    return _SITE_PACKAGES.sub("", text)


def environment_reason(err: BaseException) -> str:
    """One line for an n/a cell when the VBench environment could not be made (the details are in its log)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.replace("; last lines of ", "; see ").rstrip(":")
    return (f"VBench environment unavailable: {short_paths(first)} (it is installed from PyPI once; or set "
            "GENMO_TEACACHE_VBENCH_PYTHON to a Python that has vbench)")


def explain_failure(dimension: str, error: dict[str, Any] | None, returncode: int, log_tail: str) -> str:
    """A one-paragraph reason for a failed dimension, naming what is missing and what to do."""
    return short_paths(_explain_failure(dimension, error, returncode, log_tail))


def _explain_failure(dimension: str, error: dict[str, Any] | None, returncode: int, log_tail: str) -> str:
    if error is None:
        return f"VBench worker exited with code {returncode} without a report; last log lines: {log_tail[-400:]}"
    kind, message = error.get("type", "Error"), " ".join(str(error.get("message", "")).split())[:400]
    module = error.get("module") or ""
    if kind == "ModuleNotFoundError" and module.split(".")[0] == "detectron2":
        return (f"{dimension} needs detectron2, which is not on PyPI: install it into the VBench environment from "
                "its source repository (see docs/EVALUATION.md), then re-run")
    if kind == "CalledProcessError" and any(tool in message for tool in ("wget", "git", "unzip")):
        return (f"could not download the model weights {dimension} needs ({message}); without network access put "
                "them where that command writes (under $VBENCH_CACHE_DIR, default ~/.cache/vbench) and re-run")
    if kind == "FileNotFoundError" and any(part in message for part in (".pth", ".pt'", "vbench", "_model")):
        return (f"model weights for {dimension} are missing ({message}); VBench downloads them at run time, which "
                "needs network access: fetch them once or copy them to that path, then re-run")
    if kind in DOWNLOAD_ERRORS or "Name or service not known" in message or "Temporary failure in name" in message:
        return (f"could not download a model {dimension} needs ({kind}: {message}); it must be fetched once with "
                "network access (VBench caches under ~/.cache/vbench, torch hub and Hugging Face caches)")
    if kind == "ModuleNotFoundError":
        return f"the VBench environment lacks the Python module {module or message!r} ({message})"
    return f"{kind}: {message}"


# ---------------------------------------------------------------- running


def _make_view(videos: dict[str, Path], view_dir: Path) -> None:
    for name, video in videos.items():
        os.symlink(video.resolve(), view_dir / name)


def _finish_result(tmp_out: Path, dimension: str, view_dir: Path, videos: dict[str, Path], final: Path
                   ) -> str | None:
    """Move VBench's result into place with the real video paths. Returns a failure reason, or None."""
    produced = tmp_out / f"{dimension}{RESULT_SUFFIX}"
    if not produced.is_file():
        return f"VBench finished without writing {produced.name}"
    with open(produced) as f:
        data = json.load(f)
    view_prefix = str(view_dir) + os.sep
    for value in data.values():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
            continue
        for item in value[1]:
            if isinstance(item, dict) and isinstance(item.get("video_path"), str):
                name = item["video_path"][len(view_prefix):]
                if item["video_path"].startswith(view_prefix) and name in videos:
                    item["video_path"] = str(videos[name])
    mean = data.get(dimension, [None])[0]
    if mean is None or not math.isfinite(float(mean)):
        return f"VBench scored no video for {dimension} (mean {mean}); see the log for unreadable videos"
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(data, indent=4))
    return None


def run_dimension(
    python: str | os.PathLike,
    videos: dict[str, Path],
    mode: str,
    dimension: str,
    scores_dir: Path,
    full_info: str | os.PathLike,
    device: str = "auto",
) -> DimensionOutcome:
    """Run one dimension of one mode in a worker process; write the result file on success. ``videos``: the
    mode's videos (those named after the dimension's prompts) by the name VBench must see (:func:`vbench_names`).
    Videos VBench scored no result for are listed in the outcome's ``left_out`` with the reason."""
    mode_out = scores_dir / mode
    mode_out.mkdir(parents=True, exist_ok=True)
    log_path = scores_dir / "logs" / mode / f"{dimension}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    final = mode_out / f"{dimension}{RESULT_SUFFIX}"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="genmo-teacache-vbench-view-") as view, \
            tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{dimension}-", dir=mode_out) as tmp_out:
        view_dir, tmp_dir = Path(view), Path(tmp_out)
        _make_view(videos, view_dir)
        error_file = tmp_dir / "error.json"
        cmd = [str(python), str(WORKER), "--videos", str(view_dir), "--dimension", dimension, "--output",
               str(tmp_dir.resolve()), "--full-info", str(Path(full_info).resolve()), "--device", device,
               "--error-file", str(error_file.resolve())]
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            # run inside the temporary output folder: whatever VBench writes to its working directory goes away
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_dir)
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            error = json.loads(error_file.read_text()) if error_file.is_file() else None
            tail = " ".join(log_path.read_text(errors="replace").splitlines()[-5:])
            reason = explain_failure(dimension, error, proc.returncode, tail)
            return DimensionOutcome(mode, dimension, "failed", reason, seconds, str(log_path))
        reason = _finish_result(tmp_dir, dimension, view_dir, videos, final)
    if reason is not None:
        return DimensionOutcome(mode, dimension, "failed", reason, seconds, str(log_path))
    with open(final) as f:
        scored = set(scored_videos(json.load(f), dimension))
    left_out = {path.name: _why_not_scored(path) for path in videos.values() if path.name not in scored}
    for name, why in left_out.items():
        logger.warning("VBench %s / %s: %s left out: %s", mode, dimension, name, why)
    return DimensionOutcome(mode, dimension, "done", None, seconds, str(log_path), left_out=left_out or None)


def record_outcome(scores_dir: Path, outcome: DimensionOutcome) -> None:
    """Add one outcome to ``vbench_status.json`` (read, update, atomic rewrite; one driver process at a time)."""
    status = load_status(scores_dir)
    entry = {k: v for k, v in asdict(outcome).items() if k not in ("mode", "dimension") and v is not None}
    entry["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    status.setdefault(outcome.mode, {})[outcome.dimension] = entry
    write_json(scores_dir / STATUS_FILE, status)


def run_vbench(
    videos_dir: str | os.PathLike,
    modes: Sequence[str],
    scores_dir: str | os.PathLike,
    dimensions: Sequence[str] = ALL_DIMENSIONS,
    full_info: str | os.PathLike | None = None,
    device: str = "auto",
    overwrite: bool = False,
    retry_failed: bool = False,
) -> list[DimensionOutcome]:
    """Evaluate every mode on every dimension that has no result for its current videos (see the module docstring).
    Never raises for a dimension that cannot run: its outcome (and the status file) says why. A dimension that
    failed before on the same videos and settings (e.g. a model VBench could not download) is not tried again
    unless ``retry_failed`` (or ``overwrite``): its outcome is ``not_retried``, with the recorded reason."""
    from genmo_teacache.eval import vbench_env

    videos_dir, scores_dir = Path(videos_dir), Path(scores_dir)
    unknown = [d for d in dimensions if d not in ALL_DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {unknown}; choose from: {', '.join(ALL_DIMENSIONS)}")
    for mode in modes:
        if not (videos_dir / mode).is_dir():
            raise FileNotFoundError(f"no video folder {videos_dir / mode} for mode {mode!r}")

    pythons: dict[str, Path | Exception] = {}

    def python_for(dimension: str) -> Path | Exception:
        tier = vbench_env.tier_for(dimension)
        if tier not in pythons:
            try:
                pythons[tier] = vbench_env.ensure_env(tier)
            except (vbench_env.VBenchEnvError, OSError, subprocess.CalledProcessError) as err:
                logger.debug("VBench environment (%s tier) unavailable: %s", tier, err)
                pythons[tier] = err
        return pythons[tier]

    if full_info is None:  # the one that ships inside the vbench wheel (needs the core tier only)
        core = python_for("temporal_flickering")
        if isinstance(core, Exception):  # no prompt list to check results against, nothing can run
            reason = environment_reason(core)
            kept = [(m, d) for m in modes for d in dimensions
                    if not overwrite and (scores_dir / m / f"{d}{RESULT_SUFFIX}").is_file()]
            if kept:
                logger.warning("VBench: %d existing results kept without checking them against the current videos "
                               "(%s)", len(kept), reason)
            return [DimensionOutcome(m, d, "exists", reason) if (m, d) in kept else
                    DimensionOutcome(m, d, "failed", reason) for m in modes for d in dimensions]
        full_info = vbench_env.vbench_package_dir(core) / "VBench_full_info.json"
    full_info_hash = hashlib.sha256(Path(full_info).read_bytes()).hexdigest()[:16]
    prompts = prompts_by_dimension(full_info)
    prompt_names = load_prompt_names(videos_dir)
    videos_of = {mode: vbench_names(list_videos(videos_dir / mode), prompt_names) for mode in modes}
    status = load_status(scores_dir)

    outcomes: list[DimensionOutcome] = []
    todo: list[tuple[str, str, dict[str, Path], str]] = []
    for mode in modes:
        for dim in dimensions:
            given = {n: videos_of[mode][n] for n in matching_videos(videos_of[mode], prompts.get(dim, []))}
            key = inputs_key(dim, given, full_info_hash)
            result = scores_dir / mode / f"{dim}{RESULT_SUFFIX}"
            entry = status.get(mode, {}).get(dim, {})
            why = "--overwrite" if overwrite else None if result.is_file() else "no result yet"
            if why is None:
                why = stale_reason(result, entry, given, key)
            if why is None:
                outcomes.append(DimensionOutcome(mode, dim, "exists", inputs=key, videos=len(given)))
                if entry.get("inputs") != key:  # an older run's result, checked by dates: record its key now
                    record_outcome(scores_dir, DimensionOutcome(mode, dim, entry.get("status", "done"),
                                                                inputs=key, videos=len(given)))
            elif entry.get("status") == "failed" and entry.get("inputs") == key and not (overwrite or retry_failed):
                outcomes.append(DimensionOutcome(mode, dim, NOT_RETRIED, entry.get("reason"), inputs=key,
                                                 videos=len(given)))
            else:
                if result.is_file() and not overwrite:
                    logger.info("VBench %s / %s: computing again: %s", mode, dim, why)
                todo.append((mode, dim, given, key))
    skipped = sum(o.status == NOT_RETRIED for o in outcomes)
    if skipped:
        logger.warning("VBench: %d mode/dimension(s) failed before on the same videos and settings and are not tried "
                       "again (pass --retry-failed once they can run, e.g. with network access)", skipped)
    if outcomes:
        logger.info("VBench: %d mode/dimension results are kept (same videos and settings)", len(outcomes))

    from tqdm.auto import tqdm

    for mode, dim, given, key in tqdm(todo, desc="VBench", unit="dim", disable=not todo):
        if not given:
            outcome = DimensionOutcome(mode, dim, "no_videos", "none of the videos is of a prompt in this dimension's "
                                       f"list ({Path(full_info).name}): they are named {{prompt}}-{{i}}.mp4 after "
                                       "other prompts")
        elif isinstance(python := python_for(dim), Exception):
            outcome = DimensionOutcome(mode, dim, "failed", environment_reason(python))
        else:
            outcome = run_dimension(python, given, mode, dim, scores_dir, full_info, device)
        outcome = replace(outcome, inputs=key, videos=len(given))
        if outcome.status == "done":
            logger.info("VBench %s / %s done in %.0f s", mode, dim, outcome.seconds)
        else:
            logger.debug("VBench %s / %s: %s: %s", mode, dim, outcome.status, outcome.reason)
            (scores_dir / mode / f"{dim}{RESULT_SUFFIX}").unlink(missing_ok=True)  # never an outdated score
        record_outcome(scores_dir, outcome)
        outcomes.append(outcome)
    return outcomes
