"""Locks of the training stage's outputs, as the crop stage locks its cache (posecrop.cache.ShardLock).

    RUN/.lock            train holds it exclusively for the whole run; evaluate / extract / export hold it shared
                         while they read the run's checkpoint (so a `train --force` cannot clear a run being read,
                         and nothing reads a run a train is replacing)
    OUT/.lock            evaluate's output folder (default RUN/eval), exclusive
    .NAME.lock           beside an extract / export output file NAME, exclusive

fcntl.flock, non-blocking: a second process stops at once with RunLockedError naming the holder's PID (written
into the lock file by an exclusive holder) and the lock file; the kernel releases a lock when its process dies
(SIGKILL included), so a lock file left on disk never blocks anyone. Lock files are kept (removing them would
race with a process opening them); they are empty but for the PID.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from reidkit.errors import RunLockedError

LOCK_NAME = ".lock"


class RunLock:
    """A non-blocking flock on `path` (created when missing); `shared` for readers."""

    def __init__(self, path: Path, what: str, shared: bool = False) -> None:
        self.path, self.what, self.shared = Path(path), what, shared
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 200, 0).decode().strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f"by pid {holder}" if holder else "by another process (reading it: evaluate, extract or export)"
            raise RunLockedError(f"{self.what} is in use {who}; lock file {self.path}. Wait for it to finish, or "
                                 f"use another --out") from None
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} ({Path(sys.argv[0]).name} {' '.join(sys.argv[1:2])})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if not self.shared:
                    os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(run_dir: Path, shared: bool = False) -> RunLock:
    """The lock of a training run folder (exclusive for train, shared for its readers)."""
    return RunLock(Path(run_dir) / LOCK_NAME, f"run folder {run_dir}", shared)


def file_lock(path: Path) -> RunLock:
    """The lock of an output file (extract / export): .NAME.lock beside it."""
    path = Path(path)
    return RunLock(path.parent / f".{path.name}.lock", f"output {path}")


@contextlib.contextmanager
def reading_run(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's shared lock while reading its checkpoint; a folder this process cannot write (a
    read-only copy of a model) cannot be trained into either, so it is read without a lock."""
    lock = run_lock(run_dir, shared=True)
    try:
        lock.acquire()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
