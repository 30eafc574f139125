"""The evaluation's folder layout: ``{videos}/{mode}/{prompt}-{i}.mp4``, one folder per mode, videos only.

The batch generator writes ``<output-dir>/videos/<mode>/`` beside ``<output-dir>/logs/`` and
``<output-dir>/prompt_names.json``; :func:`find_videos_dir` accepts that root (or the folder above it, as in the
doubled ``vbench_eval/videos/videos/<mode>/`` that ``--output-dir vbench_eval/videos`` makes) as well as the videos
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

logger = logging.getLogger(__name__)

VIDEO_SUFFIX = ".mp4"
PROMPT_NAMES = "prompt_names.json"
VIDEOS = "videos"  # the batch generator's videos folder under its --output-dir
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
    """Mode folders of a videos folder (sorted; hidden folders left out)."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist: pass the folder that holds one "
                                "sub-folder of videos per mode (--videos / --video-dir)")
    return sorted(p.name for p in videos_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mode_folders_with_videos(folder: Path) -> list[str]:
    """Sub-folders of ``folder`` that hold at least one finished ``.mp4`` (what a mode folder looks like)."""
    out = []
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and not sub.name.startswith(".") and any(
                p.suffix == VIDEO_SUFFIX and not p.name.startswith(".") for p in sub.iterdir()):
            out.append(sub.name)
    return out


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


def load_prompt_names(videos_dir: str | os.PathLike) -> dict[str, str]:
    """``{file stem: prompt}`` of the prompts the batch generator could not use verbatim as file names (too long,
    unsafe characters), from ``prompt_names.json`` beside the videos folder; empty if there is none."""
    path = Path(videos_dir).parent / PROMPT_NAMES
    if not path.is_file():
        return {}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{file stem: prompt}}, got {type(data).__name__}")
    return {str(k): str(v) for k, v in data.items()}


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
    shown = ", ".join(existing) or "(none)"
    if baseline not in existing:
        raise FileNotFoundError(f"baseline folder {Path(videos_dir) / baseline} does not exist; folders in "
                                f"{videos_dir}: {shown}. Pass one of them as --baseline.")
    if not modes:
        return [m for m in existing if m != baseline]
    missing = [m for m in modes if m not in existing]
    if missing:
        raise FileNotFoundError(f"mode folder(s) {', '.join(missing)} not found in {videos_dir}; folders there: "
                                f"{shown}. Pass existing ones to --modes (comma-separated) or leave it out for all.")
    return [m for m in modes if m != baseline]
