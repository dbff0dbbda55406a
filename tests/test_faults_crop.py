"""Fault suite of the crop stage (issue 7): bad inputs, interruption, concurrency, untrusted files, full disks.

Every test runs the real `python cli.py crop` (or the public API) on a synthetic Market-1501 layout with broken
files written by tests/faultkit.py, and compares what survives with an uninterrupted run of the same data: the
crop stage is deterministic, so "no work lost" means "the same rows, byte for byte". What each fault does:

fault                                    outcome                                                   data lost
zero-byte / truncated / garbage JPEG     run goes on, image `failed` in the report naming file     none
PNG named .jpg, grey, RGBA, CMYK, 16-bit decoded to RGB and cropped (whole.path gets the real ext.) none
1x1 image                                cropped, every joint from the frame fallback              none
10k x 10k image                          `failed: image too large` from the header, never decoded  none
unparseable / out-of-range file names    `skipped` in the report, run goes on                      none
keypoints NaN/null/negative/outside/inf  those joints count as missing and are repaired            none
keypoints wrong length/strings/not JSON  `failed` naming the keypoint file and the problem         none
broken symbolic link                     `failed` (file not found)                                 none
empty split folder / only bad names      exit 1 before any work, message names the folder          none
SIGKILL (3 seeded points, one mid-write) re-run gives the rows of an uninterrupted run             none
Ctrl-C (SIGINT to the process group)     exit 130, buffered rows saved, re-run completes           none
two shards at once / same shard          union = unsharded run / second exits 3 naming the holder  none
different shard counts at once           second exits 3 (overlapping shards would duplicate rows)  none
absolute or '..' paths in a cache        readers (info, show, training loader) refuse              none
recipe with unknown key / wrong type     exit 1 naming the key, nothing written                    none
malicious pickle as pose checkpoint      refused, its code never runs (even with the torch env     none
                                         variable that turns weights_only off)
file size limit / disk full / read-only  exit 1 naming the file, no temporary left, re-run resumes none
report on a full disk, torn report line  exit 1 naming the report; parts kept; next run appends   none
a part file damaged later                exit 1 naming it ("move it away"); doing so redoes it     its rows, redone
"""
from __future__ import annotations

import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import faultkit as fk
from posecrop.cache_reader import UnsafePathError, load_image_bytes, read_split
from posecrop.crop_stage import CropConfig, run_crop
from posecrop.regions import REGION_NAMES

CROP_FLAGS = ("--batch-size", "4", "--rows-per-part", "3", "--no-progress")


# ------------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return fk.synth_market(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def base_rows(base, tmp_path_factory) -> dict[str, dict]:
    """The rows of an uninterrupted, fault-free run over `base`."""
    out = tmp_path_factory.mktemp("base-ref") / "cache"
    run_crop(CropConfig(root=base, out=out, workers=0, progress=False))
    return fk.cache_rows(out)


@pytest.fixture(scope="module")
def replicated(base, tmp_path_factory) -> Path:
    """`base` three times (~180 images): long enough a run to interrupt it at several points."""
    root = tmp_path_factory.mktemp("replicated") / "data"
    fk.replicate(base, root, 3)
    return root


@pytest.fixture(scope="module")
def reference(replicated, tmp_path_factory) -> dict[str, dict]:
    """The rows of an uninterrupted run over `replicated` (in this process, one worker-less pass)."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    run_crop(CropConfig(root=replicated, out=out, workers=0, rows_per_part=1000, progress=False))
    rows = fk.cache_rows(out)
    assert len(rows) > 150
    return rows


def assert_same_rows(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Same image ids and every column of every row identical (keypoints, boxes, crop bytes, ...)."""
    assert set(got) == set(expected), (f"missing {sorted(set(expected) - set(got))[:5]}, "
                                       f"extra {sorted(set(got) - set(expected))[:5]}")
    differ = [i for i in expected if got[i] != expected[i]]
    assert not differ, f"{len(differ)} rows differ, e.g. {differ[0]}: " + ", ".join(
        k for k in expected[differ[0]] if got[differ[0]][k] != expected[differ[0]][k])


