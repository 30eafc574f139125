"""The evaluation's folder layout: ``{videos}/{mode}/{prompt}-{i}.mp4``, one folder per mode, videos only.

Both layouts of the batch generator (:mod:`genmo_teacache.output_layout`) are read: ``genmo-teacache batch`` writes
``<output-dir>/videos/<mode>/`` beside ``<output-dir>/logs/``; the ``vbench_eval/`` scripts write the reference's
``<output-dir>/<mode>/`` beside ``<output-dir>/generation_log_*.json``; both write ``<output-dir>/prompt_names.json``.
:func:`find_videos_dir` accepts either output folder (or the folder above one, as in the doubled
``vbench_eval/videos/videos/<mode>/`` of a batch run with ``--output-dir vbench_eval/videos``) as well as the videos
folder itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from genmo_teacache.files import TMP_PREFIX
from genmo_teacache.output_layout import BATCH, PROMPT_NAMES, VIDEO_SUFFIX, has_videos

logger = logging.getLogger(__name__)

VIDEOS = BATCH.videos  # the batch generator's videos folder under its --output-dir
MAX_DESCENT = 2  # <root>/videos/videos/<mode>: a batch run with --output-dir <root>/videos


def list_videos(mode_dir: str | os.PathLike) -> list[Path]:
    """Finished videos of a mode folder, sorted: ``*.mp4`` files whose names do not start with ``.`` (``.tmp-``
    names are unfinished writes). Anything else (e.g. ``*_delta_TEMNI.txt`` beside the videos) is left out."""
    mode_dir = Path(mode_dir)
    videos, ignored = [], []
    for path in sorted(mode_dir.iterdir()):
        if path.is_file() and path.suffix == VIDEO_SUFFIX and not path.name.startswith("."):
            videos.append(path)
        elif not path.name.startswith(TMP_PREFIX):
            ignored.append(path.name)
    if ignored:
        logger.info("%s: leaving out %d entries that are not finished %s videos: %s", mode_dir, len(ignored),
                       VIDEO_SUFFIX, ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    return videos


_FFMPEG_BANNER = ("ffmpeg version", "built with", "configuration:", "lib", "Copyright")
_FFMPEG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")


def describe_error(err: BaseException) -> str:
    """A one-line reason for a failure to read a video: the exception's first line plus the last lines of ffmpeg's
    own report (its banner and memory addresses left out, so that the same failure always reads the same)."""
    lines = [line.strip() for line in str(err).splitlines()]
    first = next((line for line in lines if line), "")
    details: list[str] = []
    if "=== stderr ===" in lines:
        for line in lines[lines.index("=== stderr ===") + 1:]:
            line = _FFMPEG_PREFIX.sub("", line).strip()
            if line and not line.startswith(_FFMPEG_BANNER) and line not in details:
                details.append(line)
    text = f"{type(err).__name__}: {first}" + (f" (ffmpeg: {'; '.join(details[-2:])})" if details else "")
    return text[:300]


def list_modes(videos_dir: str | os.PathLike) -> list[str]:
    """Mode folders of a videos folder: the sub-folders that hold a finished video (sorted; hidden folders left
    out), so that the other folders of an output folder in the reference layout (a sweep's ``fidelity/``, ...) are
    never taken for modes."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist: pass the folder that holds one "
                                "sub-folder of videos per mode (--videos / --video-dir)")
    return _mode_folders_with_videos(videos_dir)


def _mode_folders_with_videos(folder: Path) -> list[str]:
    """Sub-folders of ``folder`` that hold at least one finished ``.mp4`` (what a mode folder looks like)."""
    return [sub.name for sub in sorted(folder.iterdir())
            if sub.is_dir() and not sub.name.startswith(".") and has_videos(sub)]


