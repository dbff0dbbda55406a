"""The project's error base: `ReidError` marks an error the user can act on (bad input, a refused operation, a
failed write) whose message names the file or the option. The command line (cli.py) prints such an error as one
line and exits 1; any other exception is a bug and keeps its traceback.

The stages' error classes (ConfigError, CacheError, DatasetLayoutError, CheckpointError, ...) derive from it next to
the built-in type they always had (ValueError, RuntimeError, OSError), so existing `except ValueError` code is
unaffected.
"""
from __future__ import annotations

import errno


class ReidError(Exception):
    """An error the user can act on; its message names the file or the option. `exit_code`: the command line's."""

    exit_code = 1


class OutputPathError(ReidError, OSError):
    """An output path holds something that must not be replaced (a device, a directory, a FIFO, a socket)."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class RunLockedError(ReidError, RuntimeError):
    """Another process holds the lock of a run folder or output file (exit code 3, as a locked crop cache)."""

    exit_code = 3


# OSError numbers that describe the machine or the file system, not a bug: printed as one line by the CLI.
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EROFS", "EACCES", "EPERM", "EDQUOT", "EFBIG", "EIO", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST",
    "ENAMETOOLONG", "EMFILE", "ENFILE", "ENOMEM", "ELOOP", "EXDEV", "ENODEV", "ENXIO") if hasattr(errno, name))


def is_environment_error(e: BaseException) -> bool:
    """An OSError caused by the disk / the file system (full, read-only, permissions, missing path)."""
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS


def os_error_in_chain(e: BaseException) -> OSError | None:
    """The first environment OSError among `e`, its causes and contexts (libraries often wrap them)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if is_environment_error(e):
            return e  # type: ignore[return-value]
        e = e.__cause__ or e.__context__
    return None


def one_line(e: BaseException) -> str:
    """The message of an expected error on one line (an OSError names its file)."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
        return f"{where}{e.strerror}{other}".strip()
    text = str(e)
    if "Original Traceback (most recent call last)" in text:  # re-raised from a DataLoader worker
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split())
    return text or type(e).__name__