def assert_intact(cache: Path) -> None:
    """No temporaries or foreign files, no duplicate rows, every part file readable on its own."""
    assert not fk.leftovers(cache), fk.leftovers(cache)
    ids = fk.part_ids(cache)  # reads each part file
    assert len(ids) == len(set(ids)), "duplicate rows"


# ------------------------------------------------------------------------------------------------ bad inputs

T = "bounding_box_train/"
FULL = fk.openpose_text(fk.flat_pose(fk.UPRIGHT_POSE))
NAN, INF = float("nan"), float("inf")


def _nose(x, y, c=0.9) -> str:
    """The upright pose with the nose (joint 0) replaced by x, y, c."""
    return fk.openpose_text([x, y, c] + fk.flat_pose(fk.UPRIGHT_POSE)[3:])


@dataclass
class Fault:
    id: str
    rel: str
    image: Callable[[], bytes | None]
    keypoints: str | None = FULL
    status: str = "failed"          # failed / skipped / ok (cropped) / nose (nose joint missing, rest kept)
    reason: str = ""                # regex the report reason must match (failed / skipped)
    link: str | None = None         # make `rel` a symbolic link to this target instead


JPG = lambda: fk.encode(fk.person(), quality=92)  # noqa: E731

FAULTS = [
    Fault("zero-byte jpeg", T + "0101_c1s1_000001_01.jpg", fk.zero_bytes, reason=r"empty file \(0 bytes\)"),
    Fault("truncated jpeg (half)", T + "0101_c1s1_000002_01.jpg", lambda: fk.truncated_jpeg(0.5),
          reason="truncated"),
    Fault("truncated jpeg (header only)", T + "0101_c1s1_000003_01.jpg", lambda: fk.truncated_jpeg(0.05),
          reason="truncated"),
    Fault("jpeg without end marker", T + "0101_c1s1_000004_01.jpg", lambda: JPG()[:-2], reason="truncated"),
    Fault("random bytes named .jpg", T + "0101_c1s1_000005_01.jpg", fk.garbage,
          reason="not a readable image"),
    Fault("10k x 10k jpeg", T + "0101_c1s1_000006_01.jpg", fk.huge_flat_jpeg,
          reason=r"too large \(10000x10000 = 100000000 pixels > max_pixels"),
    Fault("broken symbolic link", T + "0101_c1s1_000007_01.jpg", lambda: None, link="/nonexistent/x.jpg",
          reason="No such file"),
    Fault("png named .jpg", T + "0102_c1s1_000001_01.jpg", fk.png_bytes, status="ok"),
    Fault("greyscale jpeg", T + "0102_c1s1_000002_01.jpg", fk.grey_jpeg, status="ok"),
    Fault("rgba png (alpha 0)", T + "0102_c1s1_000003_01.png", fk.rgba_png, status="ok"),
    Fault("cmyk jpeg", T + "0102_c1s1_000004_01.jpg", fk.cmyk_jpeg, status="ok"),
    Fault("16-bit png", T + "0102_c1s1_000005_01.png", fk.png16, status="ok"),
    Fault("1x1 jpeg", T + "0102_c1s1_000006_01.jpg", fk.one_by_one, status="ok"),
    *[Fault(f"unparseable name {n}", T + n, JPG, status="skipped", reason=r"does not match|camera c9 outside")
      for n in fk.UNPARSEABLE_NAMES],
    Fault("keypoints: all NaN", T + "0103_c1s1_000001_01.jpg", JPG, fk.openpose_text([NAN] * 54), status="ok"),
    Fault("keypoints: NaN joint", T + "0103_c1s1_000002_01.jpg", JPG, _nose(NAN, NAN), status="nose"),
    Fault("keypoints: null joint", T + "0103_c1s1_000003_01.jpg", JPG, _nose(None, None, None), status="nose"),
    Fault("keypoints: negative joint", T + "0103_c1s1_000004_01.jpg", JPG, _nose(-5, 10), status="nose"),
    Fault("keypoints: joint outside the image", T + "0103_c1s1_000005_01.jpg", JPG, _nose(500, 10),
          status="nose"),
    Fault("keypoints: 1e300 joint", T + "0103_c1s1_000006_01.jpg", JPG, _nose(1e300, 1e300), status="nose"),
    Fault("keypoints: infinite joint", T + "0103_c1s1_000007_01.jpg", JPG, _nose(INF, 3, NAN), status="nose"),
    Fault("keypoints: negative score", T + "0103_c1s1_000008_01.jpg", JPG, _nose(32, 14, -1), status="nose"),
    Fault("keypoints: wrong length", T + "0104_c1s1_000001_01.jpg", JPG,
          fk.openpose_text(fk.flat_pose(fk.UPRIGHT_POSE)[:51]), reason="has 51 numbers; expected 54"),
    Fault("keypoints: strings", T + "0104_c1s1_000002_01.jpg", JPG,
          fk.openpose_text(["a"] + fk.flat_pose(fk.UPRIGHT_POSE)[1:]), reason="non-numbers"),
    Fault("keypoints: not JSON", T + "0104_c1s1_000003_01.jpg", JPG, "{not json", reason="not valid JSON"),
    Fault("keypoints: no people list", T + "0104_c1s1_000004_01.jpg", JPG, fk.openpose_text(None),
          reason="not an OpenPose keypoint file"),
    Fault("keypoints: file missing", T + "0104_c1s1_000005_01.jpg", JPG, None, reason="keypoint file not found"),
]
BY_ID = {f.id: f for f in FAULTS}


