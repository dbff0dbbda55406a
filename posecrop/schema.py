"""The Parquet crop cache schema (DESIGN.md section 4) - with posecrop.cache_reader, posecrop.crops and
posecrop.regions the contract between posecrop and reidtrain.

Layout of a cache directory:
    CACHE/<split>/part-<shard>-<seq>.parquet   one folder per split (train / query / gallery)
    CACHE/crop_report.jsonl                    skipped / failed images with the reason (appended per run)
One row per source image. Image columns are Hugging Face `datasets` Image structs {bytes, path}.
"""
from __future__ import annotations

import json

import pyarrow as pa

from .keypoints import KEYPOINT_NAMES
from .regions import REGION_NAMES

FORMAT_VERSION = 1
METADATA_KEY = b"posecrop"          # the project's own schema-metadata key (JSON)
HF_METADATA_KEY = b"huggingface"    # lets datasets.load_dataset("parquet") decode image columns

POSE_SOURCE_COLUMN = "pose_source"
JOINT_SOURCES = ("detected", "repaired", "fallback")  # values of joint_source (stored as int8 codes)
# `whole` keeps the source image (the detector box) unchanged: the `baseline` model of the ablation reads it and
# cuts its own fixed strips, and `show` draws from it. Beyond DESIGN.md section 4, which had only the five crops:
# without it a baseline run would need the raw dataset folder next to the cache.
WHOLE_COLUMN = "whole"
IMAGE_COLUMNS = (WHOLE_COLUMN, *REGION_NAMES)  # whole, body, head, upper_body, upper_leg, lower_leg

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

IDENTITY_FIELDS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("split", pa.string()),
    pa.field("pid", pa.int32()),
    pa.field("camid", pa.int16()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
]
POSE_FIELDS = [
    pa.field("keypoints", pa.list_(pa.list_(pa.float32(), 2), len(KEYPOINT_NAMES))),
    pa.field("scores", pa.list_(pa.float32(), len(KEYPOINT_NAMES))),
    pa.field("joint_source", pa.list_(pa.int8(), len(KEYPOINT_NAMES))),
    pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4), len(REGION_NAMES))),
    pa.field("outside", pa.list_(pa.float32(), len(REGION_NAMES))),  # share of each box outside the image
    pa.field("beta", pa.float32()),
    # which pose source gave the row its keypoints (a kind of posecrop.sources, or "none": no source found a joint
    # and the frame fallback placed the pose). Beyond DESIGN.md section 4; caches written before it lack the column
    # (read as null).
    pa.field(POSE_SOURCE_COLUMN, pa.string()),
    # why the pose's joints were distrusted despite their scores ("" = plausible), e.g. "upside_down: fallback":
    # the rules of posecrop/plausibility.py that fired, then what became of the pose (repaired / fallback).
    # Caches written before it lack the column; readers treat a missing column as all "".
    pa.field("pose_issue", pa.string()),
]
IMAGE_FIELDS = [pa.field(name, IMAGE_STRUCT) for name in IMAGE_COLUMNS]


def hf_features_metadata() -> bytes:
    """The `huggingface` schema-metadata value that makes `datasets` decode the image columns."""
    feats: dict = {
        "image_id": {"dtype": "string", "_type": "Value"},
        "dataset": {"dtype": "string", "_type": "Value"},
        "split": {"dtype": "string", "_type": "Value"},
        "pid": {"dtype": "int32", "_type": "Value"},
        "camid": {"dtype": "int16", "_type": "Value"},
        "width": {"dtype": "int32", "_type": "Value"},
        "height": {"dtype": "int32", "_type": "Value"},
        "keypoints": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "length": 2, "_type": "Sequence"},
                      "length": len(KEYPOINT_NAMES), "_type": "Sequence"},
        "scores": {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(KEYPOINT_NAMES),
                   "_type": "Sequence"},
        "joint_source": {"feature": {"dtype": "int8", "_type": "Value"}, "length": len(KEYPOINT_NAMES),
                         "_type": "Sequence"},
        "boxes": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "length": 4, "_type": "Sequence"},
                  "length": len(REGION_NAMES), "_type": "Sequence"},
        "outside": {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(REGION_NAMES),
                    "_type": "Sequence"},
        "beta": {"dtype": "float32", "_type": "Value"},
        POSE_SOURCE_COLUMN: {"dtype": "string", "_type": "Value"},
        "pose_issue": {"dtype": "string", "_type": "Value"},
    }
    for name in IMAGE_COLUMNS:
        feats[name] = {"_type": "Image"}
    return json.dumps({"info": {"features": feats}}).encode()


def cache_schema(settings: dict | None = None) -> pa.Schema:
    """The Arrow schema of a cache part file; `settings` (JSON-able) goes under the posecrop metadata key."""
    meta = {HF_METADATA_KEY: hf_features_metadata()}
    if settings is not None:
        meta[METADATA_KEY] = json.dumps({"format_version": FORMAT_VERSION, **settings}, sort_keys=True).encode()
    return pa.schema(IDENTITY_FIELDS + POSE_FIELDS + IMAGE_FIELDS, metadata=meta)


def read_settings(schema: pa.Schema) -> dict:
    """The posecrop settings stored in a part file's schema metadata ({} when absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
