"""Chains of pose sources (`--pose-source a,b`), `auto`, option routing, and the per-row `pose_source` column
(also: caches written before that column existed still read)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from posecrop.cache import cache_info
from posecrop.cache_reader import read_split
from posecrop.crop_stage import CropConfig, run_crop
from posecrop.sources.chain import auto_kind, build_chain, parse_chain, route_options

PICK = {"query": ["0001_c1s1_001051_00.jpg", "0051_c3s1_005551_00.jpg", "1285_c1s5_053991_00.jpg"],
        "bounding_box_train": ["0002_c2s1_000351_01.jpg", "0011_c6s4_002502_01.jpg"],
        "bounding_box_test": ["0018_c4s1_002351_02.jpg"]}


@pytest.fixture()
def small_market(tmp_path, realdata) -> Path:
    root = tmp_path / "Market-1501"
    for folder, names in PICK.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).symlink_to(realdata / "market1501_samples" / "crops" / name)
    return root


@pytest.fixture()
def csvs(realdata) -> list[str]:
    return [str(p) for p in sorted((realdata / "market1501_samples" / "keypoints_posegan_csv").glob("*.csv"))]


def _openpose(path: Path, people: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": p} for p in people]}))


def _rows(cache: Path) -> dict[str, dict]:
    return {Path(r["image_id"]).name: r for split in ("train", "query", "gallery")
            for r in read_split(cache, split, ["image_id", "pose_source", "joint_source", "scores"]).to_pylist()}


def test_parse_chain_and_route_options():
    assert parse_chain(None) == ["auto"] and parse_chain("auto") == ["auto"]
    assert parse_chain("posegan-csv, blazepose") == ["posegan-csv", "blazepose"]
    for bad, message in (("posegan-csv,,blazepose", "empty entry"), ("openpose", "unknown pose source 'openpose'"),
                         ("auto,blazepose", "cannot be part of a chain"), ("mmpose,mmpose", "names a source twice")):
        with pytest.raises(ValueError, match=message):
            parse_chain(bad)
    with pytest.raises(ValueError, match="unknown pose source"):
        CropConfig(pose_source="posegan-csv,openpose")
    routed = route_options(["posegan-csv", "blazepose"], {"csv_paths": ["a.csv"], "blazepose.roi_scale": 1.4,
                                                          "mmpose.checkpoint": "x.pth", "mmpose": {"device": "cpu"}})
    assert routed == {"posegan-csv": {"csv_paths": ["a.csv"]}, "blazepose": {"roi_scale": 1.4}}
    with pytest.raises(ValueError, match=r"pose option 'checkpoint' is not taken by pose source\(s\) posegan-csv"):
        route_options(["posegan-csv"], {"checkpoint": "x.pth"})


def test_mmpose_after_a_worker_source_is_refused(tmp_path):
    pytest.importorskip("mediapipe")
    with pytest.raises(ValueError, match="mmpose runs batched in the main process and must come before blazepose"):
        build_chain("blazepose,mmpose", tmp_path, {"mmpose.checkpoint": "random"})


def test_auto_picks_precomputed_then_mmpose_weights_then_blazepose(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "with" / "keypoints").mkdir(parents=True)
    assert auto_kind(tmp_path / "with", {}) == "openpose-json"
    assert auto_kind(tmp_path, {"checkpoint": "/some/rtmpose.pth"}) == "mmpose"
    # no checkpoint and nothing in the torch hub cache: no download is tried, BlazePose (or a clear error)
    try:
        import mediapipe  # noqa: F401
        assert auto_kind(tmp_path, {}) == "blazepose"
    except ImportError:
        with pytest.raises(ValueError, match="no pose source can run here"):
            auto_kind(tmp_path, {})
    pytest.importorskip("mmpose")
    from posecrop.sources.mmpose_source import DEFAULT_CONFIG

    url = [line for line in DEFAULT_CONFIG.read_text().splitlines() if line.strip().startswith("'rtmpose")][0]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.strip(" ')")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert auto_kind(tmp_path, {}) == "mmpose"


def test_chain_falls_through_per_image_and_records_the_source(small_market, tmp_path, csvs):
    """openpose-json first (files for some images, one with nobody in it), then the pose-gan CSV (DPM boxes only):
    per image the first source with a joint wins; nobody found anywhere -> 'none' (frame fallback); not covered
    by any source -> failed with both reasons."""
    kp_dir = tmp_path / "keypoints"
    person = [v for j in range(18) for v in (20 + j % 3, 10 + 6 * j, 0.9)]
    _openpose(kp_dir / "query" / "0001_c1s1_001051_00_keypoints.json", [person])
    _openpose(kp_dir / "bounding_box_train" / "0002_c2s1_000351_01_keypoints.json", [person])
    _openpose(kp_dir / "query" / "0051_c3s1_005551_00_keypoints.json", [])          # nobody: not in the CSV
    _openpose(kp_dir / "bounding_box_train" / "0011_c6s4_002502_01_keypoints.json", [])  # nobody: the CSV has it
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="openpose-json,posegan-csv",
                            pose_options={"keypoints_dir": str(kp_dir), "csv_paths": csvs}, workers=0,
                            progress=False))
    rows = _rows(out)
    assert {k: r["pose_source"] for k, r in rows.items()} == {
        "0001_c1s1_001051_00.jpg": "openpose-json", "0002_c2s1_000351_01.jpg": "openpose-json",
        "0051_c3s1_005551_00.jpg": "none", "0011_c6s4_002502_01.jpg": "posegan-csv",
        "0018_c4s1_002351_02.jpg": "posegan-csv"}
    assert (np.array(rows["0051_c3s1_005551_00.jpg"]["joint_source"]) == 2).all()  # frame fallback
    assert np.allclose(rows["0001_c1s1_001051_00.jpg"]["scores"], 0.9)
    assert s.failed == 1 and s.pose_sources == {"openpose-json": 2, "none": 1, "posegan-csv": 2}
    entry = [json.loads(line) for line in (out / "crop_report.jsonl").read_text().splitlines()][0]
    assert entry["image_id"] == "query/1285_c1s5_053991_00.jpg" and entry["status"] == "failed"
    assert "OpenPose keypoint file not found" in entry["reason"] and "no keypoints for this image in" in entry["reason"]
    info = cache_info(out)
    assert info["splits"]["query"]["pose_sources"] == {"none": 1, "openpose-json": 1}
    assert info["settings"]["pose_source"]["backend"] == "openpose-json,posegan-csv"


def test_a_corrupt_keypoint_file_fails_its_image_instead_of_falling_through(small_market, tmp_path, csvs):
    kp_dir = tmp_path / "keypoints"
    bad = kp_dir / "bounding_box_train" / "0002_c2s1_000351_01_keypoints.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="openpose-json,posegan-csv",
                            pose_options={"keypoints_dir": str(kp_dir), "csv_paths": csvs}, workers=0,
                            progress=False))
    entries = [json.loads(line) for line in (out / "crop_report.jsonl").read_text().splitlines()]
    failed = {e["image_id"]: e["reason"] for e in entries if e["status"] == "failed"}
    assert "bounding_box_train/0002_c2s1_000351_01.jpg" in failed
    assert "not valid JSON" in failed["bounding_box_train/0002_c2s1_000351_01.jpg"]
    assert s.pose_sources == {"posegan-csv": 2}  # the two other DPM boxes; the query images are covered by neither


def test_single_source_keeps_failing_uncovered_images(small_market, tmp_path, csvs):
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="posegan-csv",
                            pose_options={"csv_paths": csvs}, workers=0, progress=False))
    assert s.written == 3 and s.failed == 3 and s.pose_sources == {"posegan-csv": 3}
    assert json.loads(pq.read_schema(next(out.glob("*/part-*.parquet"))).metadata[b"posecrop"])[
        "pose_source"]["backend"] == "posegan-csv"


def test_caches_without_the_pose_source_column_still_read(small_market, tmp_path, csvs):
    """A cache written before the column existed (simulated by dropping it), then resumed by this version."""
    out = tmp_path / "cache"
    run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="posegan-csv",
                        pose_options={"csv_paths": csvs}, workers=0, progress=False, limit=2))
    for part in out.glob("*/part-*.parquet"):
        table = pq.read_table(part)
        old = table.drop_columns(["pose_source"])
        pq.write_table(old.replace_schema_metadata(table.schema.metadata), part)
    assert "pose_source" not in pq.read_schema(next(out.glob("*/part-*.parquet"))).names
    run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="posegan-csv",
                        pose_options={"csv_paths": csvs}, workers=0, progress=False))
    # a split with old and new part files reads the column as null for the old rows; one with only old parts lacks it
    names = [r.get("pose_source") for split in ("train", "gallery") for r in read_split(out, split).to_pylist()]
    assert sorted(names, key=str) == sorted([None, None, "posegan-csv"], key=str)
    counts = {k: v for s in cache_info(out)["splits"].values() for k, v in s["pose_sources"].items()}
    assert counts == {"unrecorded": 2, "posegan-csv": 1}
    from reidtrain.data import read_split_table

    assert read_split_table(out, "train", ["image_id", "pid", "camid"]).num_rows == 2


def test_resume_with_other_blazepose_options_is_refused(small_market, tmp_path):
    pytest.importorskip("mediapipe")
    from posecrop.cache_reader import CacheError

    out = tmp_path / "cache"
    run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="blazepose", workers=0,
                        progress=False, limit=1))
    with pytest.raises(CacheError, match="pose_source"):
        run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="blazepose", workers=0,
                            pose_options={"roi_scale": 1.5}, progress=False))
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, pose_source="blazepose", workers=0,
                            progress=False))
    assert s.already_done == 1 and s.written == 5