@dataclass
class BadRun:
    root: Path
    cache: Path
    proc: subprocess.CompletedProcess = field(repr=False)
    maxrss_mb: float
    report: dict[str, dict] = field(default_factory=dict, repr=False)
    rows: dict[str, dict] = field(default_factory=dict, repr=False)


@pytest.fixture(scope="module")
def bad_run(base, tmp_path_factory) -> BadRun:
    """One real `crop` (one worker process) over the synthetic data with every fault of FAULTS added."""
    tmp = tmp_path_factory.mktemp("bad")
    root = fk.copy_dataset(base, tmp / "data")
    for f in FAULTS:
        if f.link:
            (root / f.rel).symlink_to(f.link)
        fk.put(root, f.rel, f.image(), f.keypoints)
    cache = tmp / "cache"
    proc, rss = fk.cli_maxrss("crop", "--root", root, "--out", cache, "--workers", "1", "--batch-size", "8",
                              "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return BadRun(root, cache, proc, rss, fk.report_by_image(cache), fk.cache_rows(cache))


@pytest.mark.parametrize("fault", [f.id for f in FAULTS if f.status in ("failed", "skipped")])
def test_bad_input_is_reported_by_name_and_reason_and_the_run_goes_on(bad_run, fault):
    f = BY_ID[fault]
    entry = bad_run.report.get(f.rel)
    assert entry is not None, f"{f.rel} is not in the run report"
    assert entry["status"] == f.status and entry["split"] in (None, "train")
    assert re.search(f.reason, entry["reason"]), entry["reason"]
    name = Path(f.rel).stem  # the image, or its keypoint file (<stem>_keypoints.json), is named
    assert name in entry["reason"] or f.status == "skipped", entry["reason"]
    assert f.rel not in bad_run.rows


def test_bad_inputs_leave_the_good_images_untouched(bad_run, base_rows):
    """Every good image is in the cache with exactly the row of a run without the bad files; the console
    names the first problems with their files; the 10k x 10k image was never decoded (300 MB as RGB)."""
    assert_same_rows({k: v for k, v in bad_run.rows.items() if k in base_rows}, base_rows)
    expected_rows = len(base_rows) + sum(f.status in ("ok", "nose") for f in FAULTS)
    assert len(bad_run.rows) == expected_rows
    failed = sum(f.status == "failed" for f in FAULTS)
    skipped = sum(f.status == "skipped" for f in FAULTS)
    out = " ".join(bad_run.proc.stdout.split())
    assert f"{expected_rows} rows written" in out and f"{failed} failed, {skipped} skipped" in out
    assert "crop_report.jsonl" in out
    listed = [line for line in bad_run.proc.stderr.splitlines() if line.startswith(("failed:", "skipped:"))]
    assert len(listed) == 10 and f"and {failed + skipped - 10} more" in bad_run.proc.stderr
    problem_files = {f.rel for f in FAULTS if f.status in ("failed", "skipped")}
    assert all(any(rel in line for rel in problem_files) for line in listed), listed
    assert "Traceback" not in bad_run.proc.stderr
    assert bad_run.maxrss_mb < 400, f"peak memory {bad_run.maxrss_mb:.0f} MB: was the 10k x 10k image decoded?"


def _rgb(blob: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(blob))
    assert img.mode == "RGB"
    return np.asarray(img, dtype=np.float64)


def test_unusual_but_valid_images_are_converted_and_cropped(bad_run):
    rows = {f.id: bad_run.rows[f.rel] for f in FAULTS if f.status == "ok"}
    for fid, row in rows.items():
        for name, size in zip(REGION_NAMES, [(192, 384)] + [(192, 96)] * 4):
            assert Image.open(io.BytesIO(row[name]["bytes"])).size == size, fid
        assert row["whole"]["bytes"] == (bad_run.root / BY_ID[fid].rel).read_bytes(), fid
    png = rows["png named .jpg"]
    assert png["whole"]["path"] == BY_ID["png named .jpg"].rel[:-4] + ".png"  # the real format's extension
    assert (png["width"], png["height"]) == (64, 128) and (np.array(png["joint_source"]) == 0).all()
    # RGBA with alpha 0: the colours are used (same pixels and pose as the PNG -> the same crops, byte for byte)
    assert all(rows["rgba png (alpha 0)"][n]["bytes"] == png[n]["bytes"] for n in REGION_NAMES)
    body = _rgb(png["body"]["bytes"])
    assert np.abs(_rgb(rows["cmyk jpeg"]["body"]["bytes"]) - body).mean() < 8
    grey = _rgb(rows["greyscale jpeg"]["body"]["bytes"])
    assert np.abs(grey - grey[..., :1]).max() <= 3
    deep = _rgb(rows["16-bit png"]["body"]["bytes"])  # 16-bit grey = red channel * 257 -> scaled back to 8 bits
    assert np.abs(deep - body[..., :1]).mean() < 6
    tiny = rows["1x1 jpeg"]
    assert (tiny["width"], tiny["height"]) == (1, 1) and (np.array(tiny["joint_source"]) == 2).all()
    nan = rows["keypoints: all NaN"]
    assert (np.array(nan["joint_source"]) == 2).all() and np.isfinite(nan["keypoints"]).all()


@pytest.mark.parametrize("fault", [f.id for f in FAULTS if f.status == "nose"])
def test_bad_keypoint_values_count_as_missing_joints(bad_run, fault):
    row = bad_run.rows[BY_ID[fault].rel]
    kp, src = np.array(row["keypoints"]), np.array(row["joint_source"])
    assert np.isfinite(kp).all() and np.isfinite(row["boxes"]).all()
    assert src[0] != 0 and (src[1:] == 0).all()  # the bad nose is repaired, the 17 good joints are kept as read
    np.testing.assert_array_equal(kp[1:], fk.UPRIGHT_POSE[1:])
    assert 0 <= kp[0, 0] <= 64 and 0 <= kp[0, 1] <= 128 and row["scores"][0] == 0


@pytest.mark.parametrize("case", ["empty", "only bad names", "missing"])
def test_empty_split_folder_stops_before_any_work(base, tmp_path, case):
    root = fk.copy_dataset(base, tmp_path / "data")
    query = root / "query"
    shutil.rmtree(query)
    if case != "missing":
        query.mkdir()
    if case == "only bad names":
        for i, name in enumerate(("IMG_0001.jpg", "IMG_0002.jpg")):
            (query / name).write_bytes(fk.encode(fk.person(seed=i)))
    out = tmp_path / "cache"
    r = fk.cli("crop", "--root", root, "--out", out, "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "DatasetLayoutError" in msg and "query" in msg and "Traceback" not in msg
    assert {"empty": "folder query holds no images", "only bad names": "none of the 2 images in folder query",
            "missing": "missing: query"}[case] in msg
    if case == "only bad names":
        assert "query/IMG_0001.jpg: file name does not match" in msg
    assert not out.exists()  # nothing started


# ------------------------------------------------------------------------------------------------ interruption


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_cache(replicated, reference, tmp_path):
    rng = random.Random(2024)
    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, *CROP_FLAGS)
    progress = [0]

    # Each run stops itself at a seeded point (reidkit.pause) and is SIGKILLed there: the same points on any CPU.
    # 1: the worker-pool path, after a seeded number of part files
    p = fk.popen_paused(*args, "--workers", "1", event="part-written", n=rng.randint(1, 4))
    workers = fk.children(p.pid)
    assert workers, "the worker pool had not started"
    fk.kill(p)
    fk.wait_for(lambda: not any(fk.alive(w) for w in workers), timeout=20)  # no orphaned workers
    progress.append(len(fk.part_ids(out)))

    # 2: in the middle of writing a part file: written under its temporary name, not yet renamed
    p = fk.popen_paused(*args, "--workers", "0", event="part-temp", n=rng.randint(1, 4))
    temporaries = list(out.glob("*/.part-*.tmp"))
    fk.kill(p)
    assert temporaries and all(t.exists() for t in temporaries)  # a half-written part, under a temporary name
    progress.append(len(fk.part_ids(out)))

    # 3: after a seeded number of further part files
    p = fk.popen_paused(*args, "--workers", "0", event="part-written", n=rng.randint(1, 4))
    fk.kill(p)
    progress.append(len(fk.part_ids(out)))
    assert progress == sorted(progress) and progress[-1] < len(reference)
    assert not any(t.exists() for t in temporaries) and fk.part_ids(out)  # the next run removed its temporaries

    done = fk.cli(*args, "--workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), reference)


def test_ctrl_c_saves_finished_rows_and_a_rerun_completes(replicated, reference, tmp_path):
    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, "--workers", "2", *CROP_FLAGS)
    p = fk.popen_paused(*args, new_session=True, event="part-written")  # stopped after its first part file
    os.killpg(p.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole process group
    fk.resume(p)  # the interrupt is pending: it lands right after that first part file
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err  # workers ignore the interrupt, the main process stops them
    assert_intact(out)
    kept = fk.part_ids(out)
    assert 0 < len(kept) < len(reference)
    done = fk.cli("crop", "--root", replicated, "--out", out, "--workers", "0", *CROP_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), reference)


# ------------------------------------------------------------------------------------------------ concurrency


def _started(out: Path, *args: str) -> subprocess.Popen:
    """A crop process, stopped (SIGSTOP) right after its first part file: it holds its locks and has rows on
    disk and in memory while another process runs."""
    return fk.popen_paused(*args, event="part-written")


def test_two_shards_at_the_same_time_give_the_unsharded_cache(replicated, reference, tmp_path):
    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, "--workers", "0", *CROP_FLAGS)
    first = _started(out, *args, "--shard", "0/2")
    second = fk.cli(*args, "--shard", "1/2")  # runs start to end while shard 0/2 is in the middle of its run
    fk.resume(first)
    first_err = first.communicate(timeout=120)[1]
    assert second.returncode == 0, second.stderr[-2000:]
    assert first.returncode == 0, first_err[-2000:]
    tokens = {p.name.split("-")[1] for p in out.glob("*/part-*.parquet")}
    assert tokens == {"000of002", "001of002"}
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), reference)
    runs = fk.summaries(out)
    assert sorted(s["shard"] for s in runs) == ["0/2", "1/2"] and sum(s["written"] for s in runs) == len(reference)


