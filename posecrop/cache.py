"""The crop cache writer: atomic part files, resume, shards, locks, the run report; `cache_info` for `info`.

Layout (see posecrop.schema; reading a cache is posecrop.cache_reader, the contract with the training stage):
    CACHE/<split>/part-<shard>-<seq>.parquet   e.g. part-000of001-000003.parquet; one folder per split
    CACHE/crop_report.jsonl                    skipped / failed images with the reason, one JSON object per line
    CACHE/.lock-<shard>                        lock file of the process writing that shard
    CACHE/.lock-count-<n>, CACHE/.lock-counts  shard-count locks (writers at the same time use one count n)

- Part files are written atomically (temporary file + rename, reidkit.atomic): a killed run never leaves a
  half-written part under its final name, and the next run removes the temporaries of its own shard.
- Resume: a writer reads the `image_id` column of every existing part (all splits, all shards) and the crop
  stage skips those images. A resumed run must use the same settings (checked; see `settings_mismatch`).
- Shards: `--shard i/n` takes the images whose stable hash (blake2b of image_id) mod n is i. One lock file per
  shard (fcntl.flock, non-blocking): a second process on the same shard stops with CacheLockedError; different
  shards write different file names and run side by side. Shards of different counts overlap (0/1 owns all
  of 0/2), so a writer is refused while another process writes the cache with another shard count.
- Report: entries are appended in blocks (one locked write per flush, every line tagged with the run id), so a
  killed run keeps what it reported up to its last flush; a truncated last line is skipped by `read_report`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reidkit.atomic import atomic_path, is_temporary
from reidkit.errors import ReidError
from reidkit.pause import pause_point

from .cache_reader import (PART_RE, REPORT_NAME, CacheError, all_part_files, cache_settings, check_relative_path,
                           empty_split_reason, existing_image_ids, part_files, read_report, read_split)
from .records import SPLITS
from .schema import IMAGE_COLUMNS, IMAGE_STRUCT, POSE_SOURCE_COLUMN, cache_schema, read_settings

ROW_GROUP_SIZE = 256  # rows per Parquet row group: bounded memory when a reader streams a split
# settings that may differ between runs filling one cache (paths to precomputed keypoints differ between machines)
_POSE_SOURCE_KEYS_COMPARED = ("backend", "config", "checkpoint_sha256", "model")
# "auto" dataset options as resolved for the files found (CUHK03 protocol); older caches lack it
_COMPARED_WHEN_BOTH_HAVE = ("dataset_options_resolved",)


class CacheLockedError(ReidError, RuntimeError):
    """Another process holds the lock of the shard this process wants to write."""

    exit_code = 3


class CacheWriteError(ReidError, OSError):
    """A cache file cannot be written (disk full, file size limit, read-only); names the file. Nothing
    half-written is left under a final name and the finished part files are kept: re-running resumes."""

    def __init__(self, path: Path, error: OSError, what: str) -> None:
        reason = error.strerror or str(error)
        super().__init__(error.errno, f"{path}: cannot write {what} ({reason}); the part files already written "
                                      "are kept and nothing half-written is left: make room (or fix the folder) "
                                      "and re-run the same command to resume")
        self.path = Path(path)


# ------------------------------------------------------------------------------------------------ paths, shards


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int) and 0 <= self.index < self.count):
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}")
        return cls(int(m[1]), int(m[2]))

    @property
    def token(self) -> str:
        return f"{self.index:03d}of{self.count:03d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, image_id: str) -> bool:
        return shard_of(image_id, self.count) == self.index


def shard_of(image_id: str, count: int) -> int:
    """Stable shard of an image id (the same on every machine and Python version)."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


# ------------------------------------------------------------------------------------------------ part files


