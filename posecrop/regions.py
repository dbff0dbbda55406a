"""Body regions R0-R4 from COCO-18 joints: Eq. 1-2 of the paper, vectorised over a batch.

Region joint lists are data (DESIGN.md section 2); a recipe may override them by joint name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reidkit.errors import ReidError

from .keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES

REGION_NAMES: tuple[str, ...] = ("body", "head", "upper_body", "upper_leg", "lower_leg")

DEFAULT_REGION_JOINTS: dict[str, tuple[str, ...]] = {
    "body": KEYPOINT_NAMES,
    "head": ("nose", "neck", "r_eye", "l_eye", "r_ear", "l_ear"),
    "upper_body": ("neck", "r_shoulder", "l_shoulder", "r_elbow", "l_elbow", "r_wrist", "l_wrist", "r_hip", "l_hip"),
    "upper_leg": ("r_hip", "l_hip", "r_knee", "l_knee"),
    "lower_leg": ("r_knee", "l_knee", "r_ankle", "l_ankle"),
}

# Keypoint sources (OpenPose, pose-gan, mmpose, our synth) put pixel i's centre at coordinate i; the crop frame has
# it at i + 0.5. Eq. 1-2 is translation-equivariant, so boxes in the crop frame are
# region_boxes(keypoints) + PIXEL_CENTRE.
PIXEL_CENTRE = 0.5


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


class RegionGeometryError(ReidError, ValueError):
    """Eq. 1-2 cannot place the regions (non-finite joints, or a body height H <= 0)."""


def region_boxes(keypoints: np.ndarray, spec: RegionSpec | None = None, beta: float = 0.1) -> np.ndarray:
    """Boxes R0..R4 of Eq. 1-2 for a batch of complete (repaired) poses.

    keypoints: (N, 18, 2) x, y in source pixels, all finite (run the canonical repair first).
    beta: the overlap of neighbouring regions as a fraction of the body height H (paper: H/10 -> 0.1).
    Returns (N, 5, 4) float32 boxes x1, y1, x2, y2 in REGION_NAMES order, in the continuous pixel frame where the
    image covers [0, width] x [0, height]. Boxes may reach outside the image (crop them with a fill, not a clip).

    With P1 = head joints and P4 = lower-leg joints (DESIGN.md section 2):
      top(R0) = top(R1) = 2 min y(P1) - max y(P1);  bottom(R0) = bottom(R4) = 4/3 max y(P4) - 1/3 min y(P4)
      H = bottom(R0) - top(R0);  b = beta * H
      R1 bottom = max y(P1) + b;  R2, R3 = [min y(Pi) - b, max y(Pi) + b];  R4 top = min y(P4) - b
      every region spans x in [min(xc - H/4, min x(P0)), max(xc + H/4, max x(P0))], xc = mean x of P0.
    A pose whose H is not positive raises RegionGeometryError naming the pose index.
    """
    spec = spec if spec is not None else RegionSpec()
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (len(KEYPOINT_NAMES), 2):
        raise ValueError(f"keypoints must have shape (N, {len(KEYPOINT_NAMES)}, 2), got {kp.shape}")
    bad = ~np.isfinite(kp).all(axis=(1, 2))
    if bad.any():
        raise RegionGeometryError(f"poses {np.flatnonzero(bad)[:10].tolist()} have missing (non-finite) joints; "
                                  "repair them (posecrop.canonical.repair) before computing regions")
    masks = spec.masks()                                   # (5, 18)
    x, y = kp[:, None, :, 0], kp[:, None, :, 1]            # (N, 1, 18)
    y_min = np.where(masks, y, np.inf).min(axis=-1)        # (N, 5)
    y_max = np.where(masks, y, -np.inf).max(axis=-1)
    top = 2.0 * y_min[:, 1] - y_max[:, 1]
    bottom = 4.0 / 3.0 * y_max[:, 4] - 1.0 / 3.0 * y_min[:, 4]
    height = bottom - top
    if (height <= 0).any():
        raise RegionGeometryError(f"poses {np.flatnonzero(height <= 0)[:10].tolist()}: body height H <= 0 "
                                  "(head joints are not above the lower legs)")
    b = beta * height
    x0 = np.where(masks[0], x[:, 0], np.nan)               # (N, 18): P0 joints only
    xc = np.nanmean(x0, axis=-1)
    x_l = np.minimum(xc - height / 4.0, np.nanmin(x0, axis=-1))
    x_r = np.maximum(xc + height / 4.0, np.nanmax(x0, axis=-1))

    boxes = np.empty((kp.shape[0], len(REGION_NAMES), 4), dtype=np.float64)
    boxes[:, :, 0] = x_l[:, None]
    boxes[:, :, 2] = x_r[:, None]
    boxes[:, 0, 1], boxes[:, 0, 3] = top, bottom
    boxes[:, 1, 1], boxes[:, 1, 3] = top, y_max[:, 1] + b
    boxes[:, 2:4, 1] = y_min[:, 2:4] - b[:, None]
    boxes[:, 2:4, 3] = y_max[:, 2:4] + b[:, None]
    boxes[:, 4, 1], boxes[:, 4, 3] = y_min[:, 4] - b, bottom
    return boxes.astype(np.float32)


REGION_WIDTHS: tuple[str, ...] = ("paper", "image")
"""How wide the regions are: "paper" - Eq. 1 as written (at least H/2, centred on the body, may reach outside the
image); "image" - Eq. 1 clipped to the image columns [0, width]. ReID images are detector boxes whose width is
already the person's: on Market-1501 (128x64, H about the image height) H/2 is about the image width, so both agree;
on narrower images (CUHK01 / CUHK03, 160x60) H/2 is 1.3x the image width and "paper" fills a quarter of every crop
with the fill colour, leaving the person about 40 % of the crop width."""


def fit_width(boxes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Clip the x extent of region boxes (N, R, 4) (continuous frame, image = [0, width]) to the image columns.

    `widths` (N,) image widths. A box whose clipped extent would be under one pixel (a pose beside the image)
    gets the full image width instead. y is unchanged."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    w = np.asarray(widths, dtype=np.float32).reshape(-1, 1)
    if out.ndim != 3 or out.shape[-1] != 4 or w.shape[0] != out.shape[0]:
        raise ValueError(f"boxes must be (N, R, 4) with N widths, got {out.shape} and {np.shape(widths)}")
    x1 = np.clip(out[..., 0], 0.0, w)
    x2 = np.clip(out[..., 2], 0.0, w)
    narrow = x2 - x1 < 1.0
    out[..., 0] = np.where(narrow, 0.0, x1)
    out[..., 2] = np.where(narrow, np.broadcast_to(w, x2.shape), x2)
    return out