def test_same_shard_twice_the_second_refuses_and_the_first_finishes(replicated, reference, tmp_path):
    from posecrop.cache import Shard

    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, "--workers", "0", *CROP_FLAGS, "--shard", "0/2")
    first = _started(out, *args)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = fk.cli(*args)
    assert second.returncode == 3, second.stdout + second.stderr
    msg = " ".join(second.stderr.split())
    assert f"shard 0/2 of cache {out} is being written by another process (pid {first.pid})" in msg
    assert "Traceback" not in msg
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # it touched nothing
    fk.resume(first)
    first_err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, first_err[-2000:]
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), {k: v for k, v in reference.items() if Shard(0, 2).owns(k)})


def test_shards_of_another_count_at_the_same_time_are_refused(replicated, reference, tmp_path):
    """0/1 owns every image of 0/2: both at once would write rows twice; the second is refused."""
    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, "--workers", "0", *CROP_FLAGS)
    first = _started(out, *args, "--shard", "0/1")
    second = fk.cli(*args, "--shard", "0/2")
    fk.resume(first)
    first.communicate(timeout=120)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "with --shard i/1" in " ".join(second.stderr.split())
    assert first.returncode == 0
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), reference)
    after = fk.cli(*args, "--shard", "1/2")  # one after the other, other counts are fine (resume)
    assert after.returncode == 0 and "0 rows written" in " ".join(after.stdout.split())


