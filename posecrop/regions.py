"""Body regions R0-R4 from COCO-18 joints: Eq. 1-2 of the paper, vectorised over a batch.

Region joint lists are data (DESIGN.md section 2); a recipe may override them by joint name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES

REGION_NAMES: tuple[str, ...] = ("body", "head", "upper_body", "upper_leg", "lower_leg")

DEFAULT_REGION_JOINTS: dict[str, tuple[str, ...]] = {
    "body": KEYPOINT_NAMES,
    "head": ("nose", "neck", "r_eye", "l_eye", "r_ear", "l_ear"),
    "upper_body": ("neck", "r_shoulder", "l_shoulder", "r_elbow", "l_elbow", "r_wrist", "l_wrist", "r_hip", "l_hip"),
    "upper_leg": ("r_hip", "l_hip", "r_knee", "l_knee"),
    "lower_leg": ("r_knee", "l_knee", "r_ankle", "l_ankle"),
}


@dataclass(frozen=True)
class RegionSpec:
    """Joint lists of P0..P4 (by name) - the data behind Eq. 1-2."""

    joints: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_REGION_JOINTS))

    def __post_init__(self) -> None:
        if tuple(self.joints) != REGION_NAMES:
            raise ValueError(f"region joints must name exactly {REGION_NAMES} in order, got {tuple(self.joints)}")
        for region, names in self.joints.items():
            unknown = [n for n in names if n not in KEYPOINT_INDEX]
            if unknown or not names:
                raise ValueError(f"region {region!r}: unknown or empty joint names {unknown}; known: {KEYPOINT_NAMES}")

    def masks(self) -> np.ndarray:
        """(5, 18) boolean membership of each joint in P0..P4."""
        m = np.zeros((len(REGION_NAMES), len(KEYPOINT_NAMES)), dtype=bool)
        for r, names in enumerate(self.joints.values()):
            m[r, [KEYPOINT_INDEX[n] for n in names]] = True
        return m
