"""Who works on an output folder: advisory file locks (``flock``) under ``<output-dir>/.locks/``.

- One lock per job set (``<log name>.lock``: the prompt range and, when split by hand, the share): a second batch
  with the same job set on the same folder is refused with a message naming the holder (host, pid, start time,
  command), since both would do all the work and rewrite the same log. ``--gpu-id`` shares have different job
  sets and run side by side.
- One lock per job (``jobs/<mode>/<stem>-<i>.lock``), held from the job's start until its video is verified: two
  batches whose job sets overlap (other ranges, other splits) never run the same job, and never remove each
  other's temporary files.
- A short lock around read-modify-writes of files that every batch on the folder shares (``prompt_names.json``).

The kernel releases a ``flock`` when its process ends, however it ends (SIGKILL, a crash, a lost machine on NFS
once its lease expires), so a lock of a killed run never blocks the next one; the holder information left in a
lock file is only read while the lock is held. Where the file system has no locks, a warning says so and the
batch runs unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genmo_teacache.batch.jobs import BatchError, Job

logger = logging.getLogger(__name__)

LOCKS = ".locks"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)
_warned: set[str] = set()
_STARTED = time.strftime("%Y-%m-%dT%H:%M:%S%z")


def holder_info() -> dict[str, Any]:
    """This process, as a lock file records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _STARTED,
            "command": " ".join(sys.argv)}


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not recorded itself yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


class FileLock:
    """An exclusive ``flock`` on ``path``, taken without waiting; records :func:`holder_info` in the file."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; False if another process holds it (never with ``wait``). Where the file system cannot
        lock, warn once and return True (unlocked)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as e:
            os.close(fd)
            if e.errno not in _UNSUPPORTED:
                raise
            if str(self.path.parent) not in _warned:
                _warned.add(str(self.path.parent))
                logger.warning("the file system of %s cannot lock files (%s): make sure that no other batch works "
                               "on the same jobs of this output folder", self.path.parent, e.strerror)
            return True
        self.fd = fd
        if not wait:  # long-held locks say who holds them
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
            except OSError:  # e.g. a full disk: the lock holds all the same
                pass
        return True

    def holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None


def locks_dir(root: Path) -> Path:
    return root / LOCKS


def job_set_lock(root: Path, log_path: Path) -> FileLock:
    """Take the lock of this invocation's job set (named after its log); BatchError naming the holder if taken."""
    lock = FileLock(locks_dir(root) / f"{log_path.stem}.lock")
    try:
        taken = lock.acquire()
    except OSError as e:
        raise BatchError(f"cannot create the lock file {lock.path}: {e.strerror or e}. Check that --output-dir "
                         f"{root} can be written") from None
    if not taken:
        raise BatchError(
            f"another batch is working on the same jobs in {root} (its log {log_path.name}): "
            f"{describe(lock.holder())}. Two batches on one job set would both do all the work. Wait for it to "
            f"finish (or stop it), use another --output-dir, or split the jobs with --gpu-id/--total-gpus."
        )
    return lock


class JobLocks:
    """Per-job locks of one batch (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.held: dict[int, FileLock] = {}

    def path(self, job: Job) -> Path:
        return locks_dir(self.root) / "jobs" / job.mode / f"{job.stem}-{job.sample}.lock"

    def try_lock(self, job: Job) -> bool:
        """Lock ``job`` (True if this batch holds it now, also if it did already)."""
        if job.index in self.held:
            return True
        lock = FileLock(self.path(job))
        if not lock.acquire():
            return False
        self.held[job.index] = lock
        return True

    def holder(self, job: Job) -> str:
        return describe(FileLock(self.path(job)).holder())

    def release(self, job: Job) -> None:
        lock = self.held.pop(job.index, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for lock in self.held.values():
            lock.release()
        self.held.clear()


@contextlib.contextmanager
def shared_file_lock(root: Path, name: str) -> Iterator[None]:
    """Hold ``.locks/<name>.lock`` (waiting for it) while a file every batch on ``root`` shares is updated."""
    lock = FileLock(locks_dir(root) / f"{name}.lock")
    lock.acquire(wait=True)
    try:
        yield
    finally:
        lock.release()
