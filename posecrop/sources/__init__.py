"""Pose sources: everything that turns images (or precomputed files) into COCO-18 keypoints."""
from .base import PoseBatchItem, PoseReadError, PoseSource

__all__ = ["PoseBatchItem", "PoseReadError", "PoseSource"]