# ------------------------------------------------------------------------------------------------ untrusted


def test_a_cache_from_elsewhere_cannot_point_outside(reference, base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from posecrop.cache_reader import all_part_files

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    src = tmp_path / "good"
    run_crop(CropConfig(root=base, out=src, workers=0, progress=False))
    part = next(p for p in all_part_files(src) if p.parent.name == "train")
    table = pq.read_table(part)
    schema = table.schema
    for case, column, value in (("absolute whole.path", "whole", str(secret)),
                                ("'..' in body.path", "body", "../../secret.txt"),
                                ("'..' in image_id", "image_id", "../secret.txt")):
        rows = table.to_pylist()
        if column == "image_id":
            rows[0]["image_id"] = value
        else:
            rows[0][column] = {"bytes": None, "path": value}
        evil = tmp_path / case.replace(" ", "_").replace("'", "")
        (evil / "train").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), evil / "train" / part.name)
        with pytest.raises(UnsafePathError, match=re.escape(column)):
            read_split(evil, "train")
        with pytest.raises(UnsafePathError):
            load_image_bytes(rows[0][column] if column != "image_id" else {"path": value}, evil / "train")
        # the commands refuse it with a message, not a traceback (`info` reads no image path, only image_id)
        command = ("info", evil) if column == "image_id" else ("show", evil, "--out", tmp_path / "sheet.png")
        if column != "body":
            r = fk.cli(*command)
            assert r.returncode == 1 and "is not a plain relative path" in " ".join(r.stderr.split()), r.stderr
            assert "Traceback" not in r.stderr and not (tmp_path / "sheet.png").exists()
        from reidtrain.data import read_split_table  # the training side reads caches through the same checks
        with pytest.raises(UnsafePathError):
            read_split_table(evil, "train", ["image_id", "pid", column if column != "image_id" else "body"])
    assert secret.read_text() == "do not read"


