"""Atomic files and output checks: every file this package produces goes through here.

:func:`atomic_path` writes under a temporary name in the same folder, flushes the file to disk (fsync) and renames
it into place only when complete, so a killed run or a crashed machine never leaves a file that looks finished.
Temporary names start with ``.tmp-`` (:data:`TMP_PREFIX`) so that resumable jobs and VBench can ignore them.
``commit(..., exclusive=True)`` never replaces an existing file: the final name is created exclusively
(``<stem>-1``, ``<stem>-2``, ... when taken). The output checks run before any model loads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
MIN_FREE_BYTES = 1 << 20  # an output folder with less free space than this is full
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS, errno.EMLINK)


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


def commit(tmp: Path, path: Path, exclusive: bool) -> Path:
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


def temporary_beside(path: Path) -> Path:
    """A new empty file beside ``path`` (``.tmp-<stem>-<random><suffix>``), its folder made if missing: write it, then
    :func:`commit` it onto ``path``."""
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
    tmp = temporary_beside(path)
    try:
        yield tmp
        commit(tmp, path, exclusive=False)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


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
