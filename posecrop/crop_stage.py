"""The crop stage: dataset -> pose source -> canonical repair -> Eq. 1-2 regions -> crops -> Parquet cache.

    records (scan_dataset, this shard, not yet in the cache)
      -> pose sources of the chain's head in the main process, in batches of `batch_size`
      -> worker processes (`workers`, spawn): read + decode the image, pose sources of the chain's tail (BlazePose,
         one model per worker) for the images still without keypoints, repair the poses of the batch
         (vectorised), region boxes (vectorised), five crops with the outside filled, encode
      -> CacheWriter in the main process (part files every `rows_per_part` rows of a split, atomic)

Nothing about one image can stop the run: unreadable / corrupt / truncated / empty / too-large images and missing
or unreadable keypoint files are written to CACHE/crop_report.jsonl with the reason, and the run goes on. No image
is dropped for its pose: joints whose geometry is implausible (posecrop/plausibility.py: upside down, head below the
hips, far outside the image, ...) are distrusted like low-score joints, so the canonical repair fills them or the
frame fallback places the pose; a pose whose repair fails or whose Eq. 1-2 regions still cannot be placed takes the
frame fallback too. Such rows carry the reason in the `pose_issue` column, are named in the report (status
"implausible") and counted in the summary. A worker process that dies (e.g. a crashing decoder) costs only its
image: the tasks lost with the pool are re-run one image at a time, alone in a fresh pool, and the image that kills
a worker there is reported. Workers end when the main process dies. A killed run keeps every finished part file;
re-running resumes.

Pose sources that read precomputed keypoints ("openpose-json", "posegan-csv") only need the image size, so the
main process reads just the image header for them and hands them a zero-cost stand-in array of the image's shape
(a source can declare `needs_pixels = True/False` to override this); other sources (mmpose) get the decoded image.
`--pose-source` may name a chain tried per image (posecrop.sources.chain); the `pose_source` column records which
source gave each row its keypoints ("none": no source found a joint, the frame fallback placed the pose).

Per-row `beta` is the overlap in source pixels (beta * H of Eq. 2); the schema metadata's `beta` is the fraction.

Modules: this one (CropConfig, the settings a cache records, `run_crop`: the main process), posecrop.crop_worker
(what a worker does with a batch), posecrop.crop_pool (the worker processes, surviving a worker's death),
posecrop.cache (the writer).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .crop_pool import WorkerPool
from .crop_worker import KEYPOINT_FRAME, CropTask, TaskResult, WorkerSettings
from .crops import BOX_FRAME, EXTENSIONS, FILL_MODES, PNG_COMPRESS_LEVEL, ImageDecodeError, decode_image, probe_size
from .keypoints import KEYPOINT_NAMES
from .plausibility import DEFAULT_RULES, LAST_RESORT, issue_counts
from .records import SPLITS, ImageRecord
from .regions import DEFAULT_REGION_JOINTS, REGION_NAMES, REGION_WIDTHS, RegionSpec

# the cache (pyarrow) is imported where used
if TYPE_CHECKING:
    from .cache import RunReport

PRECOMPUTED_SOURCES = ("openpose-json", "posegan-csv")
REGION_DEFINITION = ("DESIGN.md section 2 (paper Eq. 1-2): top(R0)=top(R1)=2 min y(P1) - max y(P1); "
                     "bottom(R0)=bottom(R4)=4/3 max y(P4) - 1/3 min y(P4); H = bottom - top; "
                     "R1 bottom = max y(P1) + b; "
                     "R2, R3 = [min y(Pi) - b, max y(Pi) + b]; R4 top = min y(P4) - b; b = beta * H; x in "
                     "[min(xc - H/4, min x(P0)), max(xc + H/4, max x(P0))], xc = mean x(P0)")


MIN_CROP_SIDE = 8   # the smallest crop side the network takes (reidtrain.config.check_size)


@dataclass
class CropConfig:
    """Everything the crop stage needs (defaults <- recipe TOML <- CLI flags, see reidkit.typedconfig)."""

    dataset: str = "market"
    root: Path = Path("DATA")
    out: Path = Path("CACHE")
    dataset_options: dict[str, Any] = field(default_factory=dict)
    pose_source: str | None = None          # a kind, a chain "a,b" or auto (None = auto, see sources.chain)
    pose_options: dict[str, Any] = field(default_factory=dict)
    beta: float = 0.1                       # region overlap as a fraction of the body height H (paper: H/10)
    region_width: Literal["paper", "image"] = "paper"  # "image": Eq. 1 boxes clipped to the image columns
    threshold: float = 0.1                  # joints with a lower score are repaired
    min_reliable: int = 4                   # fewer reliable joints -> frame fallback
    bank: Path | None = None                # canonical pose bank (None: the one shipped with the package)
    body_size: tuple[int, int] = (384, 192)  # (height, width) of the whole-body crop R0
    part_size: tuple[int, int] = (96, 192)   # (height, width) of the part crops R1-R4
    encoding: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 95
    fill: Literal["mean", "zeros"] = "mean"  # colour of box areas outside the image
    region_joints: dict[str, list[str]] | None = None  # override of the joint lists P0-P4 by region name
    shard: str = "0/1"
    workers: int | None = None              # None: min(4, cpu count); 0: everything in the main process
    batch_size: int = 32                    # images per pose-source batch and per worker task
    rows_per_part: int = 1000               # rows of one split per Parquet part file
    flush_seconds: float = 300.0            # also write buffered rows at least this often
    max_pixels: int = 64_000_000            # larger images are reported, not decoded
    limit: int | None = None                # process at most this many new images (smoke runs)
    progress: bool = True

    def __post_init__(self) -> None:
        self.root, self.out = Path(self.root), Path(self.out)
        if self.bank is not None:
            self.bank = Path(self.bank)
        if self.region_width not in REGION_WIDTHS:
            raise ValueError(f"region_width must be one of {REGION_WIDTHS}, got {self.region_width!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be a fraction of H in [0, 1], got {self.beta}")
        if self.min_reliable < 0:
            raise ValueError("min_reliable must be >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a joint confidence in [0, 1], got {self.threshold} (above 1 every joint "
                             f"would be repaired)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or not given: all images), got {self.limit}")
        for name in ("body_size", "part_size"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or min(size) < MIN_CROP_SIDE or max(size) > 4096:
                raise ValueError(f"{name} must be (height, width) in {MIN_CROP_SIDE}..4096 (the network needs "
                                 f">= {MIN_CROP_SIDE}), got {size}")
            setattr(self, name, (int(size[0]), int(size[1])))
        if self.encoding not in EXTENSIONS:
            raise ValueError(f"encoding must be one of {tuple(EXTENSIONS)}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {self.fill!r}")
        from .cache import Shard
        Shard.parse(self.shard)
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")
        for name in ("batch_size", "rows_per_part", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self.region_spec()  # validates the joint names
        from .sources.chain import parse_chain
        parse_chain(self.pose_source)

    def region_spec(self) -> RegionSpec:
        joints = dict(DEFAULT_REGION_JOINTS)
        unknown = sorted(set(self.region_joints or {}) - set(REGION_NAMES))
        if unknown:
            raise ValueError(f"region_joints: unknown region(s) {unknown}; regions are {REGION_NAMES}")
        joints.update({k: tuple(v) for k, v in (self.region_joints or {}).items()})
        return RegionSpec({name: tuple(joints[name]) for name in REGION_NAMES})

    def region_sizes(self) -> list[tuple[int, int]]:
        return [self.body_size] + [self.part_size] * (len(REGION_NAMES) - 1)

    def num_workers(self) -> int:
        return min(4, os.cpu_count() or 1) if self.workers is None else self.workers

    def pose_chain(self) -> Any:
        """The pose sources of this run (posecrop.sources.chain.PoseChain; `auto` resolved for the dataset root)."""
        from .sources.chain import build_chain
        return build_chain(self.pose_source, self.root, dict(self.pose_options))


@dataclass
class CropSummary:
    cache: str
    run_id: str
    shard: str
    records: int            # images of the dataset in this shard
    already_done: int       # found in the cache and skipped
    processed: int          # tried in this run
    written: int            # rows added to the cache
    failed: int             # reported as failed in this run
    skipped: int            # files the dataset scan could not use
    per_split: dict[str, int]
    repaired_joints: float  # share of the written joints that were repaired
    fallback_joints: float  # share taken from the frame fallback
    seconds: float
    report: str
    pose_sources: dict[str, int] = field(default_factory=dict)  # written rows per source of their keypoints
    # poses whose joints were distrusted despite their scores: {"implausible", "repaired", "fallback", "by_rule"}
    pose_issues: dict = field(default_factory=dict)
    excluded: int = 0       # files the protocol leaves out (Market / Duke junk, pid -1): counted, not cropped

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ settings


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def build_settings(cfg: CropConfig, source_description: dict, bank_sha256: str) -> dict:
    """The schema metadata that says how a cache was made (compared on resume)."""
    spec = cfg.region_spec()
    encoding: dict[str, Any] = {"format": cfg.encoding}
    if cfg.encoding == "jpeg":
        encoding.update(quality=cfg.jpeg_quality, chroma_subsampling="4:2:0")
    else:
        encoding.update(compress_level=PNG_COMPRESS_LEVEL)
    return {
        "dataset": cfg.dataset,
        "dataset_options": _plain(cfg.dataset_options),
        "keypoint_names": list(KEYPOINT_NAMES),
        "regions": {name: {"joints": list(spec.joints[name]), "size": list(size)}
                    for name, size in zip(REGION_NAMES, cfg.region_sizes())},
        "region_definition": REGION_DEFINITION,
        "box_frame": BOX_FRAME,
        "keypoint_frame": KEYPOINT_FRAME,
        "beta": cfg.beta,
        "region_width": cfg.region_width,
        "beta_column": "per-row beta = beta * H in source pixels",
        "threshold": cfg.threshold,
        "min_reliable": cfg.min_reliable,
        "crop_sizes": {"body": list(cfg.body_size), "part": list(cfg.part_size)},
        "encoding": encoding,
        "fill": cfg.fill,
        "whole": "the source image file bytes, unchanged",
        "pose_source": source_description,
        "canonical_bank_sha256": bank_sha256,
        "joint_source_codes": {"0": "detected", "1": "repaired", "2": "fallback"},
        "plausibility": {"rules": DEFAULT_RULES.as_dict(),
                         "pose_issue": "rules that distrusted joints despite their scores ': ' repaired | fallback "
                                       "(posecrop/plausibility.py); last resort: " + "; ".join(
                                           f"{k}: {v}" for k, v in LAST_RESORT.items())},
    }


# ------------------------------------------------------------------------------------------------ the run


_NO_PIXELS = np.zeros((1, 1, 3), np.uint8)


def _needs_pixels(source: Any) -> bool:
    flag = getattr(source, "needs_pixels", None)
    return bool(flag) if flag is not None else getattr(source, "name", "") not in PRECOMPUTED_SOURCES


def _estimate(chain: Any, records: list[ImageRecord], cfg: CropConfig, report: RunReport
              ) -> tuple[list[ImageRecord], np.ndarray, np.ndarray, Any]:
    """Run the main-process sources of the pose chain on one batch; images they fail are reported and dropped.
    Returns the images left, their keypoints / scores so far and the chain state (images still without keypoints
    go on to the worker-side sources)."""
    from .sources import PoseBatchItem
    from .sources.chain import ChainState, advance, finish

    if not chain.head:  # every source runs in the workers, which read the images themselves
        state = ChainState.empty(len(records))
        return records, state.keypoints, state.scores, state
    pixels = any(_needs_pixels(source) for source in chain.head)
    items: list[PoseBatchItem] = []
    for rec in records:
        path = cfg.root / rec.path
        try:
            if pixels:
                image = decode_image(path.read_bytes(), rec.path, cfg.max_pixels).rgb
            else:
                w, h = probe_size(path, cfg.max_pixels)
                image = np.broadcast_to(_NO_PIXELS, (h, w, 3))
        except ImageDecodeError as e:
            report.add("failed", rec.path, str(e), rec.split)
            continue
        except (OSError, ValueError, SyntaxError) as e:
            report.add("failed", rec.path, f"{rec.path}: cannot read the image ({type(e).__name__}: {e})", rec.split)
            continue
        items.append(PoseBatchItem(rec, image))
    state = ChainState.empty(len(items))
    advance(chain.head, chain.names[:len(chain.head)], items, state)
    if not chain.tail:
        finish(state)
    for i, reason in state.failed.items():
        report.add("failed", items[i].record.path, reason, items[i].record.split)
    ok = [i for i in range(len(items)) if i not in state.failed]
    state = state.take(ok)
    return [items[i].record for i in ok], state.keypoints, state.scores, state


def run_crop(cfg: CropConfig, pose_source: Any | None = None, bank: Any | None = None) -> CropSummary:
    """Run the crop stage for `cfg` (see the module docstring). `pose_source` (a PoseSource) overrides
    cfg.pose_source, `bank` (a CanonicalBank) overrides cfg.bank."""
    from .cache import CacheWriter, RunReport, Shard
    from .canonical import load_bank
    from .datasets import resolve_dataset_options, scan_dataset_all
    from .schema import WHOLE_COLUMN

    t0 = time.perf_counter()
    shard = Shard.parse(cfg.shard)
    resolved = resolve_dataset_options(cfg.dataset, cfg.root, cfg.dataset_options)
    records, skipped, excluded = scan_dataset_all(cfg.dataset, cfg.root, **resolved)
    records = [r for r in records if shard.owns(r.path)]
    from .sources.chain import PoseChain
    chain = cfg.pose_chain() if pose_source is None else (
        pose_source if isinstance(pose_source, PoseChain) else PoseChain([pose_source]))
    bank = load_bank(cfg.bank) if bank is None else bank
    settings = build_settings(cfg, chain.describe(), bank.sha256)
    settings["dataset_options_resolved"] = _plain(resolved)
    report = RunReport(cfg.out)
    for path, reason in skipped:
        if shard.owns(path):
            report.add("skipped", path, reason)

    per_split = {s: 0 for s in SPLITS}
    joint_counts = np.zeros(3, dtype=np.int64)
    pose_counts: dict[str, int] = {}
    failed = 0
    issues: list[str] = []
    with CacheWriter(cfg.out, settings, shard, cfg.rows_per_part, cfg.flush_seconds, report) as writer:
        todo = [r for r in records if r.path not in writer.done]
        already = len(records) - len(todo)
        if cfg.limit is not None:
            todo = todo[: cfg.limit]
        wsettings = WorkerSettings(str(cfg.root), bank, cfg.region_spec(), cfg.beta, cfg.threshold, cfg.min_reliable,
                                   cfg.region_sizes(), cfg.encoding, cfg.jpeg_quality, cfg.fill, cfg.max_pixels,
                                   WHOLE_COLUMN, chain.tail, chain.names[len(chain.head):],
                                   region_width=cfg.region_width)
        # one batch or less is not worth starting processes for; never more workers than batches
        workers = min(cfg.num_workers(), -(-len(todo) // cfg.batch_size)) if len(todo) > cfg.batch_size else 0

        def consume(results: list[TaskResult]) -> None:
            nonlocal failed
            for res in results:
                if res.batch:
                    writer.add_batch(res.batch)
                    for split in res.batch["split"]:
                        per_split[split] += 1
                    joint_counts[:] += np.bincount(res.batch["joint_source"].ravel(), minlength=3)[:3]
                    for name in res.batch["pose_source"]:
                        pose_counts[str(name)] = pose_counts.get(str(name), 0) + 1
                    for image_id, split, issue in zip(res.batch["image_id"], res.batch["split"],
                                                      res.batch["pose_issue"]):
                        if issue:   # kept, with its pose repaired or placed by the frame: named in the report
                            report.add("implausible", image_id, issue, split)
                            issues.append(issue)
                for rec, reason in res.failures:
                    report.add("failed", rec.path, reason, rec.split)
                    failed += 1
                progress.advance(res.num_rows + len(res.failures))

        label = f"crop {cfg.dataset}" + (f" (shard {shard})" if shard.count > 1 else "")
        progress = _Progress(cfg.progress, len(todo), label)
        pool = WorkerPool(workers, wsettings) if todo else None
        try:
            with progress:
                for start in range(0, len(todo), cfg.batch_size):
                    batch = todo[start:start + cfg.batch_size]
                    before = report.counts.get("failed", 0)
                    recs, kps, scores, state = _estimate(chain, batch, cfg, report)
                    n_pose_failed = report.counts.get("failed", 0) - before
                    failed += n_pose_failed
                    progress.advance(n_pose_failed)
                    if recs:
                        consume(pool.submit(CropTask(recs, kps, scores, state)))  # type: ignore[union-attr]
                    consume(pool.collect(block=False) if pool else [])
                if pool is not None:
                    consume(pool.drain())
        finally:
            if pool is not None:
                pool.close()
        total_joints = max(int(joint_counts.sum()), 1)
        summary = CropSummary(
            cache=str(cfg.out), run_id=report.run_id, shard=str(shard), records=len(records), already_done=already,
            processed=len(todo), written=sum(per_split.values()), failed=failed,
            skipped=sum(1 for p, _ in skipped if shard.owns(p)), per_split=per_split,
            repaired_joints=float(joint_counts[1] / total_joints),
            fallback_joints=float(joint_counts[2] / total_joints),
            seconds=round(time.perf_counter() - t0, 3), report=str(report.path), pose_sources=pose_counts,
            pose_issues=issue_counts(issues), excluded=sum(1 for p, _ in excluded if shard.owns(p)))
        report.add_summary({k: v for k, v in summary.as_dict().items() if k not in ("run_id", "report")})
    return summary


class _Progress:
    """A rich progress bar (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self.enabled = enabled
        self.total = total
        self.title = title
        self._progress = None
        self._task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn())
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        if self._progress is not None and n:
            self._progress.advance(self._task, n)  # type: ignore[arg-type]
