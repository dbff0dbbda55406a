"""The cache reader: what the training stage (and `info`, `show`) may read of a crop cache, and nothing more.

This module and posecrop.schema are the contract between the two stages (see the README's Layout section): the
cache layout (CACHE/<split>/part-<shard>-<seq>.parquet, CACHE/crop_report.jsonl), reading a split as an Arrow
table, the settings the cache was made with, why a split is empty, and the image bytes of a row. The writer
(posecrop.cache) is stage one's own.

Readers validate what they hand out: split names, and every image_id / image `path` must be a relative POSIX
path without '..' (an untrusted cache must not make the program read outside a given root).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from reidkit.atomic import is_temporary
from reidkit.errors import ReidError

from .records import SPLITS
from .schema import IMAGE_COLUMNS, read_settings

REPORT_NAME = "crop_report.jsonl"
PART_RE = re.compile(r"^part-(?P<shard>\d+of\d+)-(?P<seq>\d+)\.parquet$")


class CacheError(ReidError, ValueError):
    """A crop cache is missing, unreadable, inconsistent or unsafe; the message names the file."""


class UnsafePathError(CacheError):
    """A path stored in a cache is absolute or climbs out of its root ('..')."""


# ------------------------------------------------------------------------------------------------ paths


def check_relative_path(path: str, what: str = "path") -> str:
    """Return `path` if it is a safe relative POSIX path (no root, drive, backslash, NUL, '.' or '..' parts)."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"{what}: empty or non-string path {path!r}")
    if (path[0] == "/" or "\\" in path or "\x00" in path or (len(path) > 1 and path[1] == ":")
            or "//" in path or path.endswith("/")
            or any(part in ("..", ".") for part in path.split("/"))):
        raise UnsafePathError(f"{what}: {path!r} is not a plain relative path (absolute paths and '..' are refused)")
    return path


def resolve_under(root: str | os.PathLike, path: str, what: str = "path") -> Path:
    """root / path, refusing paths that leave `root` (also through symbolic links)."""
    check_relative_path(path, what)
    base = Path(root).resolve()
    full = (base / path).resolve()
    if full != base and base not in full.parents:
        raise UnsafePathError(f"{what}: {path!r} resolves to {full}, outside {base}")
    return full


# ------------------------------------------------------------------------------------------------ part files


def part_files(cache: str | os.PathLike, split: str) -> list[Path]:
    """The finished part files of one split, sorted by name (temporaries ignored)."""
    if split not in SPLITS:
        raise CacheError(f"unknown split {split!r}; a cache has {SPLITS}")
    folder = Path(cache) / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if PART_RE.match(p.name) and not is_temporary(p) and p.is_file())


def all_part_files(cache: str | os.PathLike) -> list[Path]:
    return [p for split in SPLITS for p in part_files(cache, split)]


def existing_image_ids(cache: str | os.PathLike) -> set[str]:
    """image_id of every row already in the cache (reads only that column)."""
    done: set[str] = set()
    for part in all_part_files(cache):
        try:
            ids = pq.read_table(part, columns=["image_id"]).column("image_id").to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise CacheError(f"{part}: unreadable part file ({e}); move it away and re-run to redo its images") from e
        done.update(ids)
    return done


# ------------------------------------------------------------------------------------------------ readers


def open_cache(cache: str | os.PathLike, splits: Iterable[str] = SPLITS) -> "pyarrow.dataset.Dataset":  # noqa: F821
    """A pyarrow dataset over the part files of `splits` (the report and temporaries are not part of it)."""
    import pyarrow.dataset as pads  # imports pandas: only where needed

    cache = Path(cache)
    if not cache.is_dir():
        raise CacheError(f"{cache}: no such crop cache folder")
    files = [p for s in splits for p in part_files(cache, s)]
    if not files:
        raise CacheError(f"{cache}: no part files (expected {'/'.join(SPLITS)}/part-*.parquet)")
    try:
        schema = pq.read_schema(files[0])
        return pads.dataset([str(f) for f in files], schema=schema, format="parquet")
    except (pa.ArrowException, OSError) as e:
        raise CacheError(f"{cache}: unreadable part file ({e})") from e


def read_split(cache: str | os.PathLike, split: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One split as an Arrow table (all part files; only `columns` when given). Stored paths are validated."""
    if split not in SPLITS:
        raise CacheError(f"unknown split {split!r}; a cache has {SPLITS}")
    files = part_files(cache, split)
    if not files:
        raise CacheError(f"{cache}: split {split!r} has no part files ({Path(cache) / split}/part-*.parquet): "
                         f"{empty_split_reason(cache, split)}")
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=list(columns) if columns is not None else None))
        except (pa.ArrowException, OSError, KeyError) as e:
            raise CacheError(f"{f}: cannot read columns {list(columns) if columns else 'all'}: {e}") from e
    try:
        # promote: parts written before the pose_source column existed read it as null next to newer parts
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as e:
        raise CacheError(f"{cache}/{split}: part files have different schemas ({e})") from e
    validate_paths(table, where=f"{cache}/{split}")
    return table


def empty_split_reason(cache: str | os.PathLike, split: str) -> str:
    """Why a split of a cache has no rows, from its report: how many of its images failed and the first reason
    (e.g. a pose source that does not cover the split: the pose-gan CSVs have no Market-1501 query images)."""
    failed: dict[str, str] = {}
    for e in read_report(cache):
        if e.get("split") == split and e.get("status") == "failed":
            failed.setdefault(str(e.get("image_id")), str(e.get("reason")))
    report = Path(cache) / REPORT_NAME
    if failed:
        image, reason = next(iter(failed.items()))
        reason = reason if image in reason else f"{image}: {reason}"
        return f"{len(failed)} image(s) of it failed in {report}, first reason: {reason}"
    return (f"no image of it was cropped and {report} records no failure for it (a --limit, a shard or an "
            f"interrupted `crop`? run it again)")


def validate_paths(table: pa.Table, where: str = "cache") -> None:
    """Refuse tables whose image_id or image `path` values are not safe relative paths."""
    if "image_id" in table.column_names:
        for v in table.column("image_id").to_pylist():
            check_relative_path(v, f"{where}: image_id")
    for name in IMAGE_COLUMNS:
        if name in table.column_names:
            col = table.column(name)
            for chunk in col.chunks:
                for v in chunk.field("path").to_pylist():
                    if v is not None:
                        check_relative_path(v, f"{where}: {name}.path")


def cache_settings(cache: str | os.PathLike) -> dict:
    """How the cache was made (the posecrop schema metadata of its first part file)."""
    files = all_part_files(cache)
    if not files:
        raise CacheError(f"{cache}: no part files (expected {'/'.join(SPLITS)}/part-*.parquet)")
    try:
        return read_settings(pq.read_schema(files[0]))
    except (pa.ArrowException, OSError) as e:
        raise CacheError(f"{files[0]}: unreadable part file ({e})") from e


def load_image_bytes(image: dict, root: str | os.PathLike | None = None, what: str = "image") -> bytes:
    """The encoded bytes of an image struct; when it has no bytes, read `path` under `root` (never outside)."""
    data = image.get("bytes")
    if data:
        return bytes(data)
    path = image.get("path")
    if root is None or not path:
        raise CacheError(f"{what}: no image bytes stored and no root to read {path!r} from")
    return resolve_under(root, path, what).read_bytes()


# ------------------------------------------------------------------------------------------------ report


def read_report(cache: str | os.PathLike) -> list[dict]:
    """All entries of CACHE/crop_report.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(cache) / REPORT_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out
