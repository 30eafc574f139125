"""The user cache folder ($GENMO_TEACACHE_CACHE, else ~/.cache/genmo_teacache): LPIPS weights, the VBench
environment, the tiny demo model, the vbench wheel; and a file lock so that two processes never build one asset
at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "GENMO_TEACACHE_CACHE"


def cache_dir() -> Path:
    """``$GENMO_TEACACHE_CACHE`` if set, else ``$XDG_CACHE_HOME/genmo_teacache`` (``~/.cache/genmo_teacache``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "genmo_teacache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (held while the block runs), so that two processes never build one asset at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
