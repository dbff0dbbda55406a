"""The OpenPose COCO-18 keypoint layout (0-based) and conversions into it.

Every pose in the project is an array of shape (..., 18, 2) of (x, y) in source-image pixels plus a
score array of shape (..., 18). A missing joint has score 0 and coordinates NaN.
"""
from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
KEYPOINT_INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# Limbs for drawing (OpenPose COCO-18 skeleton).
SKELETON: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# Left/right swap permutation (for horizontal flips).
FLIP_PERMUTATION: tuple[int, ...] = tuple(
    KEYPOINT_INDEX[n.replace("r_", "#").replace("l_", "r_").replace("#", "l_")] for n in KEYPOINT_NAMES
)

COCO17_NAMES: tuple[str, ...] = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
# For each COCO-18 joint, its COCO-17 index (neck has none: it is derived from the shoulders).
_COCO17_OF_18 = np.array([COCO17_NAMES.index(n) if n != "neck" else -1 for n in KEYPOINT_NAMES])
# OpenPose BODY_25: 0-7 as COCO-18, 8 = mid-hip (dropped), 9-18 -> COCO-18 8-17, 19-24 feet (dropped).
BODY25_TO_COCO18 = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18])


def coco17_to_coco18(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert COCO-17 poses (..., 17, 2) / (..., 17) to COCO-18.

    The neck is the mean of the two shoulders and its score is the smaller shoulder score.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if keypoints.shape[-2:] != (17, 2) or scores.shape[-1] != 17:
        raise ValueError(f"expected COCO-17 poses of shape (..., 17, 2) and (..., 17), got {keypoints.shape} and "
                         f"{scores.shape}")
    idx = np.where(_COCO17_OF_18 < 0, 0, _COCO17_OF_18)
    kp18 = keypoints[..., idx, :].copy()
    sc18 = scores[..., idx].copy()
    ls, rs = COCO17_NAMES.index("l_shoulder"), COCO17_NAMES.index("r_shoulder")
    kp18[..., 1, :] = (keypoints[..., ls, :] + keypoints[..., rs, :]) / 2
    sc18[..., 1] = np.minimum(scores[..., ls], scores[..., rs])
    return kp18, sc18


def body25_to_coco18(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert OpenPose BODY_25 poses (..., 25, 2) / (..., 25) to COCO-18 (drop mid-hip and feet)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if keypoints.shape[-2:] != (25, 2) or scores.shape[-1] != 25:
        raise ValueError(f"expected BODY_25 poses of shape (..., 25, 2) and (..., 25), got {keypoints.shape} and "
                         f"{scores.shape}")
    return keypoints[..., BODY25_TO_COCO18, :].copy(), scores[..., BODY25_TO_COCO18].copy()


def mark_missing(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the missing-joint convention: score 0 and NaN coordinates wherever a joint is absent
    (score <= 0, non-finite coordinates, or OpenPose's (0, 0, 0))."""
    keypoints = np.array(keypoints, dtype=np.float32, copy=True)
    scores = np.array(scores, dtype=np.float32, copy=True)
    bad = ~np.isfinite(keypoints).all(-1) | ~np.isfinite(scores) | (scores <= 0)
    keypoints[bad] = np.nan
    scores[bad] = 0.0
    return keypoints, scores