@pytest.mark.parametrize("recipe,key", [
    ("bogus = 1", "bogus"),
    ('beta = "high"', "beta"),
    ("body_size = [384, 192, 3]", "body_size"),
    ('region_joints = {head = ["nose", 3]}', "region_joints.head[1]"),
    ("workers = 1.5", "workers"),
    ('[crop]\nshard = "0/1"\nrows_per_part = "many"', "rows_per_part"),
])
def test_a_recipe_with_unknown_keys_or_wrong_types_is_rejected_naming_the_key(base, tmp_path, recipe, key):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe + "\n")
    out = tmp_path / "cache"
    r = fk.cli("crop", "--config", path, "--root", base, "--out", out, "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "crop configuration" in msg and key in msg and "Traceback" not in msg, msg
    assert not out.exists()


@pytest.mark.parametrize("recipe, named", [("crop = 5", "'crop' must be a table"),
                                           ('[crop]\npose_options = "x"', "crop.pose_options must be a table")])
def test_a_recipe_whose_tables_are_not_tables_is_rejected_clearly(base, tmp_path, recipe, named):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe + "\n")
    out = tmp_path / "cache"
    r = fk.cli("crop", "--config", path, "--root", base, "--out", out, "--no-progress")
    msg = " ".join(r.stderr.split())
    assert r.returncode == 1 and str(path) in msg and named in msg and "Traceback" not in msg, msg
    assert not out.exists()


