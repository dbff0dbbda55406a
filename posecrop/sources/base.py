"""The pose-source protocol shared by the mmpose, OpenPose-JSON and pose-gan-CSV backends."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from reidkit.errors import ReidError

from ..keypoints import NUM_KEYPOINTS
from ..records import ImageRecord


class PoseReadError(ReidError, ValueError):
    """Keypoints for one image could not be read (missing/corrupt file, bad values). The message names the file.
    The crop stage reports the image as failed and goes on."""


class PoseNotCoveredError(PoseReadError):
    """The source has nothing for this image (no keypoint file, not listed in the CSV): in a chain of pose sources
    (`--pose-source a,b`) the image goes on to the next source; a corrupt file stays a PoseReadError (reported)."""


@dataclass
class PoseBatchItem:
    record: ImageRecord
    image: np.ndarray  # H x W x 3 uint8 RGB (the decoded source image)


@runtime_checkable
class PoseSource(Protocol):
    name: str

    def describe(self) -> dict:
        """JSON-able description for the cache metadata (backend, config, checkpoint sha256, files...)."""
        ...

    def estimate(self, batch: Sequence[PoseBatchItem]) -> tuple[np.ndarray, np.ndarray]:
        """COCO-18 keypoints (B, 18, 2) float32 in source pixels and scores (B, 18) float32; missing joints have
        NaN coordinates and score 0 (see posecrop.keypoints.mark_missing). A whole-image failure for item i raises
        PoseReadError only if it cannot be expressed as an all-missing pose (e.g. an unreadable keypoint file)."""
        ...


class PerImageKeypoints:
    """Mixin for precomputed-keypoint sources: `estimate` is `read(record, width, height)` per item of the batch."""

    def read(self, record: ImageRecord, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def estimate(self, batch: Sequence[PoseBatchItem]) -> tuple[np.ndarray, np.ndarray]:
        kps = np.empty((len(batch), NUM_KEYPOINTS, 2), np.float32)
        scores = np.empty((len(batch), NUM_KEYPOINTS), np.float32)
        for i, item in enumerate(batch):
            height, width = item.image.shape[:2]
            kps[i], scores[i] = self.read(item.record, width, height)
        return kps, scores
