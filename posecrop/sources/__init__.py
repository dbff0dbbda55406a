"""Pose sources: everything that turns images (or precomputed files) into COCO-18 keypoints.

One module per source (a PoseSource class, see posecrop.sources.base), registered below with
`register_pose_source(kind, source)`; `pose_source_kinds()` lists them (the CLI's --pose-source choices, a
recipe's pose_source). A source given as "module:Class" is imported on first use, so that a backend pulling in
torch or mediapipe costs nothing until it is used. Adding one: a module with its class and one registration here.
Chains of sources (tried per image in order) and `auto`: posecrop.sources.chain.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from reidkit.errors import ReidError
from reidkit.typedconfig import ConfigError

from .base import PoseBatchItem, PoseNotCoveredError, PoseReadError, PoseSource

_REGISTRY: dict[str, type | str] = {}


def register_pose_source(kind: str, source: type | str) -> None:
    """Make pose source `kind` available: `source` is its class (constructor keywords = its options) or
    "module:Class" to import on first use. ValueError when the kind is taken."""
    if kind in _REGISTRY:
        raise ValueError(f"pose source {kind!r} is already registered")
    _REGISTRY[kind] = source


def pose_source_kinds() -> tuple[str, ...]:
    """The registered pose source kinds, in the order they were registered."""
    return tuple(_REGISTRY)


def _source_class(kind: str) -> type:
    source = _REGISTRY.get(kind)
    if source is None:
        raise ConfigError(f"unknown pose source {kind!r}; known kinds: {', '.join(pose_source_kinds())}")
    if isinstance(source, str):
        module, _, name = source.partition(":")
        source = _REGISTRY[kind] = getattr(importlib.import_module(module), name)
    return source


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


register_pose_source("openpose-json", "posecrop.sources.openpose_json:OpenPoseJsonSource")
register_pose_source("posegan-csv", "posecrop.sources.posegan_csv:PoseGanCsvSource")
register_pose_source("mmpose", "posecrop.sources.mmpose_source:MMPoseSource")
register_pose_source("blazepose", "posecrop.sources.blazepose:BlazePoseSource")

__all__ = ["PoseBatchItem", "PoseNotCoveredError", "PoseReadError", "PoseSource", "make_pose_source",
           "pose_source_kinds", "register_pose_source", "source_parameters"]
