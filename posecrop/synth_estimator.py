"""The synthetic dataset's simulated pose estimator: the true joints of a rendered pedestrian -> the OpenPose JSON a
real estimator would have written, failing the way real ones do (faces in back views, occluded wrists, far-side
limbs in side views, left/right swaps, outliers, low-confidence joints, no person found). `KeypointFaults` holds
the rates; every draw comes from the image's own generator (posecrop.synth).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from posecrop import synth_render as R

from .keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS


@dataclass(frozen=True)
class KeypointFaults:
    """How the simulated pose estimator fails (probabilities per image or per joint)."""

    no_person_rate: float = 0.10        # image: `people: []`
    back_face_miss_rate: float = 0.85   # nose/eyes (ears: half of it) when the face is turned away
    side_face_miss_rate: float = 0.8    # the far eye / ear in side views
    face_miss_rate: float = 0.15        # visible face points still missed
    wrist_miss_rate: float = 0.35
    elbow_miss_rate: float = 0.12
    knee_miss_rate: float = 0.06
    ankle_miss_rate: float = 0.15
    body_miss_rate: float = 0.03        # neck, shoulders, hips
    far_side_extra: float = 0.15        # added for the far-side arm/leg joints in side views
    occluded_miss_rate: float = 0.7     # joints behind an occluder
    low_confidence_rate: float = 0.08   # detected joints reported with score 0.02-0.25
    swap_rate: float = 0.04             # side views: left/right of a limb pair swapped
    outlier_rate: float = 0.01          # per joint: placed somewhere wrong with a decent score
    jitter_px: float = 1.2              # std of the position noise of detected joints (output pixels)
    score_range: tuple[float, float] = (0.3, 0.95)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_rate") or f.name == "far_side_extra":
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"faults.{f.name} must be in [0, 1], got {v}")
        if self.jitter_px < 0:
            raise ValueError(f"faults.jitter_px must be >= 0, got {self.jitter_px}")
        lo, hi = self.score_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"faults.score_range must satisfy 0 < lo <= hi <= 1, got {self.score_range}")


_I = KEYPOINT_INDEX


_BASE_JOINTS = [_I[n] for n in ("neck", "r_shoulder", "l_shoulder", "r_hip", "l_hip")]


_LIMB_PAIRS = {"arm": [(_I["r_shoulder"], _I["l_shoulder"]), (_I["r_elbow"], _I["l_elbow"]),
                       (_I["r_wrist"], _I["l_wrist"])],
               "leg": [(_I["r_hip"], _I["l_hip"]), (_I["r_knee"], _I["l_knee"]), (_I["r_ankle"], _I["l_ankle"])]}


def miss_probabilities(faults: KeypointFaults, yaw: float, occluded: np.ndarray) -> np.ndarray:
    """(18,) probability that the estimator misses each joint of a person turned by `yaw`."""
    p = np.full(NUM_KEYPOINTS, faults.body_miss_rate)
    for name, rate in (("wrist", faults.wrist_miss_rate), ("elbow", faults.elbow_miss_rate),
                       ("knee", faults.knee_miss_rate), ("ankle", faults.ankle_miss_rate)):
        p[_I[f"r_{name}"]] = p[_I[f"l_{name}"]] = rate
    facing = R.face_visibility(yaw)
    back = math.cos(yaw) < -0.3
    for j in R.FACE_JOINTS:
        if back:
            p[j] = faults.back_face_miss_rate * (0.5 if "ear" in KEYPOINT_NAMES[j] else 1.0)
        elif facing[j] < 0.15:
            p[j] = faults.side_face_miss_rate
        else:
            p[j] = faults.face_miss_rate
    s = math.sin(yaw)
    if abs(s) > 0.6:  # side view: the far side is the left when facing right (z' = -x sin(yaw))
        far = "l" if s > 0 else "r"
        for name in ("elbow", "wrist", "knee", "ankle"):
            p[_I[f"{far}_{name}"]] = min(1.0, p[_I[f"{far}_{name}"]] + faults.far_side_extra)
    p = np.where(occluded, np.maximum(p, faults.occluded_miss_rate), p)
    return p


def simulate_estimator(true_xy: np.ndarray, yaw: float, occluded: np.ndarray, size: tuple[int, int],
                       faults: KeypointFaults, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """What a real estimator would report for the true joints (18, 2) of an image of size (W, H).

    Returns (keypoints (18, 2) with NaN for missing, scores (18,) with 0 for missing)."""
    W, H = size
    xy = np.array(true_xy, dtype=np.float64)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= W - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= H - 1)
    # draw every random number up front so that the stream does not depend on the outcome
    u_miss, u_low, u_out = rng.random(NUM_KEYPOINTS), rng.random(NUM_KEYPOINTS), rng.random(NUM_KEYPOINTS)
    beta = rng.beta(3.0, 1.6, NUM_KEYPOINTS)
    low = rng.uniform(0.02, 0.25, NUM_KEYPOINTS)
    noise = rng.normal(0.0, 1.0, (NUM_KEYPOINTS, 2))
    wild = rng.uniform([0, 0], [W - 1, H - 1], (NUM_KEYPOINTS, 2))
    u_swap, which = rng.random(2), rng.integers(0, 3, 2)

    p_miss = miss_probabilities(faults, yaw, occluded)
    back = math.cos(yaw) < -0.3
    lo, hi = faults.score_range
    scores = lo + (hi - lo) * beta
    is_low = u_low < faults.low_confidence_rate
    if back:  # face points that survive in a back view are weak
        is_low[list(R.FACE_JOINTS)] = True
    scores = np.where(is_low, low, scores)
    jitter = faults.jitter_px * (1.0 + 2.0 * is_low)[:, None] * noise
    det = xy + jitter
    outlier = u_out < faults.outlier_rate
    det[outlier] = wild[outlier]
    if abs(math.sin(yaw)) > 0.6:
        for k, limb in enumerate(("arm", "leg")):
            if u_swap[k] < faults.swap_rate:
                for a, b in _LIMB_PAIRS[limb][int(which[k]):]:
                    det[[a, b]] = det[[b, a]]
    missing = (u_miss < p_miss) | ~inside
    det[:, 0] = np.clip(det[:, 0], 0, W - 1)
    det[:, 1] = np.clip(det[:, 1], 0, H - 1)
    det[missing] = np.nan
    scores = np.where(missing, 0.0, scores)
    return det.astype(np.float32), scores.astype(np.float32)


def openpose_json(keypoints: np.ndarray | None, scores: np.ndarray | None) -> str:
    """OpenPose 1.3 `--write_json` text for one image: one COCO-18 person, or `people: []` for None.

    Missing joints are written as 0, 0, 0 (OpenPose's convention)."""
    people = []
    if keypoints is not None and scores is not None:
        flat: list[float] = []
        for (x, y), c in zip(keypoints.tolist(), scores.tolist()):
            if c <= 0 or not (math.isfinite(x) and math.isfinite(y)):
                flat += [0, 0, 0]
            else:
                flat += [round(x, 3), round(y, 3), round(c, 6)]
        people.append({"person_id": [-1], "pose_keypoints_2d": flat, "face_keypoints_2d": [],
                       "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": [], "pose_keypoints_3d": [],
                       "face_keypoints_3d": [], "hand_left_keypoints_3d": [], "hand_right_keypoints_3d": []})
    return json.dumps({"version": 1.3, "people": people}, separators=(",", ":"))