def settings_mismatch(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between the settings of an existing cache and a new run (format_version
    included). Of the pose source only its backend / model identity counts, not paths to precomputed files."""
    def comparable(s: dict) -> dict:
        s = dict(s)
        src = s.pop("pose_source", None) or {}
        s["pose_source"] = {k: src[k] for k in _POSE_SOURCE_KEYS_COMPARED if k in src}
        return json.loads(json.dumps(s, sort_keys=True))
    a, b = comparable(old), comparable(new)
    for key in _COMPARED_WHEN_BOTH_HAVE:   # caches written before the key existed
        if key not in a or key not in b:
            a.pop(key, None)
            b.pop(key, None)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------------------ lock


class ShardLock:
    """An exclusive, non-blocking fcntl.flock on CACHE/.lock-<shard>; released on close or process death.

    Plus a shared flock on CACHE/.lock-count-<n> for the shard count n: shards of different counts overlap
    (0/1 owns every image of 0/2), so a writer is refused while another process writes the cache with another
    shard count (checked under the short exclusive lock CACHE/.lock-counts)."""

    def __init__(self, cache: Path, shard: Shard) -> None:
        self.path = Path(cache) / f".lock-{shard.token}"
        self.shard = shard
        self._fd: int | None = None
        self._count_fd: int | None = None

    def acquire(self) -> None:
        self._acquire_shard()
        try:
            self._acquire_count()
        except BaseException:
            self.release()
            raise

    def _acquire_count(self) -> None:
        """Shared lock on this shard count's file, refused while a writer of another count holds its own."""
        cache = self.path.parent
        mutex = os.open(cache / ".lock-counts", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            for other in sorted(cache.glob(".lock-count-*")):
                if other.name == f".lock-count-{self.shard.count:03d}":
                    continue
                fd = os.open(other, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    count = other.name.rsplit("-", 1)[-1].lstrip("0") or "0"
                    raise CacheLockedError(
                        f"cache {cache} is being written by another process with --shard i/{count}; shards of "
                        f"different counts overlap, so every process filling one cache at the same time must use "
                        f"the same count (this one: {self.shard}). Wait for it to finish (lock file {other})"
                    ) from None
                finally:
                    os.close(fd)
            fd = os.open(cache / f".lock-count-{self.shard.count:03d}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)  # nobody probes it now: the probing process holds the mutex
            self._count_fd = fd
        finally:
            os.close(mutex)  # releases the mutex

    def _acquire_shard(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheLockedError(
                    f"shard {self.shard} of cache {self.path.parent} is being written by another process"
                    f"{f' (pid {holder})' if holder else ''}; lock file {self.path}. Wait for it to finish, or run "
                    f"a different --shard") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        for name in ("_count_fd", "_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, None)


# ------------------------------------------------------------------------------------------------ report


class RunReport:
    """Skipped / failed images of one run, appended to CACHE/crop_report.jsonl in locked blocks."""

    def __init__(self, cache: str | os.PathLike, run_id: str | None = None) -> None:
        self.path = Path(cache) / REPORT_NAME
        self.run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + f"-{os.getpid()}"
        self.pending: list[dict] = []
        self.counts: dict[str, int] = {}

    def add(self, status: str, image_id: str, reason: str, split: str | None = None) -> None:
        self.pending.append({"run": self.run_id, "status": status, "image_id": image_id, "split": split,
                             "reason": reason})
        self.counts[status] = self.counts.get(status, 0) + 1

    def add_summary(self, summary: dict) -> None:
        self.pending.append({"run": self.run_id, "status": "summary", **summary})

    def flush(self) -> None:
        """Append the pending entries as one block (exclusive flock on the report while writing, then fsync)."""
        if not self.pending:
            return
        block = "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.pending).encode("utf-8")
        try:
            self._append(block)
        except OSError as e:
            raise CacheWriteError(self.path, e, "the run report") from e
        self.pending.clear()

    def _append(self, block: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                block = b"\n" + block  # end the torn line of a killed run: it must not swallow our first entry
            view = memoryview(block)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ writer


def _fixed_list(values: np.ndarray, dtype: pa.DataType, field_type: pa.DataType) -> pa.Array:
    """(N, a[, b]) numpy -> nested fixed-size list array of `field_type`."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=dtype)
    arr = flat
    for size in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr.cast(field_type)


class CacheWriter:
    """Writes rows into part files of one shard. Use as a context manager:

        with CacheWriter(cache, settings, Shard(0, 1), rows_per_part=500) as w:
            todo = [r for r in records if r.path not in w.done and w.shard.owns(r.path)]
            w.add(row) ...

    A row is a dict with the schema's columns: numpy arrays for keypoints (18, 2), scores (18,), joint_source (18,),
    boxes (5, 4), outside (5,); image columns as {"bytes": ..., "path": ...}. `add_batch` takes the same columns for
    many rows at once (see `rows_to_batch`): what the crop workers send, cheap to pickle and to turn into Arrow.
    """

    def __init__(self, cache: str | os.PathLike, settings: dict, shard: Shard = Shard(), rows_per_part: int = 1000,
                 flush_seconds: float | None = 300.0, report: RunReport | None = None) -> None:
        if rows_per_part < 1:
            raise ValueError("rows_per_part must be >= 1")
        self.cache = Path(cache)
        self.settings = settings
        self.schema = cache_schema(settings)
        self.shard = shard
        self.rows_per_part = rows_per_part
        self.flush_seconds = flush_seconds
        self.report = report
        self.lock = ShardLock(self.cache, shard)
        self.done: set[str] = set()
        self.written = 0
        self.parts_written: list[Path] = []
        self._buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}  # batches
        self._buffered: dict[str, int] = {s: 0 for s in SPLITS}
        self._seq = 0
        self._last_flush = time.monotonic()

    # -- lifecycle
    def __enter__(self) -> "CacheWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._remove_own_temporaries()
            parts = all_part_files(self.cache)
            if parts:
                try:
                    old = read_settings(pq.read_schema(parts[0]))
                except (pa.ArrowException, OSError) as e:
                    raise CacheError(f"{parts[0]}: unreadable part file ({e}); move it away and re-run to redo "
                                     "its images") from e
                diff = settings_mismatch(old, {"format_version": json.loads(self.schema.metadata[b"posecrop"])
                                               ["format_version"], **self.settings})
                if diff:
                    raise CacheError(
                        f"{self.cache} was made with other settings ({', '.join(diff)} differ, see {parts[0]}); "
                        "resume with the same settings or write to a new --out folder")
            self.done = existing_image_ids(self.cache)
            seqs = [int(m["seq"]) for p in parts if (m := PART_RE.match(p.name)) and m["shard"] == self.shard.token]
            self._seq = max(seqs, default=-1) + 1
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.lock.release()

    def _remove_own_temporaries(self) -> None:
        prefix = f".part-{self.shard.token}-"
        for split in SPLITS:
            folder = self.cache / split
            if folder.is_dir():
                for p in folder.iterdir():
                    if is_temporary(p) and p.name.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()

    # -- writing
    def add(self, row: dict) -> None:
        self.add_batch(rows_to_batch([row]))

    def add_batch(self, batch: dict) -> None:
        """Buffer a batch of rows; every split whose buffer reaches rows_per_part is written as a part file."""
        splits = batch["split"]
        for name in _OPTIONAL_STRINGS:
            if name not in batch:
                batch = {**batch, name: [""] * len(splits)}
        for image_id, split in zip(batch["image_id"], splits):
            if split not in SPLITS:
                raise ValueError(f"{image_id}: split {split!r} is not one of {SPLITS}")
            check_relative_path(image_id, "image_id")
        for split in SPLITS:
            idx = [i for i, sp in enumerate(splits) if sp == split]
            if not idx:
                continue
            self._buffers[split].append(batch if len(idx) == len(splits) else take_batch(batch, idx))
            self._buffered[split] += len(idx)
            while self._buffered[split] >= self.rows_per_part:
                self._write_part(split, self.rows_per_part)
                if self.report is not None:
                    self.report.flush()
        self.done.update(batch["image_id"])
        if self.flush_seconds is not None and time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every non-empty buffer as a part file (and the pending report entries)."""
        for split in SPLITS:
            if self._buffered[split]:
                self._write_part(split, self._buffered[split])
        if self.report is not None:
            self.report.flush()
        self._last_flush = time.monotonic()

    def _write_part(self, split: str, n: int) -> Path:
        """Write the first n buffered rows of `split` as the next part file."""
        merged = concat_batches(self._buffers[split])
        total = batch_len(merged)
        table = batch_to_table(take_batch(merged, range(n)) if n < total else merged, self.schema)
        path = self.cache / split / f"part-{self.shard.token}-{self._seq:06d}.parquet"
        try:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression=_COMPRESSION,
                               use_dictionary=["dataset", "split"], write_statistics=_STATISTICS)
                pause_point("part-temp")
        except OSError as e:
            raise CacheWriteError(path, e, f"this part file of {n} rows") from e
        # the bookkeeping right after the rename, before anything that can be interrupted: a Ctrl-C here must not
        # leave the written rows in the buffer, where the interrupt's flush would write them a second time
        self._seq += 1
        self.written += n
        self.parts_written.append(path)
        self._buffers[split] = [take_batch(merged, range(n, total))] if n < total else []
        self._buffered[split] = total - n
        self._last_flush = time.monotonic()
        pause_point("part-written")
        return path


_COMPRESSION = {**{f"{c}.bytes": "NONE" for c in IMAGE_COLUMNS}, **{f"{c}.path": "SNAPPY" for c in IMAGE_COLUMNS}}
_STATISTICS = ["image_id", "pid", "camid", "width", "height"]
for _f in cache_schema().names:
    if _f not in IMAGE_COLUMNS:
        _COMPRESSION.setdefault(_f, "SNAPPY")


_SCALAR_TYPES = {"pid": np.int32, "camid": np.int16, "width": np.int32, "height": np.int32, "beta": np.float32}
_ARRAY_TYPES = {"keypoints": np.float32, "scores": np.float32, "joint_source": np.int8, "boxes": np.float32,
                "outside": np.float32}
_STRING_COLUMNS = ("image_id", "dataset", "split")
_OPTIONAL_STRINGS = ("pose_issue",)  # "" when a row or batch lacks it


def rows_to_batch(rows: Sequence[dict]) -> dict:
    """Row dicts -> one batch: lists for strings, stacked numpy arrays for numbers, {"bytes": [...], "path": [...]}
    for the image columns."""
    batch: dict[str, Any] = {name: [r[name] for r in rows] for name in _STRING_COLUMNS}
    for name in _OPTIONAL_STRINGS:
        batch[name] = [r.get(name) or "" for r in rows]
    for name, dtype in _SCALAR_TYPES.items():
        batch[name] = np.array([r[name] for r in rows], dtype=dtype)
    for name, dtype in _ARRAY_TYPES.items():
        batch[name] = np.stack([np.asarray(r[name], dtype=dtype) for r in rows])
    batch[POSE_SOURCE_COLUMN] = [r.get(POSE_SOURCE_COLUMN) for r in rows]
    for name in IMAGE_COLUMNS:
        batch[name] = {"bytes": [r[name]["bytes"] for r in rows], "path": [r[name]["path"] for r in rows]}
    return batch


def batch_len(batch: dict) -> int:
    return len(batch["image_id"])


def take_batch(batch: dict, index: Sequence[int] | range) -> dict:
    """The rows `index` of a batch."""
    idx = list(index)
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if isinstance(value, dict):
            out[name] = {k: [v[i] for i in idx] for k, v in value.items()}
        elif isinstance(value, np.ndarray):
            out[name] = value[idx]
        else:
            out[name] = [value[i] for i in idx]
    return out


def concat_batches(batches: Sequence[dict]) -> dict:
    if len(batches) == 1:
        return batches[0]
    out: dict[str, Any] = {}
    for name, first in batches[0].items():
        if isinstance(first, dict):
            out[name] = {k: [x for b in batches for x in b[name][k]] for k in first}
        elif isinstance(first, np.ndarray):
            out[name] = np.concatenate([b[name] for b in batches])
        else:
            out[name] = [x for b in batches for x in b[name]]
    return out


def batch_to_table(batch: dict, schema: pa.Schema) -> pa.Table:
    """A batch (see rows_to_batch) -> an Arrow table of the cache schema; stored paths are validated."""
    cols: dict[str, pa.Array] = {}
    for name in _STRING_COLUMNS:
        cols[name] = pa.array(batch[name], type=pa.string())
    for name in _OPTIONAL_STRINGS:
        cols[name] = pa.array(batch.get(name) or [""] * len(batch["image_id"]), type=pa.string())
    for name, dtype in _SCALAR_TYPES.items():
        cols[name] = pa.array(np.asarray(batch[name], dtype=dtype), type=schema.field(name).type)
    for name, dtype in _ARRAY_TYPES.items():
        cols[name] = _fixed_list(np.asarray(batch[name]), pa.from_numpy_dtype(dtype), schema.field(name).type)
    cols[POSE_SOURCE_COLUMN] = pa.array(batch.get(POSE_SOURCE_COLUMN) or [None] * len(batch["image_id"]), pa.string())
    for name in IMAGE_COLUMNS:
        paths = batch[name]["path"]
        for image_id, path in zip(batch["image_id"], paths):
            check_relative_path(path, f"{image_id}: {name}.path")
        cols[name] = pa.StructArray.from_arrays(
            [pa.array(batch[name]["bytes"], pa.binary()), pa.array(paths, pa.string())], fields=list(IMAGE_STRUCT))
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def rows_to_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Rows (see CacheWriter) -> an Arrow table of the cache schema."""
    return batch_to_table(rows_to_batch(rows), schema)


# ------------------------------------------------------------------------------------------------ readers


def cache_info(cache: str | os.PathLike) -> dict:
    """Numbers behind `python cli.py info`: per split rows, identities, cameras, part files, share of repaired /
    fallback joints, mean share of the body box outside the image, duplicate image ids, implausible poses (by rule
    and outcome, see posecrop.plausibility.issue_counts); settings; report counts."""
    from .plausibility import issue_counts

    cache = Path(cache)
    if not all_part_files(cache):
        raise CacheError(f"{cache}: no part files (expected {'/'.join(SPLITS)}/part-*.parquet)")
    splits: dict[str, dict] = {}
    for split in SPLITS:
        parts = part_files(cache, split)
        if not parts:
            continue
        columns = ["image_id", "pid", "camid", "joint_source", "outside"]
        has_issue = all("pose_issue" in pq.read_schema(p).names for p in parts)  # older caches lack it
        t = read_split(cache, split, columns + ["pose_issue"] if has_issue else columns)
        issues = t.column("pose_issue").to_pylist() if has_issue else [""] * t.num_rows
        pose_sources: dict[str, int] = {}
        for part in parts:  # per part: caches written before the column existed lack it
            try:
                names = pq.read_table(part, columns=[POSE_SOURCE_COLUMN]).column(0).to_pylist()
            except (pa.ArrowException, KeyError):
                names = [None] * pq.ParquetFile(part).metadata.num_rows
            for name in names:
                key = name if name is not None else "unrecorded"
                pose_sources[key] = pose_sources.get(key, 0) + 1
        js = t.column("joint_source").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        counts = np.bincount(js.astype(np.int64), minlength=3) if len(js) else np.zeros(3, np.int64)
        out = t.column("outside").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, 5)
        total = max(int(counts.sum()), 1)
        splits[split] = {
            "rows": t.num_rows, "ids": len(set(t.column("pid").to_pylist())),
            "cameras": len(set(t.column("camid").to_pylist())), "parts": len(parts),
            "repaired_joints": float(counts[1] / total), "fallback_joints": float(counts[2] / total),
            "body_outside": float(out[:, 0].mean()) if len(out) else 0.0,
            "duplicates": t.num_rows - len(set(t.column("image_id").to_pylist())),
            "pose_sources": dict(sorted(pose_sources.items())),
            "pose_issues": issue_counts(issues) if has_issue else None,   # None: cache written before pose_issue
        }
    entries = read_report(cache)
    runs = [e for e in entries if e.get("status") == "summary"]
    last = runs[-1]["run"] if runs else (entries[-1].get("run") if entries else None)
    report = {"path": str(cache / REPORT_NAME), "runs": len({e.get("run") for e in entries}),
              "failed": sum(e.get("status") == "failed" for e in entries),
              "skipped": sum(e.get("status") == "skipped" for e in entries),
              "implausible": sum(e.get("status") == "implausible" for e in entries),   # kept, pose repaired
              "last_run_failed": sum(e.get("status") == "failed" and e.get("run") == last for e in entries)}
    empty = {split: empty_split_reason(cache, split) for split in SPLITS if split not in splits}
    return {"cache": str(cache), "splits": splits, "settings": cache_settings(cache), "report": report,
            "empty_splits": empty}
