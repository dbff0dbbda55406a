"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash, a kill or a full disk never leaves a half-written file under the final name, and the temporary
file is removed when the write fails.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    fsync=False skips flushing the data before the rename (still never a half-written file under the
    final name after a crash of the process; for many small files whose writer syncs once at the end)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would (0666 less the umask).
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, path)
    except BaseException:
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
