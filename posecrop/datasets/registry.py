"""The dataset registry and the API of every reader: `register_dataset(name, reader)`, `scan_dataset`,
`read_dataset`, `dataset_options`, `resolve_dataset_options`.

A reader is `reader(root: Path, dataset: str, **options) -> (records, skipped)`: `root` the folder given by the
user, `dataset` the registered name (one reader may serve several names, e.g. cuhk03-labeled / -detected), its
keyword parameters with their defaults the options it accepts (`--dataset-option KEY=VALUE`, a recipe's
[dataset] options), `skipped` the (path, reason) of files it did not use (reasons starting with EXCLUDED: left
out by the protocol). `resolve(root, name, options) -> options`, when given, makes a reader's "auto" choices
explicit so that a cache records what was actually read.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reidkit.typedconfig import ConfigError

from ..records import SPLITS, ImageRecord
from .common import EXCLUDED, DatasetLayoutError, Skipped, _listing

Reader = Callable[..., tuple[list[ImageRecord], list[Skipped]]]
Resolver = Callable[[Path, str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    reader: Reader
    resolve: Resolver | None = None


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, reader: Reader, resolve: Resolver | None = None) -> None:
    """Make dataset `name` readable (the CLI's --dataset, a recipe's [dataset] name). ValueError when the name is
    taken."""
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered (by {_REGISTRY[name].reader.__module__})")
    _REGISTRY[name] = DatasetEntry(name, reader, resolve)


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in the order they were registered."""
    return tuple(_REGISTRY)


def _entry(name: str, error: type[Exception]) -> DatasetEntry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise error(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return entry




def scan_dataset(name: str, root: str | os.PathLike, **options: Any) -> tuple[list[ImageRecord], list[Skipped]]:
    """Read a dataset; return (records, skipped) where skipped lists (path, reason) of files that were not used
    (unparseable names, listed-but-missing files). Junk images (Market pid -1) are dropped by protocol, not listed
    (scan_dataset_all lists them too)."""
    records, skipped, _ = scan_dataset_all(name, root, **options)
    return records, skipped


def scan_dataset_all(name: str, root: str | os.PathLike, **options: Any
                     ) -> tuple[list[ImageRecord], list[Skipped], list[Skipped]]:
    """scan_dataset plus the files the protocol excludes, as (path, reason): (records, skipped, excluded)."""
    reader = _entry(name, ConfigError).reader
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "dataset")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(accepted) or 'none'}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{name} dataset root {root} does not exist or is not a folder")
    records, listed = reader(root, dataset=name, **options)
    order = {s: i for i, s in enumerate(SPLITS)}
    records.sort(key=lambda r: (order[r.split], r.path))
    skipped = sorted(s for s in listed if not s[1].startswith(EXCLUDED))
    return records, skipped, sorted(s for s in listed if s[1].startswith(EXCLUDED))


def resolve_dataset_options(name: str, root: str | os.PathLike, options: dict[str, Any]) -> dict[str, Any]:
    """The options as the reader will apply them, "auto" choices made (CUHK03 protocol="auto" -> the protocol
    this folder's files select), so that a cache records - and a resumed run compares - what was actually read."""
    resolved = dict(options)
    entry = _REGISTRY.get(name)
    if entry is not None and entry.resolve is not None:
        resolved = entry.resolve(Path(root), name, resolved)
    return resolved


def read_dataset(name: str, root: str | os.PathLike, *, strict: bool = True, **options: Any) -> list[ImageRecord]:
    """Read a dataset into ImageRecords (train, then query, then gallery; sorted by path within a split).

    strict=True: unparseable or missing files raise one DatasetLayoutError listing them (with `.skipped`);
    strict=False: they are left out (use `scan_dataset` to get them)."""
    records, skipped = scan_dataset(name, root, **options)
    if skipped and strict:
        raise DatasetLayoutError(
            f"{name} dataset under {root}: {len(skipped)} file(s) could not be used:\n"
            + _listing(skipped)
            + "\n(read with strict=False, or use scan_dataset, to skip them)",
            skipped,
        )
    return records


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset reader accepts, with their defaults."""
    reader = _entry(name, ValueError).reader
    return {p.name: p.default for p in inspect.signature(reader).parameters.values()
            if p.name not in ("root", "dataset")}
