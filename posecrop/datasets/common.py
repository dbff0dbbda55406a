"""What every dataset reader shares: its error, the (path, reason) list of unused files, and the file-name
helpers (image files of a folder, `*.jpg.jpg` stems, locating the dataset folder under a parent)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from reidkit.errors import ReidError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

Skipped = tuple[str, str]  # (path relative to root, reason)
_MAX_LISTED = 10


class DatasetLayoutError(ReidError, ValueError):
    """A dataset folder does not have the expected layout, or holds files whose names cannot be parsed.

    `skipped` lists the unusable files as (path, reason) when that is the problem."""

    def __init__(self, message: str, skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(message)
        self.skipped: list[Skipped] = list(skipped)
EXCLUDED = "excluded by the protocol: "   # reason prefix of files the protocol leaves out (Market junk, pid -1)


def _listing(skipped: list[Skipped]) -> str:
    lines = [f"  {path}: {reason}" for path, reason in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - _MAX_LISTED} more")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _join(prefix: str, name: str) -> str:
    return name if prefix in ("", ".") else f"{prefix}/{name}"


def _image_files(folder: Path, root: Path) -> list[tuple[str, str]]:
    """(name, path relative to root) of the image files directly inside `folder`, sorted by name. Hidden files
    (atomic-write temporaries among them) and other extensions are ignored; broken symbolic links are kept (so
    that reading them fails and is reported). Strings, not Paths: Market has 36k."""
    prefix = _rel(folder, root)
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if not e.name.startswith(".")
                       and (e.is_file() or (e.is_symlink() and not e.is_dir()))
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [(name, _join(prefix, name)) for name in names]


def _bare_stem(name: str) -> str:
    """The file name without its image extension(s): Market-1501 ships 18 `*.jpg.jpg` gallery files."""
    stem, ext = os.path.splitext(name)
    while ext.lower() in IMAGE_EXTENSIONS:
        name = stem
        stem, ext = os.path.splitext(name)
    return name


def _locate(root: Path, required: list[str], prefix: str, title: str, what: str = "folders") -> Path:
    """The folder holding all `required` entries: `root` itself, or the single `prefix*` folder inside it."""
    missing = [r for r in required if not (root / r).exists()]
    if not missing:
        return root
    candidates = sorted(c for c in root.iterdir() if c.is_dir() and c.name.lower().startswith(prefix.lower()))
    if len(candidates) == 1:
        inner = candidates[0]
        inner_missing = [r for r in required if not (inner / r).exists()]
        if not inner_missing:
            return inner
        raise DatasetLayoutError(
            f"{title} layout not found under {inner}: expected {what} {', '.join(required)} "
            f"(missing: {', '.join(inner_missing)})")
    if len(candidates) > 1:
        raise DatasetLayoutError(
            f"{title} layout is ambiguous under {root}: several {prefix}* folders "
            f"({', '.join(c.name for c in candidates)}); pass one of them as the root")
    raise DatasetLayoutError(
        f"{title} layout not found under {root}: expected {what} {', '.join(required)} "
        f"(missing: {', '.join(missing)}), or a single {prefix}* folder holding them")
