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
from collections.abc import Iterator
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


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS) -> Path:
    """Write an H.264 mp4 with imageio-ffmpeg, atomically. Returns the final path."""
    import imageio.v2 as imageio

    frames = to_uint8(frames)
    path = Path(path)
    with atomic_path(path) as tmp:
        # macro_block_size=1 keeps sizes that are not multiples of 16 (the tiny model's 8H x 8W frames).
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=1, ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video with imageio's ffmpeg reader to a (T, H, W, 3) uint8 array."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        frames = [np.asarray(frame)[..., :3] for frame in reader]
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)
