"""The crop stage's worker side: what one worker process does with a task (a batch of images with their poses so
far): read + decode each image, run the chain's worker-side pose sources (BlazePose) on the images still without
keypoints, plausibility -> canonical repair -> Eq. 1-2 boxes for the batch (vectorised), five crops with the
outside filled, encode; the finished rows go back as one column batch, the failed images with the reason.

Worker processes import this module: it stays free of pyarrow (the cache is the main process's).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .crops import EXTENSIONS, ImageDecodeError, crop_regions, decode_image, encode_image, outside_fraction
from .keypoints import NUM_KEYPOINTS
from .plausibility import DEFAULT_RULES, PlausibilityRules, check_poses, distrust, format_issue
from .records import ImageRecord
from .regions import PIXEL_CENTRE, REGION_NAMES, RegionGeometryError, RegionSpec, fit_width, region_boxes

KEYPOINT_FRAME = "source pixels, pixel centres at integer coordinates (as OpenPose writes them)"


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
    fallback); a pose whose repair fails or whose regions still cannot be placed takes the frame fallback too.
    Returns keypoints, joint_source, boxes (a reason string only for a pose even the fallback cannot place) and the
    per-pose `pose_issue`."""
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
