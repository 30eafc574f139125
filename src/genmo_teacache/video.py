"""Video files, atomic writes and output checks.

Every file this package produces goes through :func:`atomic_path`: it is written under a temporary name in
the same folder, flushed to disk (fsync) and renamed into place only when complete, so a killed run or a crashed
machine never leaves a file that looks finished. Temporary names start with ``.tmp-`` so that resumable jobs and
VBench can ignore them.

A video is finished only if it decodes: :func:`write_video` decodes the temporary file with ffmpeg and checks its
frame count before the rename (imageio does not report ffmpeg's failures, e.g. a full disk, and would leave an
undecodable file). ``exclusive=True`` never replaces an existing file: the final name is created exclusively.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"
DEFAULT_FPS = 30  # upstream genmo.lib.utils.save_video
MIN_FREE_BYTES = 1 << 20  # an output folder with less free space than this is full
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS, errno.EMLINK)


class VideoWriteError(OSError):
    """A video could not be written completely (ffmpeg failed, or the file does not decode to every frame)."""


class OutputPathError(ValueError):
    """An output location that cannot be written; the message names it and what to do."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def numbered(path: Path, n: int) -> Path:
    """``path`` for n = 0, else ``<stem>-<n><suffix>``."""
    return path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (FileExistsError): a hard link is created atomically
    and never replaces a file. Where the file system has no hard links, the name is created exclusively first."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno not in _NO_LINKS:
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # ours now; FileExistsError if not
        os.replace(tmp, path)
        return
    tmp.unlink()


def _commit(tmp: Path, path: Path, exclusive: bool) -> Path:
    """Rename the finished ``tmp`` onto ``path`` (or, exclusive, the first free of ``path``, ``<stem>-1``, ...)."""
    fsync_file(tmp)
    if not exclusive:
        os.replace(tmp, path)
    else:
        for n in range(10_000):
            try:
                _link_new(tmp, numbered(path, n))
            except FileExistsError:
                continue
            path = numbered(path, n)
            break
        else:
            raise FileExistsError(f"{path} and 10000 numbered variants of it exist already")
    _fsync_dir(path.parent)
    return path


def _temporary_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.stem + "-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); if the block succeeds, flush it to disk and rename it
    onto ``path``. The temporary file is removed if the block fails."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        _commit(tmp, path, exclusive=False)
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
    tmp = _temporary_beside(path)
    try:
        try:
            encode_video(tmp, frames, fps)
        except VideoWriteError as e:
            raise VideoWriteError(e.errno, f"{path} was not written: {e.strerror}. Check that its disk has space "
                                           "left and can be written") from None
        return _commit(tmp, path, exclusive)
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


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a whole file (what a finished video is checked against)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


# -- output checks, before any model loads -------------------------------------------------------------------

def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create the folder ``path`` if needed and check that a file can be created in it and that its file system
    has space left. Raises OutputPathError naming ``option``, the path and what to do."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{option} {path} cannot be written ({e.strerror or e}): pass a folder you can write "
                              "to") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise OutputPathError(f"{option} {path}: its file system is full ({free} bytes free): free some space or "
                              "pass a folder on another disk")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Check that the file ``path`` can be written (its folder as :func:`check_output_dir`; not a folder itself)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: pass a file name")
    check_output_dir(path.parent, f"the folder of {option}")
    return path
