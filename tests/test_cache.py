"""The Parquet crop cache: round trip (pyarrow and Hugging Face datasets), atomic parts, resume bookkeeping,
shard locks, the report, and refusal of unsafe stored paths."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from posecrop.cache import (CacheLockedError, CacheWriter, RunReport, Shard, ShardLock, cache_info, rows_to_table,
                            shard_of)
from posecrop.cache_reader import (REPORT_NAME, CacheError, UnsafePathError, all_part_files, cache_settings,
                                   check_relative_path, existing_image_ids, load_image_bytes, open_cache, read_report,
                                   read_split)
from posecrop.crops import encode_image
from posecrop.regions import REGION_NAMES
from posecrop.schema import IMAGE_COLUMNS, cache_schema

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"beta": 0.1, "threshold": 0.1, "pose_source": {"backend": "test", "keypoints_dir": "/somewhere"}}


def _row(i: int, split: str = "train", colour: int = 0) -> dict:
    rng = np.random.default_rng(i)
    crops = {}
    for name, (h, w) in zip(IMAGE_COLUMNS, [(128, 64), (384, 192)] + [(96, 192)] * 4):
        crops[name] = {"bytes": encode_image(np.full((h, w, 3), (colour + i) % 256, np.uint8)),
                       "path": f"{split}/{i:04d}_{name}.jpg"}
    return {
        "image_id": f"{split}/{i:04d}_c1s1_000001_01.jpg", "dataset": "market", "split": split, "pid": i,
        "camid": i % 3, "width": 64, "height": 128,
        "keypoints": rng.uniform(0, 64, (18, 2)).astype(np.float32), "scores": rng.uniform(0, 1, 18),
        "joint_source": (np.arange(18) % 3).astype(np.int8), "boxes": rng.uniform(0, 64, (5, 4)),
        "outside": np.linspace(0, 0.4, 5), "beta": 11.5, **crops,
    }


def _temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".*.tmp")]


def test_round_trip_with_pyarrow(tmp_path):
    with CacheWriter(tmp_path, SETTINGS, rows_per_part=3) as w:
        for i in range(7):
            w.add(_row(i))
        w.add(_row(100, "query"))
    parts = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert parts == ["part-000of001-000000.parquet", "part-000of001-000001.parquet", "part-000of001-000002.parquet"]
    assert [p.name for p in (tmp_path / "query").iterdir()] == ["part-000of001-000003.parquet"]
    assert not _temporaries(tmp_path)
    t = read_split(tmp_path, "train")
    assert t.schema.equals(cache_schema(SETTINGS), check_metadata=False)
    assert t.num_rows == 7 and sorted(t.column("pid").to_pylist()) == list(range(7))
    row = {r["pid"]: r for r in t.to_pylist()}[5]
    ref = _row(5)
    np.testing.assert_allclose(row["keypoints"], ref["keypoints"], rtol=1e-6)
    np.testing.assert_allclose(row["boxes"], ref["boxes"].astype(np.float32), rtol=1e-6)
    assert row["joint_source"] == ref["joint_source"].tolist()
    assert Image.open(io.BytesIO(row["body"]["bytes"])).size == (192, 384)
    assert row["head"]["path"] == "train/0005_head.jpg"
    assert cache_settings(tmp_path)["beta"] == 0.1 and cache_settings(tmp_path)["format_version"] == 1
    # only the requested columns; the pyarrow dataset spans all splits and ignores the report
    (tmp_path / REPORT_NAME).write_text('{"status": "failed"}\n')
    assert read_split(tmp_path, "train", ["image_id"]).column_names == ["image_id"]
    assert open_cache(tmp_path).count_rows() == 8
    assert existing_image_ids(tmp_path) == {_row(i)["image_id"] for i in range(7)} | {_row(100, "query")["image_id"]}


def test_hugging_face_datasets_decodes_the_image_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    with CacheWriter(tmp_path / "cache", SETTINGS, rows_per_part=4) as w:
        for i in range(6):
            w.add(_row(i, "gallery", colour=40))
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "cache" / "gallery"),
                               cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.num_rows == 6
    first = ds[0]
    for name in IMAGE_COLUMNS:
        assert isinstance(first[name], Image.Image)
    assert first["body"].size == (192, 384) and first["upper_leg"].size == (192, 96)
    assert len(first["keypoints"]) == 18 and len(first["boxes"]) == len(REGION_NAMES)
    assert sorted(ds["pid"]) == list(range(6))


def test_resume_bookkeeping_and_temporaries_of_a_killed_writer(tmp_path):
    with CacheWriter(tmp_path, SETTINGS, rows_per_part=2) as w:
        for i in range(3):
            w.add(_row(i))
    # leftovers of an interrupted write: this shard's and another shard's (which may still be running)
    own = tmp_path / "train" / ".part-000of001-000009.parquet.abc.tmp"
    other = tmp_path / "train" / ".part-001of002-000000.parquet.xyz.tmp"
    own.write_bytes(b"half")
    other.write_bytes(b"half")
    assert open_cache(tmp_path).count_rows() == 3  # temporaries are not part of the cache
    with CacheWriter(tmp_path, SETTINGS, rows_per_part=2) as w:
        assert w.done == {_row(i)["image_id"] for i in range(3)}
        assert not own.exists() and other.exists()
        w.add(_row(3))
    names = sorted(p.name for p in (tmp_path / "train").glob("part-*"))
    assert names[-1] == "part-000of001-000002.parquet"  # numbering continues after the existing parts
    assert read_split(tmp_path, "train").num_rows == 4


def test_settings_of_a_resumed_run_must_match(tmp_path):
    with CacheWriter(tmp_path, SETTINGS) as w:
        w.add(_row(0))
    moved = {**SETTINGS, "pose_source": {"backend": "test", "keypoints_dir": "/elsewhere"}}
    with CacheWriter(tmp_path, moved) as w:  # paths of precomputed keypoints may differ between machines
        w.add(_row(1))
    with pytest.raises(CacheError, match="beta"):
        CacheWriter(tmp_path, {**SETTINGS, "beta": 0.2}).open()
    with pytest.raises(CacheError, match="pose_source"):
        CacheWriter(tmp_path, {**SETTINGS, "pose_source": {"backend": "mmpose"}}).open()
    # a refused writer releases its lock
    ShardLock(tmp_path, Shard()).acquire()


def test_same_shard_is_refused_in_another_process_other_shards_are_not(tmp_path):
    with CacheWriter(tmp_path, SETTINGS, Shard(0, 2)):
        code = ("import sys; from posecrop.cache import CacheWriter, Shard, CacheLockedError\n"
                "try:\n"
                f"    CacheWriter({str(tmp_path)!r}, {{}}, Shard(int(sys.argv[1]), 2)).open()\n"
                "except CacheLockedError as e:\n"
                "    print(e); sys.exit(3)\n")
        same = subprocess.run([sys.executable, "-c", code, "0"], cwd=REPO, capture_output=True, text=True)
        assert same.returncode == 3, same.stderr
        assert "shard 0/2" in same.stdout and "another process" in same.stdout and f"pid {os.getpid()}" in same.stdout
        other = subprocess.run([sys.executable, "-c", code, "1"], cwd=REPO, capture_output=True, text=True)
        assert other.returncode == 0, other.stdout + other.stderr
        with pytest.raises(CacheLockedError):  # also within one process: flock is per open file
            ShardLock(tmp_path, Shard(0, 2)).acquire()
    ShardLock(tmp_path, Shard(0, 2)).acquire()  # released on close


def test_shards_partition_the_images():
    ids = [f"bounding_box_train/{i:04d}_c1s1_{i * 7:06d}_01.jpg" for i in range(600)]
    owners = [[Shard(i, 3).owns(x) for i in range(3)] for x in ids]
    assert all(sum(o) == 1 for o in owners)
    counts = np.bincount([shard_of(x, 3) for x in ids], minlength=3)
    assert counts.min() > 150  # roughly balanced
    assert Shard.parse(" 2 / 5 ") == Shard(2, 5) and Shard(2, 5).token == "002of005"
    for bad in ("5/5", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.jpg", "a/../../b.jpg", "C:/x.jpg", "a\\b.jpg", "", "a//b",
                                  "./a.jpg", "a/\x00.jpg"])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(UnsafePathError):
        check_relative_path(path)


def test_untrusted_cache_cannot_point_outside_its_root(tmp_path):
    cache = tmp_path / "cache"
    (cache / "train").mkdir(parents=True)
    rows = [_row(0), _row(1)]
    rows[1]["image_id"] = "../../etc/passwd"
    schema = cache_schema(SETTINGS)
    table = rows_to_table(rows[:1], schema)
    evil = table.set_column(0, schema.field("image_id"), pa.array(["../../etc/passwd"]))
    pq.write_table(evil, cache / "train" / "part-000of001-000000.parquet")
    with pytest.raises(UnsafePathError, match="image_id"):
        read_split(cache, "train")
    with pytest.raises(UnsafePathError):
        CacheWriter(tmp_path / "other", SETTINGS).add(rows[1])
    # an image struct without bytes is read from under the given root only
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"ok")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (root / "a" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert load_image_bytes({"bytes": None, "path": "a/x.jpg"}, root) == b"ok"
    with pytest.raises(UnsafePathError):
        load_image_bytes({"bytes": None, "path": "../secret.jpg"}, root)
    with pytest.raises(UnsafePathError, match="outside"):
        load_image_bytes({"bytes": None, "path": "a/link.jpg"}, root)
    with pytest.raises(CacheError, match="split"):
        read_split(cache, "../train")


def test_report_blocks_and_torn_lines(tmp_path):
    a, b = RunReport(tmp_path, "run-a"), RunReport(tmp_path, "run-b")
    a.add("failed", "x/1.jpg", "corrupt", "train")
    a.flush()
    b.add("skipped", "x/2.jpg", "bad name")
    b.flush()
    a.add_summary({"written": 3})
    a.flush()
    with open(tmp_path / REPORT_NAME, "a") as f:
        f.write('{"run": "run-c", "status": "fai')  # a run killed in the middle of a write
    entries = read_report(tmp_path)
    assert [(e["run"], e["status"]) for e in entries] == [("run-a", "failed"), ("run-b", "skipped"),
                                                          ("run-a", "summary")]
    assert entries[0]["reason"] == "corrupt" and entries[2]["written"] == 3


def test_cache_info_numbers(tmp_path):
    with CacheWriter(tmp_path, SETTINGS, rows_per_part=2) as w:
        for i in range(5):
            w.add(_row(i))
        w.add(_row(9, "query"))
    info = cache_info(tmp_path)
    tr = info["splits"]["train"]
    assert tr["rows"] == 5 and tr["ids"] == 5 and tr["cameras"] == 3 and tr["parts"] == 3 and tr["duplicates"] == 0
    assert tr["repaired_joints"] == pytest.approx(6 / 18) and tr["fallback_joints"] == pytest.approx(6 / 18)
    assert tr["body_outside"] == pytest.approx(0.0)
    assert set(info["splits"]) == {"train", "query"}
    assert json.dumps(info)  # JSON-able for `info --json`
    with pytest.raises(CacheError, match="no part files"):
        cache_info(tmp_path / "nothing")
    assert len(all_part_files(tmp_path)) == 4
