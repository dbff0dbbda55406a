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
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from reidkit.errors import ReidError

from .crops import (BOX_FRAME, EXTENSIONS, FILL_MODES, PNG_COMPRESS_LEVEL, ImageDecodeError, crop_regions, decode_image,
                    encode_image, outside_fraction, probe_size)
from .keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from .plausibility import (DEFAULT_RULES, LAST_RESORT, PlausibilityRules, check_poses, distrust, format_issue,
                           issue_counts)
from .records import ImageRecord
from .regions import (DEFAULT_REGION_JOINTS, REGION_NAMES, REGION_WIDTHS, RegionGeometryError, RegionSpec, fit_width,
                      region_boxes)
from .schema import SPLITS

# Worker processes import this module: it stays free of pyarrow (cache / schema are imported where used).
if TYPE_CHECKING:
    from .cache import RunReport

PRECOMPUTED_SOURCES = ("openpose-json", "posegan-csv")
REGION_DEFINITION = ("DESIGN.md section 2 (paper Eq. 1-2): top(R0)=top(R1)=2 min y(P1) - max y(P1); "
                     "bottom(R0)=bottom(R4)=4/3 max y(P4) - 1/3 min y(P4); H = bottom - top; R1 bottom = max y(P1) + b; "
                     "R2, R3 = [min y(Pi) - b, max y(Pi) + b]; R4 top = min y(P4) - b; b = beta * H; x in "
                     "[min(xc - H/4, min x(P0)), max(xc + H/4, max x(P0))], xc = mean x(P0)")
# Keypoint sources (OpenPose, pose-gan, mmpose, our synth) put pixel i's centre at coordinate i; the crop frame has
# it at i + 0.5. Eq. 1-2 is translation-equivariant, so boxes = region_boxes(keypoints) + PIXEL_CENTRE.
KEYPOINT_FRAME = "source pixels, pixel centres at integer coordinates (as OpenPose writes them)"
PIXEL_CENTRE = 0.5


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


# ------------------------------------------------------------------------------------------------ worker side


@dataclass
class WorkerSettings:
    root: str
    bank: Any                       # CanonicalBank (pickled once per worker)
    spec: RegionSpec
    beta: float
    threshold: float
    min_reliable: int
    sizes: list[tuple[int, int]]
    encoding: str
    jpeg_quality: int
    fill: str
    max_pixels: int
    whole_column: str = "whole"
    pose_tail: list = field(default_factory=list)        # chain sources run here, on the decoded image
    pose_tail_names: list = field(default_factory=list)
    rules: PlausibilityRules = DEFAULT_RULES   # which detected joints are implausible (posecrop/plausibility.py)
    region_width: str = "paper"


@dataclass
class CropTask:
    records: list[ImageRecord]
    keypoints: np.ndarray   # (B, 18, 2)
    scores: np.ndarray      # (B, 18)
    chain: Any = None       # sources.chain.ChainState: pose source per image, images left for the worker's sources

    def split(self) -> list["CropTask"]:
        return [CropTask([r], self.keypoints[i:i + 1], self.scores[i:i + 1],
                         self.chain.take([i]) if self.chain is not None else None) for i, r in enumerate(self.records)]


@dataclass
class TaskResult:
    """What a worker sends back: the finished rows as one column batch (see posecrop.cache.rows_to_batch; None
    when no image of the task succeeded) and the failed images with the reason."""

    batch: dict | None
    failures: list[tuple[ImageRecord, str]]

    @property
    def num_rows(self) -> int:
        return len(self.batch["image_id"]) if self.batch else 0


_WORKER: WorkerSettings | None = None


def _init_worker(settings: WorkerSettings, watch_parent: bool = False) -> None:
    global _WORKER
    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")
    _WORKER = settings
    if watch_parent:
        # Ctrl-C reaches the whole process group: the main process stops the pool (after saving the finished
        # rows); a worker interrupted in the middle would only print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker when the main process dies (e.g. SIGKILL): an orphaned pool worker would otherwise wait
    forever for tasks, since it holds both ends of the task queue itself."""
    import threading
    from multiprocessing import connection

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_task(task: CropTask) -> TaskResult:
    assert _WORKER is not None, "worker not initialised"
    return process_task(task, _WORKER)


def _split_suffix(image_id: str) -> tuple[str, str]:
    """'a/b.c.jpg' -> ('a/b.c', '.jpg') (plain string work: this runs for every crop)."""
    dot = image_id.rfind(".")
    return (image_id[:dot], image_id[dot:]) if dot > image_id.rfind("/") + 1 else (image_id, "")


def _crop_path(image_id: str, region: str, ext: str) -> str:
    return f"{_split_suffix(image_id)[0]}_{region}{ext}"


def _whole_path(image_id: str, ext: str) -> str:
    """image_id, with the extension of the real format when the file's own extension says otherwise."""
    base, suffix = _split_suffix(image_id)
    same = {".jpeg": ".jpg", ".jpe": ".jpg", ".tiff": ".tif"}
    return image_id if same.get(suffix.lower(), suffix.lower()) == ext else base + ext