def test_flags_decide_where_a_recipe_run_reads_and_writes(base, tmp_path):
    """A recipe naming other folders cannot override --root / --out given on the command line."""
    elsewhere = tmp_path / "elsewhere"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[crop]\nroot = "{tmp_path / "nothing-here"}"\nout = "{elsewhere}"\nworkers = 0\n')
    out = tmp_path / "cache"
    r = fk.cli("crop", "--config", recipe, "--root", base, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not elsewhere.exists() and fk.part_ids(out)


def test_a_malicious_pose_checkpoint_never_runs_its_code(tmp_path):
    """A pickle whose __reduce__ creates a file, given as the mmpose checkpoint, is refused and the file is never
    created, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (which turns off torch.load's default)."""
    pytest.importorskip("mmpose")
    marker = tmp_path / "owned"
    evil = tmp_path / "evil.pth"
    code = (
        "import sys, torch\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        f"        return (open, ({str(marker)!r}, 'w'))\n"
        f"torch.save({{'state_dict': {{'w': torch.zeros(1)}}, 'meta': Evil()}}, {str(evil)!r})\n"
        "from posecrop.sources.mmpose_source import MMPoseSource, PoseCheckpointError\n"
        "try:\n"
        f"    MMPoseSource(config='rtmpose-t_coco17-256x192', checkpoint={str(evil)!r}, threads=1)\n"
        "except PoseCheckpointError as e:\n"
        "    print('REFUSED', e); sys.exit(0)\n"
        "sys.exit(5)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=fk.REPO, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "REFUSED" in r.stdout and str(evil) in r.stdout and "Weights only load failed" in r.stdout
    assert not marker.exists()


def test_every_torch_load_in_the_project_is_weights_only():
    """Static guard: each torch.load call of posecrop / reidtrain / benchmarks passes weights_only=True, and
    no loader that leaves it to torch's default (mmengine's CheckpointLoader, torch.hub's state-dict loader)."""
    calls = []
    for folder in ("posecrop", "reidtrain", "benchmarks"):
        for py in sorted((fk.REPO / folder).rglob("*.py")):
            text = py.read_text(encoding="utf-8")
            for m in re.finditer(r"torch\.load\(", text):
                depth, i = 1, m.end()
                while depth and i < len(text):
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                calls.append((f"{py.relative_to(fk.REPO)}:{text.count(chr(10), 0, m.start()) + 1}",
                              text[m.start():i]))
            for bad in ("CheckpointLoader.load_checkpoint(", "load_state_dict_from_url(", "pickle.load("):
                assert bad not in text, f"{py}: {bad}"
    assert calls, "no torch.load found: the guard would be vacuous"
    unsafe = [where for where, call in calls if not re.search(r"weights_only\s*=\s*True", call)]
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"


# ------------------------------------------------------------------------------------------------ full disks


def test_file_size_limit_mid_run_clear_error_nothing_half_written_rerun_completes(replicated, reference,
                                                                                 tmp_path):
    """A writer whose files may not grow past a limit (RLIMIT_FSIZE, as a full disk: the write fails with
    EFBIG in the middle of a part file)."""
    ref = tmp_path / "sizes"
    run_crop(CropConfig(root=replicated, out=ref, workers=0, rows_per_part=3, batch_size=4, progress=False))
    sizes = [p.stat().st_size for p in sorted((ref / "train").glob("part-*.parquet"))]
    limit = max(sizes[0], int(np.median(sizes))) + 1  # the first part fits, a later (larger) one does not
    assert max(sizes) > limit
    out = tmp_path / "cache"
    args = ("crop", "--root", replicated, "--out", out, "--workers", "0", *CROP_FLAGS)
    r = fk.cli(*args, preexec_fn=fk.limit_file_size(limit))
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "CacheWriteError" in msg and "File too large" in msg and "Traceback" not in msg
    failed_part = re.search(r"(\S+\.parquet): cannot write this part file", msg)
    assert failed_part and Path(failed_part[1]).parent.parent == out and not Path(failed_part[1]).exists()
    assert_intact(out)  # no temporary, every part complete
    kept = fk.part_ids(out)
    assert 0 < len(kept) < len(reference)
    done = fk.cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), reference)


def test_report_on_a_full_disk_clear_error_parts_kept(base, base_rows, tmp_path):
    """/dev/full answers every write with ENOSPC: the run report sits there (a symbolic link). The report is
    written last (the summary), so every part is on disk; a torn report line left behind does not hurt."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "cache"
    out.mkdir()
    (out / "crop_report.jsonl").symlink_to("/dev/full")
    args = ("crop", "--root", base, "--out", out, "--workers", "0", *CROP_FLAGS)
    r = fk.cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert f"{out / 'crop_report.jsonl'}: cannot write the run report (No space left on device)" in msg
    assert_intact(out)
    (out / "crop_report.jsonl").unlink()
    (out / "crop_report.jsonl").write_text('{"run": "killed", "status": "failed", "ima')  # a torn last line
    done = fk.cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_rows(fk.cache_rows(out), base_rows)
    (summary,) = fk.summaries(out)  # the torn line did not swallow the next run's first entry
    assert summary["already_done"] == len(base_rows) and summary["written"] == 0  # every part had been kept


def _in_small_disk(tmp: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a tmpfs of `size` mounted on tmp/disk, in a private mount namespace."""
    disk = tmp / "disk"
    disk.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {disk} && {script}"],
                          cwd=fk.REPO, capture_output=True, text=True, timeout=180, env=fk.child_env())


