"""Video files and atomic writes.

Every file this package produces goes through :func:`atomic_path`: it is written under a temporary name in
the same folder and renamed into place only when complete, so a killed run never leaves a file that looks
finished. Temporary names start with ``.tmp-`` so that resumable jobs and VBench can ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"
DEFAULT_FPS = 30  # upstream genmo.lib.utils.save_video


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.stem + "-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float frames in [0, 1] (as the decoder returns them) or uint8 -> uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


@contextlib.contextmanager
def video_writer(path: str | os.PathLike, fps: float = DEFAULT_FPS, quality: float = 8,
                 preset: str | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Stream frames into an H.264 mp4 with imageio-ffmpeg, atomically: yields ``append(frame)`` for (H, W, 3)
    frames (uint8, or float in [0, 1]); the file appears under ``path`` only when the block succeeds.
    ``quality``: imageio's 1-10 (x264 CRF ``int((1 - quality / 10) * 51)``: 8 -> 10); ``preset``: x264's."""
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        # macro_block_size=1 keeps sizes that are not multiples of 16 (the tiny model's 8H x 8W frames).
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                                    macro_block_size=1, ffmpeg_log_level="error",
                                    output_params=["-preset", preset] if preset else None)
        try:
            yield lambda frame: writer.append_data(to_uint8(np.asarray(frame)[None])[0])
        finally:
            writer.close()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS) -> Path:
    """Write an H.264 mp4 with imageio-ffmpeg, atomically. Returns the final path."""
    frames = to_uint8(frames)
    path = Path(path)
    with video_writer(path, fps) as append:
        for frame in frames:
            append(frame)
    return path


def iter_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video frame by frame with imageio's ffmpeg reader: (H, W, 3) uint8 frames."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        for frame in reader:
            yield np.asarray(frame)[..., :3]
    finally:
        reader.close()


def probe_video(path: str | os.PathLike, default_fps: float = DEFAULT_FPS) -> tuple[float, int | None]:
    """(frame rate, approximate frame count) from the file's metadata, without decoding it; the count is
    ``round(duration * fps)`` (None when the file does not say)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        meta = reader.get_meta_data()
    finally:
        reader.close()
    fps = float(meta.get("fps") or default_fps)
    duration = meta.get("duration")
    return fps, (round(float(duration) * fps) if duration else None)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video with imageio's ffmpeg reader to a (T, H, W, 3) uint8 array."""
    frames = list(iter_video(path))
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)
