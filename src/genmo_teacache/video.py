"""Video files: H.264 mp4 written atomically and verified, read back frame by frame (imageio-ffmpeg).

A video is finished only if it decodes: :func:`write_video` decodes the temporary file with ffmpeg and checks its
frame count before the rename (imageio does not report ffmpeg's failures, e.g. a full disk, and would leave an
undecodable file). ``exclusive=True`` never replaces an existing file: the final name is created exclusively. The
temporary names and the rename are :mod:`genmo_teacache.files`'.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from genmo_teacache.files import atomic_path, commit, temporary_beside

DEFAULT_FPS = 30  # upstream genmo.lib.utils.save_video


class VideoWriteError(OSError):
    """A video could not be written completely (ffmpeg failed, or the file does not decode to every frame)."""


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float frames in [0, 1] (as the decoder returns them) or uint8 -> uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def count_frames(path: str | os.PathLike) -> int:
    """Decode every frame of the first video stream with ffmpeg; the frame count. Raises VideoWriteError if the
    file does not decode (missing index, truncated or corrupt data)."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-map", "0:v:0", "-f", "null", "-",
           "-progress", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    found = re.findall(r"^frame=(\d+)$", proc.stdout, flags=re.M)
    errors = proc.stderr.strip()
    if proc.returncode != 0 or errors or not found:
        why = errors.splitlines()[-1] if errors else f"ffmpeg exit status {proc.returncode}"
        raise VideoWriteError(errno.EIO, f"{path} does not decode: {why}")
    return int(found[-1])


def verify_video(path: str | os.PathLike, num_frames: int | None = None) -> int:
    """Check that ``path`` decodes (to ``num_frames`` frames if given); return the frame count."""
    n = count_frames(path)
    if n < 1 or (num_frames is not None and n != num_frames):
        expected = f"{num_frames}" if num_frames is not None else "at least 1"
        raise VideoWriteError(errno.EIO, f"{path} decodes to {n} frames, expected {expected}")
    return n


@contextlib.contextmanager
def _encoder(path: str | os.PathLike, fps: float = DEFAULT_FPS, quality: float = 8,
             preset: str | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Yield ``append(frame)`` that encodes (H, W, 3) frames (uint8, or float in [0, 1]) into an H.264 mp4 at
    ``path`` (in place); when the block ends, check that the file decodes to every frame appended. Raises
    VideoWriteError naming the path and ffmpeg's complaint otherwise. ``quality``: imageio's 1-10 (x264 CRF
    ``int((1 - quality / 10) * 51)``: 8 -> 10); ``preset``: x264's."""
    import imageio.v2 as imageio

    count = 0
    try:
        # macro_block_size=1 keeps sizes that are not multiples of 16 (the tiny model's 8H x 8W frames).
        writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                                    macro_block_size=1, ffmpeg_log_level="error",
                                    output_params=["-preset", preset] if preset else None)
    except OSError as e:
        raise VideoWriteError(e.errno or errno.EIO, f"writing {path} failed: {e}") from e

    def append(frame: np.ndarray) -> None:
        nonlocal count
        writer.append_data(to_uint8(np.asarray(frame)[None])[0])
        count += 1

    try:
        yield append
    finally:
        try:
            writer.close()
        except OSError as e:
            raise VideoWriteError(e.errno or errno.EIO, f"writing {path} failed: {e}") from e
    verify_video(path, count)


def encode_video(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS) -> None:
    """Encode an H.264 mp4 at ``path`` (in place, not atomic: see :func:`write_video`) and check that it decodes
    to every frame; raises VideoWriteError naming the path and ffmpeg's complaint otherwise."""
    frames = to_uint8(frames)
    try:
        with _encoder(path, fps) as append:
            for frame in frames:
                append(frame)
    except OSError as e:
        if isinstance(e, VideoWriteError):
            raise
        raise VideoWriteError(e.errno or errno.EIO, f"writing {path} failed: {e}") from e


@contextlib.contextmanager
def video_writer(path: str | os.PathLike, fps: float = DEFAULT_FPS, quality: float = 8,
                 preset: str | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Stream frames into an H.264 mp4, atomically and verified: yields ``append(frame)``; the file appears under
    ``path`` only when the block succeeds and the file decodes to every frame (see :func:`_encoder`)."""
    with atomic_path(path) as tmp, _encoder(tmp, fps, quality, preset) as append:
        yield append


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS, *,
                exclusive: bool = False) -> Path:
    """Write an H.264 mp4 with imageio-ffmpeg, atomically and verified (see :func:`encode_video`). Returns the
    final path. ``exclusive``: never replace an existing file; the video gets the first free name of ``path``,
    ``<stem>-1.mp4``, ``<stem>-2.mp4``, ... (created exclusively, so concurrent writers never collide)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        try:
            encode_video(tmp, frames, fps)
        except VideoWriteError as e:
            raise VideoWriteError(e.errno, f"{path} was not written: {e.strerror}. Check that its disk has space "
                                           "left and can be written") from None
        return commit(tmp, path, exclusive)
    finally:
        if tmp.exists():
            tmp.unlink()


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