def find_videos_dir(path: str | os.PathLike) -> Path:
    """The folder that holds the mode folders, given that folder, a batch ``--output-dir`` (which has
    ``videos/<mode>/``) or the folder above one (``vbench_eval`` for ``vbench_eval/videos/videos/<mode>/``).

    Descends into ``videos/`` while the folder has one and no mode folder of its own. Raises FileNotFoundError if
    ``path`` does not exist, or if mode folders sit both in ``path`` and in ``path/videos`` (say which one is meant).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"videos folder {path} does not exist: pass the folder that holds one sub-folder of "
                                "videos per mode, or the --output-dir of the batch run (--videos / --video-dir)")
    found = path
    for _ in range(MAX_DESCENT):
        inner = found / VIDEOS
        if not inner.is_dir():
            break
        own = [m for m in _mode_folders_with_videos(found) if m != VIDEOS]
        if own:
            if _mode_folders_with_videos(inner):
                raise FileNotFoundError(
                    f"{found} holds mode folders ({', '.join(own)}) and so does {inner} "
                    f"({', '.join(_mode_folders_with_videos(inner))}): pass the one you mean as --videos / "
                    "--video-dir")
            break
        found = inner
    if found != path:
        logger.info("videos of %s: mode folders in %s", path, found)
    return found


class PromptNamesError(ValueError):
    """A ``prompt_names.json`` that cannot be read; the message names the file and the fix."""


def prompt_names_path(videos_dir: str | os.PathLike) -> Path | None:
    """The ``prompt_names.json`` of a videos folder: in it (the reference layout) or beside it (the batch layout)."""
    videos_dir = Path(videos_dir)
    return next((p for p in (videos_dir / PROMPT_NAMES, videos_dir.parent / PROMPT_NAMES) if p.is_file()), None)


def load_prompt_names(videos_dir: str | os.PathLike) -> dict[str, str]:
    """``{file stem: prompt}`` of the prompts the batch generator could not use verbatim as file names (too long,
    unsafe characters), from the videos folder's ``prompt_names.json``; empty if there is none. Raises
    :class:`PromptNamesError` naming the file if it is not such a JSON object."""
    path = prompt_names_path(videos_dir)
    if path is None:
        return {}
    fix = ("re-run the batch command on its output folder (it rewrites the file), or delete it if no prompt needed a "
           "safe file name")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptNamesError(f"{path} cannot be read ({type(e).__name__}: {e}): {fix}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise PromptNamesError(f"{path}: expected a JSON object {{file stem: prompt}}, got {type(data).__name__}: "
                               f"{fix}")
    return {str(k): v for k, v in data.items()}


BASELINE_MARKER = "baseline"
SPEED_SEPARATOR = "@"  # a batch mode's speed options: baseline@fast is the baseline run with other kernels


def pick_baseline(modes: Sequence[str], where: str) -> str:
    """The one mode whose name contains ``baseline``, leaving out those with speed options (``baseline@fast``:
    a mode compared with the baseline like a cache mode) when one without is there. Raises ValueError (naming the
    candidates and ``--baseline``) when there is none or several: the baseline is never guessed beyond that."""
    found = sorted({m for m in modes if BASELINE_MARKER in m.lower()})
    plain = [m for m in found if SPEED_SEPARATOR not in m]
    if len(plain) == 1:
        return plain[0]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"no mode name in {where} contains {BASELINE_MARKER!r} (modes: "
                         f"{', '.join(sorted(set(modes))) or '(none)'}): name the uncached mode with --baseline")
    raise ValueError(f"several modes in {where} contain {BASELINE_MARKER!r} ({', '.join(found)}): choose one with "
                     "--baseline")


def resolve_modes(videos_dir: str | os.PathLike, baseline: str, modes: Sequence[str] | None) -> list[str]:
    """Check that the baseline and the requested modes exist; default modes: every folder but the baseline.
    Returns the modes to compare (without the baseline). Errors name the bad value and the folders that exist."""
    existing = list_modes(videos_dir)
    empty = sorted(p.name for p in Path(videos_dir).iterdir()
                   if p.is_dir() and not p.name.startswith(".") and p.name not in existing)
    shown = ", ".join(existing) or "(none)"
    if empty:
        shown += f"; without a finished video: {', '.join(empty)}"
    if baseline not in existing:
        raise FileNotFoundError(f"baseline folder {Path(videos_dir) / baseline} {_absent(videos_dir, baseline)}; "
                                f"mode folders in {videos_dir}: {shown}. Pass one of them as --baseline.")
    if not modes:
        return [m for m in existing if m != baseline]
    missing = [m for m in modes if m not in existing]
    if missing:
        raise FileNotFoundError(f"mode folder(s) {', '.join(missing)} not found in {videos_dir} or without a finished "
                                f"video; mode folders there: {shown}. Pass existing ones to --modes (comma-separated) "
                                "or leave it out for all.")
    return [m for m in modes if m != baseline]


def _absent(videos_dir: str | os.PathLike, mode: str) -> str:
    return "has no finished video" if (Path(videos_dir) / mode).is_dir() else "does not exist"


def log_dirs(videos_dir: str | os.PathLike) -> list[Path]:
    """Where the generation logs of a videos folder are: in it (the reference layout) or in ``logs/`` beside it
    (the batch layout)."""
    videos_dir = Path(videos_dir)
    return [videos_dir, videos_dir.parent / BATCH.logs]


def results_dir(videos_dir: str | os.PathLike) -> Path:
    """The default results folder of an evaluation of a videos folder: ``results/`` beside it (``evaluate --out``,
    where ``compare-videos`` also reads and writes)."""
    return Path(videos_dir).parent / "results"