def _boxes_per_pose(keypoints: np.ndarray, spec: RegionSpec, beta: float) -> list[np.ndarray | str]:
    """region_boxes for the batch, moved from the keypoint frame to the box frame (see PIXEL_CENTRE); poses it
    cannot place get the reason instead of boxes."""
    try:
        return list(region_boxes(keypoints, spec, beta) + PIXEL_CENTRE)
    except RegionGeometryError:
        out: list[np.ndarray | str] = []
        for kp in keypoints:
            try:
                out.append(region_boxes(kp[None], spec, beta)[0] + PIXEL_CENTRE)
            except RegionGeometryError as e:
                out.append(f"regions: {str(e).split(': ', 1)[-1]}")
        return out


def _repair(kp: np.ndarray, sc: np.ndarray, sizes_wh: np.ndarray, s: WorkerSettings
            ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Canonical repair of a batch; if the batch fails, pose by pose (a bad pose gets its reason)."""
    from .canonical import repair

    try:
        r = repair(kp, sc, s.bank, threshold=s.threshold, min_reliable=s.min_reliable, image_size=sizes_wh)
        return r.keypoints, r.joint_source, [None] * len(kp)
    except (ValueError, FloatingPointError):
        pass
    keypoints = np.zeros(kp.shape, np.float32)
    source = np.zeros(sc.shape, np.int8)
    errors: list[str | None] = []
    for i in range(len(kp)):
        try:
            r = repair(kp[i:i + 1], sc[i:i + 1], s.bank, threshold=s.threshold, min_reliable=s.min_reliable,
                       image_size=sizes_wh[i:i + 1])
            keypoints[i], source[i] = r.keypoints[0], r.joint_source[0]
            errors.append(None)
        except (ValueError, FloatingPointError) as e:
            errors.append(f"canonical repair failed ({e})")
    return keypoints, source, errors


def _worker_poses(task: CropTask, keep: list[int], decoded: list, s: WorkerSettings,
                  failures: list[tuple[ImageRecord, str]]) -> tuple[list[int], list, list[str | None]]:
    """Run the chain's worker-side sources on the decoded images still without keypoints; returns the images kept
    (index into the task, decoded image) and the pose source of each."""
    if task.chain is None:
        return keep, decoded, [None] * len(keep)
    from .sources.base import PoseBatchItem
    from .sources.chain import advance, finish

    state = task.chain.take(keep)
    if state.pending() and s.pose_tail:
        items = [PoseBatchItem(task.records[i], d.rgb) if n is None else None
                 for i, (_, d), n in zip(keep, decoded, state.names)]
        advance(s.pose_tail, s.pose_tail_names, items, state)  # type: ignore[arg-type]
    finish(state)
    task.keypoints[keep], task.scores[keep] = state.keypoints, state.scores
    ok = []
    for j, i in enumerate(keep):
        if j in state.failed:
            rec = task.records[i]
            failures.append((rec, state.failed[j] if rec.path in state.failed[j] else f"{rec.path}: {state.failed[j]}"))
        else:
            ok.append(j)
    return [keep[j] for j in ok], [decoded[j] for j in ok], [state.names[j] for j in ok]
def _frame_fallback(kp: np.ndarray, sizes_wh: np.ndarray, s: WorkerSettings) -> tuple[np.ndarray, np.ndarray]:
    """The frame fallback for poses none of whose joints can be trusted (the bank's mean pose placed by the frame)."""
    from .canonical import repair

    n = len(kp)
    r = repair(np.full((n, NUM_KEYPOINTS, 2), np.nan, np.float32), np.zeros((n, NUM_KEYPOINTS), np.float32), s.bank,
               threshold=s.threshold, min_reliable=s.min_reliable, image_size=sizes_wh)
    return r.keypoints, r.joint_source


def _place(kp: np.ndarray, sc: np.ndarray, sizes_wh: np.ndarray, s: WorkerSettings
           ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | str], list[str]]:
    """Plausibility -> repair -> Eq. 1-2 boxes (clipped to the image columns when region_width is "image") for a
    batch. Joints the plausibility rules distrust are repaired like low-score ones (or the pose takes the frame
    fallback); a pose whose repair fails or whose regions still cannot be placed takes the frame fallback too. Returns keypoints, joint_source, boxes (a reason string only
    for a pose even the fallback cannot place) and the per-pose `pose_issue`."""
    from .canonical import JOINT_FALLBACK

    plaus = check_poses(kp, sc, sizes_wh, s.threshold, s.rules, s.spec)
    keypoints, joint_source, errors = _repair(kp, distrust(sc, plaus), sizes_wh, s)
    rules = list(plaus.reasons)
    boxes: list[np.ndarray | str] = [""] * len(kp)
    repaired = [j for j, e in enumerate(errors) if e is None]
    if repaired:
        for j, b in zip(repaired, _boxes_per_pose(keypoints[repaired], s.spec, s.beta)):
            boxes[j] = b
    last = [j for j, b in enumerate(boxes) if isinstance(b, str)]   # repair failed, or regions not placeable
    if last:
        fb_kp, fb_src = _frame_fallback(kp[last], sizes_wh[last], s)
        for j, b, k, src in zip(last, _boxes_per_pose(fb_kp, s.spec, s.beta), fb_kp, fb_src):
            cause = "repair_failed" if errors[j] is not None else "regions"
            rules[j] = ",".join(r for r in (rules[j], cause) if r)
            keypoints[j], joint_source[j], boxes[j] = k, src, b
    placed = [j for j, b in enumerate(boxes) if not isinstance(b, str)]
    if s.region_width != "paper" and placed:  # "image": Eq. 1's x-extent clipped to the image columns
        for j, b in zip(placed, fit_width(np.stack([boxes[j] for j in placed]), sizes_wh[placed, 0])):
            boxes[j] = b
    outcome = np.where((joint_source == JOINT_FALLBACK).any(1), "fallback", "repaired")
    return keypoints, joint_source, boxes, [format_issue(r, str(o)) for r, o in zip(rules, outcome)]


def process_task(task: CropTask, s: WorkerSettings) -> TaskResult:
    """Decode, pose (the chain's worker-side sources), repair, place the regions, crop and encode one batch of
    images (runs in a worker)."""
    failures: list[tuple[ImageRecord, str]] = []
    decoded, keep = [], []
    for i, rec in enumerate(task.records):
        try:
            with open(os.path.join(s.root, rec.path), "rb") as f:
                data = f.read()
            decoded.append((data, decode_image(data, rec.path, s.max_pixels, order="BGR")))
            keep.append(i)
        except ImageDecodeError as e:
            failures.append((rec, str(e)))
        except OSError as e:
            failures.append((rec, f"{rec.path}: cannot read the image file ({e.strerror or e})"))
    keep, decoded, pose_names = _worker_poses(task, keep, decoded, s, failures)
    if not keep:
        return TaskResult(None, failures)
    records = [task.records[i] for i in keep]
    sizes_wh = np.array([[d.pixels.shape[1], d.pixels.shape[0]] for _, d in decoded], dtype=np.float64)
    kp_in, sc_in = task.keypoints[keep], task.scores[keep]
    keypoints, joint_source, boxes, issues = _place(kp_in, sc_in, sizes_wh, s)
    placed = [j for j, b in enumerate(boxes) if not isinstance(b, str)]
    outside = np.zeros((len(records), len(REGION_NAMES)), np.float32)
    if placed:
        stacked = np.stack([boxes[j] for j in placed])  # type: ignore[misc]
        outside[placed] = outside_fraction(stacked, sizes_wh[placed, 0, None], sizes_wh[placed, 1, None])
    scores = np.where(np.isfinite(sc_in), sc_in, 0.0).astype(np.float32)
    ext = EXTENSIONS[s.encoding]
    ok: list[int] = []
    images: dict[str, dict[str, list]] = {name: {"bytes": [], "path": []} for name in (s.whole_column, *REGION_NAMES)}
    for j, rec in enumerate(records):
        data, img = decoded[j]
        b = boxes[j]
        if isinstance(b, str):
            failures.append((rec, f"{rec.path}: {b}"))
            continue
        try:
            # cut from the boxes as stored (float32), so that a loader re-cutting them from `whole` gets these crops
            crops = crop_regions(img.pixels, np.asarray(b, np.float32), s.sizes, s.fill)  # type: ignore[arg-type]
            encoded = [encode_image(c, s.encoding, s.jpeg_quality, order="BGR")  # type: ignore[arg-type]
                       for c in crops]
        except (ValueError, OSError, MemoryError, cv2.error) as e:
            failures.append((rec, f"{rec.path}: cropping failed ({type(e).__name__}: {e})"))
            continue
        ok.append(j)
        images[s.whole_column]["bytes"].append(data)
        images[s.whole_column]["path"].append(_whole_path(rec.path, img.extension))
        for name, blob in zip(REGION_NAMES, encoded):
            images[name]["bytes"].append(blob)
            images[name]["path"].append(_crop_path(rec.path, name, ext))
    if not ok:
        return TaskResult(None, failures)
    box_arr = np.stack([boxes[j] for j in ok]).astype(np.float32)  # type: ignore[misc]
    batch = {
        "image_id": [records[j].path for j in ok], "dataset": [records[j].dataset for j in ok],
        "split": [records[j].split for j in ok],
        "pid": np.array([records[j].pid for j in ok], np.int32),
        "camid": np.array([records[j].camid for j in ok], np.int16),
        "width": sizes_wh[ok, 0].astype(np.int32), "height": sizes_wh[ok, 1].astype(np.int32),
        "keypoints": keypoints[ok], "scores": scores[ok], "joint_source": joint_source[ok].astype(np.int8),
        "boxes": box_arr, "outside": outside[ok], "pose_source": [pose_names[j] for j in ok],
        "beta": (s.beta * (box_arr[:, 0, 3] - box_arr[:, 0, 1])).astype(np.float32),  # beta * H in pixels
        "pose_issue": [issues[j] for j in ok],
        **images,
    }
    return TaskResult(batch, failures)


# ------------------------------------------------------------------------------------------------ main side


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


class WorkerPoolError(ReidError, RuntimeError):
    """The worker processes keep dying without finishing any task (a broken environment, not a bad image)."""


class _Pool:
    """Worker processes with a bounded number of tasks in flight that survives a worker's death: the tasks lost
    with a broken pool are re-run one image at a time, alone in a fresh pool, so a death is pinned on its image."""

    MAX_DEATHS_WITHOUT_PROGRESS = 5   # before any task ever finished: the environment, not an image
    MAX_PINNED_DEATHS = 100           # once workers have worked: consecutive crashing images, each reported

    def __init__(self, workers: int, settings: WorkerSettings) -> None:
        self.workers = workers
        self.settings = settings
        self.inflight: dict[cf.Future, CropTask] = {}
        self.executor: cf.ProcessPoolExecutor | None = None
        self.deaths_without_progress = 0
        self.ever_finished = False
        self._local = workers == 0
        if self._local:
            _init_worker(settings)
        else:
            self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.executor = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                               initargs=(self.settings, True))

    def _restart(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)  # type: ignore[union-attr]
        self.deaths_without_progress += 1
        limit = self.MAX_PINNED_DEATHS if self.ever_finished else self.MAX_DEATHS_WITHOUT_PROGRESS
        if self.deaths_without_progress > limit:
            raise WorkerPoolError(
                f"the crop worker processes died {self.deaths_without_progress} times in a row without finishing a "
                "task: not a bad image but the environment (out of memory? a main module the spawned workers cannot "
                "import, e.g. code read from stdin?). Re-run with --workers 0 to see the error; finished rows are "
                "kept")
        self._start()

    def submit(self, task: CropTask) -> list[TaskResult]:
        """Queue a task; returns results that are ready (blocking while too many tasks are in flight)."""
        if self._local:
            return [process_task(task, self.settings)]
        self.inflight[self.executor.submit(_run_task, task)] = task  # type: ignore[union-attr]
        return self.collect(block=len(self.inflight) >= 2 * self.workers)

    def collect(self, block: bool) -> list[TaskResult]:
        if self._local or not self.inflight:
            return []
        done, _ = cf.wait(list(self.inflight), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        results: list[TaskResult] = []
        lost: list[CropTask] = []
        for fut in done:
            self._harvest(fut, results, lost)
        if lost:  # the pool is broken: every task still in flight is lost or already finished
            for fut in list(self.inflight):
                self._harvest(fut, results, lost)
            self._restart()
            results.extend(self._isolate(lost))
        return results

    def _harvest(self, fut: cf.Future, results: list[TaskResult], lost: list[CropTask]) -> None:
        task = self.inflight.pop(fut)
        try:
            results.append(fut.result())
            self.deaths_without_progress, self.ever_finished = 0, True
        except cf.process.BrokenProcessPool:
            lost.append(task)

    def _isolate(self, lost: list[CropTask]) -> list[TaskResult]:
        """Re-run the images of lost tasks one by one, each alone in the pool."""
        results = []
        for single in (one for task in lost for one in task.split()):
            try:
                results.append(self.executor.submit(_run_task, single).result())  # type: ignore[union-attr]
                self.deaths_without_progress, self.ever_finished = 0, True
            except cf.process.BrokenProcessPool:
                rec = single.records[0]
                results.append(TaskResult(None, [(rec, f"{rec.path}: the worker process died while processing this "
                                                      "image (crashing decoder?)")]))
                self._restart()
        return results

    def drain(self) -> list[TaskResult]:
        out: list[TaskResult] = []
        while self.inflight:
            out.extend(self.collect(block=True))
        return out

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


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
        pool = _Pool(workers, wsettings) if todo else None
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
            repaired_joints=float(joint_counts[1] / total_joints), fallback_joints=float(joint_counts[2] / total_joints),
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
