"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash, a kill or a full disk never leaves a half-written file under the final name, and the temporary
file is removed when the write fails.

What may be at the final name: nothing, or a regular file (replaced). A symbolic link is written through on
purpose: its target (resolved fully) is replaced atomically and the link stays. Anything else - a directory, a
device node such as /dev/null or /dev/full, a FIFO, a socket - is refused with OutputPathError before any byte is
written (renaming over it would destroy it: as root, `show --out /dev/full` used to replace the device node).
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def output_target(path: str | os.PathLike) -> Path:
    """Where an atomic write to `path` lands: `path`, or the final target of a symlink at `path`; OutputPathError
    when that is something other than a regular file (or nothing)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        return path  # a parent is a file: mkdir / open report it naming the path
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise OutputPathError(errno.EEXIST, f"is {kind}, not a regular file; refusing to replace it "
                                        f"(choose a file name)", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    fsync=False skips flushing the data before the rename (still never a half-written file under the
    final name after a crash of the process; for many small files whose writer syncs once at the end).
    `path` may be a symlink (its target is replaced); see the module docstring for what is refused."""
    path = output_target(path)
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


def looks_like_torch_file(path: str | os.PathLike) -> bool:
    """Whether a file can be a torch.save output: a zip archive (torch >= 1.6) or a pickle (legacy format, whose
    first byte is the PROTO opcode 0x80). Lets loaders say "not a checkpoint" for junk instead of torch's long
    unpickling advice."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(2)
        return bool(head) and (head[:1] == b"\x80" or zipfile.is_zipfile(path))
    except OSError:
        return False
