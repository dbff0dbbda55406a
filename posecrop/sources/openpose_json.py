"""Precomputed OpenPose keypoints (`--write_json` output) as a pose source.

The keypoints of image `<rel>/<stem>.<ext>` (its `ImageRecord.path`) are read from
`KEYPOINTS_DIR/<rel>/<stem>_keypoints.json` (layout "mirror", the default) or `KEYPOINTS_DIR/<stem>_keypoints.json`
(layout "flat": what OpenPose writes when it is run over one folder of images).

Accepted content: `{"people": [{"pose_keypoints_2d": [...]}, ...]}` (OpenPose >= 1.2) or the legacy key
`pose_keypoints` (format 1.0), with 54 numbers (COCO-18) or 75 numbers (BODY_25, converted by dropping mid-hip and
the feet) as x, y, confidence triples.

Value handling: OpenPose's (0, 0, 0), non-finite numbers, confidence <= 0, negative coordinates and points outside
the image (x > width or y > height) become missing joints (NaN, score 0). A file that is absent, not JSON, without a
`people` list, or with a keypoint list of another length raises PoseReadError naming the file. `people: []` gives
an all-missing pose.

Several people in one file (a ReID crop can hold bystanders): the source keeps the one that best fits the image,
    fit = (sum of the confidences of its in-image joints) * sqrt(area of its joint box / image area)
          * (1 - 0.5 * distance of the joint-box centre from the image centre / half the image diagonal)
i.e. the confident, large, central person; people with fewer than 2 in-image joints have fit 0. Ties keep the
first person in the file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath


import numpy as np

from ..keypoints import NUM_KEYPOINTS, body25_to_coco18, mark_missing
from ..records import ImageRecord
from .base import PerImageKeypoints, PoseNotCoveredError, PoseReadError

LAYOUTS = ("mirror", "flat")
_KEYS = ("pose_keypoints_2d", "pose_keypoints")


def keypoints_path(keypoints_dir: Path, image_path: str, layout: str = "mirror") -> Path:
    """Where the OpenPose JSON of the image at `image_path` (relative to the dataset root) lives."""
    rel = PurePosixPath(image_path)
    name = f"{rel.stem}_keypoints.json"
    return Path(keypoints_dir) / (name if layout == "flat" else rel.parent / name)


def parse_people(data: object, source: str) -> tuple[np.ndarray, np.ndarray]:
    """All people of a parsed OpenPose JSON as COCO-18 (P, 18, 2) keypoints and (P, 18) raw confidences.

    Raises PoseReadError (naming `source`) for a structure that is not OpenPose output."""
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise PoseReadError(f"{source}: not an OpenPose keypoint file (expected an object with a 'people' list)")
    kps, scores = [], []
    for i, person in enumerate(data["people"]):
        if not isinstance(person, dict):
            raise PoseReadError(f"{source}: people[{i}] is not an object")
        key = next((k for k in _KEYS if k in person), None)
        if key is None:
            raise PoseReadError(f"{source}: people[{i}] has no {' or '.join(_KEYS)}")
        values = person[key]
        try:
            arr = np.array(values, dtype=np.float64)  # null -> nan through float(); strings raise
        except (TypeError, ValueError) as e:
            raise PoseReadError(f"{source}: people[{i}].{key} holds non-numbers ({e})") from e
        if arr.ndim != 1 or arr.size not in (3 * NUM_KEYPOINTS, 75):
            raise PoseReadError(f"{source}: people[{i}].{key} has {arr.size} numbers; expected 54 (COCO-18) or "
                                f"75 (BODY_25) x, y, confidence values")
        arr = arr.reshape(-1, 3)
        kp, sc = arr[:, :2].astype(np.float32), arr[:, 2].astype(np.float32)
        if len(arr) == 25:
            kp, sc = body25_to_coco18(kp, sc)
        kps.append(kp)
        scores.append(sc)
    if not kps:
        return np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0, NUM_KEYPOINTS), np.float32)
    return np.stack(kps), np.stack(scores)


def clean_people(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Missing-joint convention plus: negative or out-of-image coordinates become missing."""
    with np.errstate(invalid="ignore"):
        outside = ((keypoints < 0).any(-1) | (keypoints[..., 0] > width) | (keypoints[..., 1] > height))
    scores = np.where(outside, 0.0, scores)
    return mark_missing(keypoints, scores)


def person_fit(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """The fit of each of P cleaned people (P, 18, 2)/(P, 18) to a width x height image (see the module doc)."""
    valid = scores > 0
    n = valid.sum(-1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    x1, x2 = np.where(valid, x, np.inf).min(-1), np.where(valid, x, -np.inf).max(-1)
    y1, y2 = np.where(valid, y, np.inf).min(-1), np.where(valid, y, -np.inf).max(-1)
    x1, x2, y1, y2 = (np.where(n > 0, v, 0.0) for v in (x1, x2, y1, y2))
    area = np.clip((x2 - x1) * (y2 - y1) / float(width * height), 0.0, 1.0)
    dist = np.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2) / (0.5 * math.hypot(width, height))
    fit = scores.sum(-1) * np.sqrt(area) * (1.0 - 0.5 * np.clip(dist, 0.0, 1.0))
    return np.where(n >= 2, fit, 0.0)


class OpenPoseJsonSource(PerImageKeypoints):
    """Pose source reading OpenPose JSON files that mirror the dataset (see the module doc)."""

    name = "openpose-json"

    def __init__(self, keypoints_dir: str | os.PathLike, layout: str = "mirror") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.keypoints_dir = Path(keypoints_dir)
        if not self.keypoints_dir.is_dir():
            raise PoseReadError(f"OpenPose keypoints folder {self.keypoints_dir} does not exist")
        self.layout = layout

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "keypoints_dir": str(self.keypoints_dir.resolve()),
            "layout": self.layout,
            "person_selection": "max sum(in-image confidence) * sqrt(joint-box area / image area)"
                                " * (1 - 0.5 * centre distance / half diagonal)",
        }

    def read(self, record: ImageRecord | str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """COCO-18 keypoints (18, 2) and scores (18,) of the best-fitting person for one image."""
        image_path = record.path if isinstance(record, ImageRecord) else str(record)
        path = keypoints_path(self.keypoints_dir, image_path, self.layout)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise PoseNotCoveredError(f"{path}: OpenPose keypoint file not found (for image {image_path})") from e
        except (OSError, UnicodeDecodeError) as e:
            raise PoseReadError(f"{path}: cannot read the OpenPose keypoint file ({e})") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise PoseReadError(f"{path}: not valid JSON ({e})") from e
        kps, scores = parse_people(data, str(path))
        if len(kps) == 0:
            return np.full((NUM_KEYPOINTS, 2), np.nan, np.float32), np.zeros(NUM_KEYPOINTS, np.float32)
        kps, scores = clean_people(kps, scores, width, height)
        best = int(np.argmax(person_fit(kps, scores, width, height)))
        return kps[best], scores[best]
