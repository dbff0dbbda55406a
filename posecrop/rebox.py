"""The Eq. 1-2 region boxes of a cache again, from its stored keypoints, at another beta (Table 11 without re-cropping).

A cache row keeps the keypoints the crop stage placed its regions from: the canonically repaired pose, or the frame
fallback's pose (crop_stage._place). The body height H of Eq. 2 depends on those keypoints only, so a pose that was
placeable at the crop's beta is placeable at every beta, and

    boxes(beta) = fit_width?(region_boxes(keypoints, spec, beta) + PIXEL_CENTRE, width)

with the crop stage's own functions, joint lists (`regions` of the cache metadata) and region width, gives the boxes
a fresh crop at that beta would have stored (tests/test_rebox.py compares them with one). The loader cuts the five
crops from the cached source image (`whole`) with these boxes (reidtrain.data, TrainConfig.beta).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from reidkit.errors import ReidError

from .regions import (DEFAULT_REGION_JOINTS, PIXEL_CENTRE, REGION_NAMES, REGION_WIDTHS, RegionGeometryError,
                      RegionSpec, fit_width)
from .regions import region_boxes


class ReboxError(ReidError, ValueError):
    """The boxes of a cache cannot be recomputed (metadata without the region definition, unplaceable pose)."""


def region_spec_of(settings: Mapping) -> RegionSpec:
    """The joint lists P0..P4 the cache was cropped with (its `regions` metadata; the defaults when absent)."""
    regions = settings.get("regions")
    if not regions:
        return RegionSpec(dict(DEFAULT_REGION_JOINTS))
    try:
        return RegionSpec({name: tuple(regions[name]["joints"]) for name in REGION_NAMES})
    except (KeyError, TypeError, ValueError) as e:
        raise ReboxError(f"the cache metadata's region definition is unusable ({e})") from e


def region_width_of(settings: Mapping) -> str:
    width = settings.get("region_width", "paper")
    if width not in REGION_WIDTHS:
        raise ReboxError(f"unknown region_width {width!r} in the cache metadata (known: {REGION_WIDTHS})")
    return width


def boxes_at_beta(keypoints: np.ndarray, widths: np.ndarray, beta: float, spec: RegionSpec,
                  region_width: str = "paper") -> np.ndarray:
    """(N, 5, 4) float32 boxes in the crop frame for stored keypoints (N, 18, 2) at overlap `beta` (fraction of H).

    widths: (N,) source image widths (used when region_width is "image")."""
    if not 0.0 <= beta <= 1.0:
        raise ReboxError(f"beta must be a fraction of H in [0, 1], got {beta}")
    kp = np.asarray(keypoints, dtype=np.float32)
    try:
        boxes = region_boxes(kp, spec, beta) + PIXEL_CENTRE
    except RegionGeometryError as e:
        raise ReboxError(f"stored keypoints cannot place the regions: {e}") from e
    if region_width != "paper":
        boxes = fit_width(boxes, np.asarray(widths))
    return boxes.astype(np.float32, copy=False)