def test_disk_full_and_read_only_disk(replicated, reference, tmp_path):
    """A real full disk (ENOSPC) and a read-only one (EROFS), each a tmpfs in a private mount namespace. What
    survives on the full disk is copied out and a normal run completes it."""
    if not fk.private_mounts(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN and unshare)")
    from posecrop.schema import IMAGE_COLUMNS

    total = sum(len(r[c]["bytes"]) for r in reference.values() for c in IMAGE_COLUMNS)  # about the cache size
    disk, copy = tmp_path / "disk", tmp_path / "survivors"
    crop = f"{sys.executable} cli.py crop --root {replicated} --workers 0 {' '.join(CROP_FLAGS)}"
    full = _in_small_disk(tmp_path, f"{max(total * 2 // 5 // 1024, 256)}k",  # room for 40 % of it
                          f"{crop} --out {disk}/cache; rc=$?; cp -a {disk}/cache {copy}; exit $rc")
    msg = " ".join(full.stderr.split())
    assert full.returncode == 1, full.stdout + full.stderr
    assert "No space left on device" in msg and f"{disk}/cache/" in msg and "Traceback" not in msg
    assert_intact(copy)
    assert 0 < len(fk.part_ids(copy)) < len(reference)
    done = fk.cli(*crop.split()[2:], "--out", copy)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_rows(fk.cache_rows(copy), reference)

    ro = _in_small_disk(tmp_path, "1m", f"mount -o remount,ro {disk} && {crop} --out {disk}/cache")
    assert ro.returncode == 1, ro.stdout + ro.stderr
    msg = " ".join(ro.stderr.split())
    assert "Read-only file system" in msg and f"{disk}/cache" in msg and "Traceback" not in msg


def test_output_where_a_file_blocks_the_folder(base, tmp_path):
    """--out below a regular file (also what a read-only folder gives a non-root user: the folder cannot be
    made): a clear error naming the path, before any work."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "cache"):
        r = fk.cli("crop", "--root", base, "--out", out, "--workers", "0", "--no-progress")
        assert r.returncode == 1, r.stdout + r.stderr
        msg = " ".join(r.stderr.split())
        assert str(blocker) in msg and "Traceback" not in msg and re.search("File exists|Not a directory", msg)
    assert blocker.read_text() == "x"
    if fk.chmod_stops_root(tmp_path):  # not root: a real read-only folder
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            r = fk.cli("crop", "--root", base, "--out", ro / "cache", "--workers", "0", "--no-progress")
        finally:
            ro.chmod(0o755)
        assert r.returncode == 1 and "Permission denied" in r.stderr and str(ro) in r.stderr


def test_a_corrupt_part_file_is_named_and_moving_it_away_recovers(base, base_rows, tmp_path):
    """A part file damaged after the fact (disk error, an interrupted copy of the cache): resuming stops with a
    message naming it and saying what to do; doing it redoes exactly that file's images."""
    out = tmp_path / "cache"
    args = ("crop", "--root", base, "--out", out, "--workers", "0", *CROP_FLAGS)
    assert fk.cli(*args).returncode == 0
    import pyarrow.parquet as pq

    damaged = sorted((out / "gallery").glob("part-*.parquet"))[1]
    its_rows = set(pq.read_table(damaged, columns=["image_id"]).column(0).to_pylist())
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    r = fk.cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert f"{damaged}: unreadable part file" in msg and "move it away and re-run" in msg and "Traceback" not in msg
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before  # nothing else touched
    damaged.rename(tmp_path / damaged.name)
    again = fk.cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(its_rows)} rows written" in " ".join(again.stdout.split())
    assert_intact(out)
    assert_same_rows(fk.cache_rows(out), base_rows)
