"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash, a kill or a full disk never leaves a half-written file under the final name, and the temporary
file is removed when the write fails.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    fsync=False skips flushing the data before the rename (still never a half-written file under the
    final name after a crash of the process; for many small files whose writer syncs once at the end)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:  # the name is known before the file exists: an interrupt (Ctrl-C) at any point cannot leak it
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            tmp_path = None  # another writer's (a 64-bit random name: practically never): not ours to remove
            raise
        os.close(fd)
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
        # the temporary is created 0600; give the result the mode a plain open() would (0666 less the umask).
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def is_temporary(path: Path) -> bool:
    """True for leftovers of an interrupted atomic write (ignored by readers, removed by resumers)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")
