"""Pose sources: everything that turns images (or precomputed files) into COCO-18 keypoints."""
from __future__ import annotations

import inspect
from typing import Any

from reidkit.errors import ReidError
from reidkit.typedconfig import ConfigError

from .base import PoseBatchItem, PoseNotCoveredError, PoseReadError, PoseSource

POSE_SOURCE_KINDS: tuple[str, ...] = ("openpose-json", "posegan-csv", "mmpose", "blazepose")


def _source_class(kind: str) -> type:
    # Imported on demand: the mmpose backend pulls in torch/mmpose, the others only numpy.
    if kind == "openpose-json":
        from .openpose_json import OpenPoseJsonSource
        return OpenPoseJsonSource
    if kind == "posegan-csv":
        from .posegan_csv import PoseGanCsvSource
        return PoseGanCsvSource
    if kind == "mmpose":
        from .mmpose_source import MMPoseSource
        return MMPoseSource
    if kind == "blazepose":
        from .blazepose import BlazePoseSource
        return BlazePoseSource
    raise ConfigError(f"unknown pose source {kind!r}; known kinds: {', '.join(POSE_SOURCE_KINDS)}")


def make_pose_source(kind: str, **options: Any) -> PoseSource:
    """Build a pose source: "openpose-json" (keypoints_dir, layout), "posegan-csv" (csv_paths) or
    "mmpose" (config, checkpoint, device, batch_size, threads) or "blazepose" (mode, roi_scale, pad, upscale,
    min_detection_confidence). Unknown options raise ValueError. Chains of sources: posecrop.sources.chain."""
    accepted, takes_any = source_parameters(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ConfigError(f"pose source {kind!r} does not take option(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(accepted)}")
    try:
        return _source_class(kind)(**options)
    except TypeError as e:  # an option of the wrong kind (a number where a path is expected, ...)
        raise ConfigError(f"pose source {kind!r}: bad option value ({e})") from e
    except ValueError as e:
        if isinstance(e, ReidError):
            raise
        raise ConfigError(f"pose source {kind!r}: {e}") from e


def source_parameters(kind: str) -> tuple[list[str], bool]:
    """The constructor options of a pose source kind, and whether it takes any keyword."""
    params = inspect.signature(_source_class(kind).__init__).parameters
    accepted = [p for p in params if p != "self"]
    return accepted, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


__all__ = ["POSE_SOURCE_KINDS", "PoseBatchItem", "PoseNotCoveredError", "PoseReadError", "PoseSource",
           "make_pose_source", "source_parameters"]
