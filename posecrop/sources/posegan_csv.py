"""The Market-1501 keypoints released with pose-gan (Siarohin et al., Deformable GANs) as a pose source.

Files `market-annotation-train.csv` / `market-annotation-test.csv`: `:`-separated, header
`name:keypoints_y:keypoints_x`, one row per bounding_box_train / bounding_box_test image (the query set is not
covered), each keypoint field a list of 18 ints, y list first, in pixels of the 128 (h) x 64 (w) crop, -1 missing.

Joint order. pose-gan's `LABELS` call the last four points Leye, Reye, Lear, Rear, while OpenPose COCO-18 (our
order) has r_eye, l_eye, r_ear, l_ear there. The data settles it: in the real CSVs, among the people seen from the
front (r_shoulder left of l_shoulder in the image, ~10k rows with both eyes found), point 14 lies left of point 15
in 99.96 % of rows and point 16 left of point 17 in 100 %; for people seen from the back (r_shoulder right of
l_shoulder, ~2.8k rows with both ears) point 16 lies right of point 17 in 99.9 %. So points 14/16 sit on the
person's right side: the CSV is in plain OpenPose COCO-18 order (the estimator's output order) and only pose-gan's
labels are swapped. The columns are used as they are (tests/test_keypoint_sources.py re-checks this on the data).

The CSV has no confidences: present joints get score 1.0, missing ones NaN / 0. Coordinates are scaled from the
64 x 128 crop frame to the actual image size (Market crops are 64 x 128, so normally by 1); coordinates outside the
crop frame are treated as missing. Images are looked up by file name (basename).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from ..keypoints import NUM_KEYPOINTS
from ..records import ImageRecord
from .base import PerImageKeypoints, PoseNotCoveredError, PoseReadError

CROP_HEIGHT, CROP_WIDTH = 128, 64  # the frame the CSV coordinates are given in
HEADER = "name:keypoints_y:keypoints_x"


def _parse_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Names and an (N, 2, 18) int array (y list, x list) of one pose-gan annotation file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PoseReadError(f"{path}: pose-gan keypoint CSV not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PoseReadError(f"{path}: cannot read the pose-gan keypoint CSV ({e})") from e
    lines = text.splitlines()
    if not lines or lines[0].strip().replace(" ", "") != HEADER:
        raise PoseReadError(f"{path}: not a pose-gan keypoint CSV (expected the header {HEADER!r}, "
                            f"got {lines[0][:60]!r})" if lines else f"{path}: empty file")
    names: list[str] = []
    chunks: list[str] = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[1].count(",") != NUM_KEYPOINTS - 1 or parts[2].count(",") != NUM_KEYPOINTS - 1:
            raise PoseReadError(f"{path}:{lineno}: expected 'name: [18 y values]: [18 x values]', "
                                f"got {line[:80]!r}")
        names.append(parts[0].strip())
        chunks.append(parts[1])
        chunks.append(parts[2])
    flat = ",".join(chunks).replace("[", "").replace("]", "")
    try:
        values = np.array(flat.split(","), dtype=np.int32) if names else np.zeros(0, np.int32)
    except ValueError as e:
        raise PoseReadError(f"{path}: non-integer keypoint value ({e})") from e
    return names, values.reshape(len(names), 2, NUM_KEYPOINTS)


class PoseGanCsvSource(PerImageKeypoints):
    """Pose source backed by pose-gan's market-annotation-*.csv files (loaded once into numpy arrays)."""

    name = "posegan-csv"

    def __init__(self, csv_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        if isinstance(csv_paths, (str, os.PathLike)):
            csv_paths = [csv_paths]
        self.csv_paths = [Path(p) for p in csv_paths]
        if not self.csv_paths:
            raise ValueError("PoseGanCsvSource needs at least one CSV file")
        all_names: list[str] = []
        arrays = []
        self._file_info = []
        for path in self.csv_paths:
            names, yx = _parse_csv(path)
            all_names += names
            arrays.append(yx)
            self._file_info.append({"path": str(path.resolve()), "rows": len(names),
                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        yx = np.concatenate(arrays) if arrays else np.zeros((0, 2, NUM_KEYPOINTS), np.int32)
        self._index: dict[str, int] = {}
        for i, name in enumerate(all_names):
            if self._index.setdefault(name, i) != i:
                raise PoseReadError(f"{name} appears more than once in {', '.join(map(str, self.csv_paths))}")
        self.names = np.array(all_names)
        present = (yx[:, 0] >= 0) & (yx[:, 1] >= 0) & (yx[:, 0] < CROP_HEIGHT) & (yx[:, 1] < CROP_WIDTH)
        kps = np.stack([yx[:, 1], yx[:, 0]], axis=-1).astype(np.float32)  # (N, 18, 2) as x, y
        kps[~present] = np.nan
        self.keypoints = kps
        self.scores = present.astype(np.float32)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, image_name: str) -> bool:
        return PurePosixPath(image_name).name in self._index

    def describe(self) -> dict:
        return {"backend": self.name, "files": self._file_info, "frame": [CROP_WIDTH, CROP_HEIGHT],
                "joint_order": "coco18 (face points checked against the shoulders)", "scores": "1 present / 0 missing"}

    def read(self, record: ImageRecord | str, width: int = CROP_WIDTH,
             height: int = CROP_HEIGHT) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (18, 2) in a width x height image and scores (18,) of one image, by file name."""
        image_path = record.path if isinstance(record, ImageRecord) else str(record)
        i = self._index.get(PurePosixPath(image_path).name)
        if i is None:
            raise PoseNotCoveredError(f"{image_path}: no keypoints for this image in "
                                f"{', '.join(map(str, self.csv_paths))} (pose-gan covers bounding_box_train and "
                                f"bounding_box_test only)")
        scale = np.array([width / CROP_WIDTH, height / CROP_HEIGHT], np.float32)
        return self.keypoints[i] * scale, self.scores[i].copy()
