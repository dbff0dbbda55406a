"""The crop stage end to end: synthetic and real Market data, resume after SIGKILL, shard locks, bad images,
poses with 0 / 1 / 17 missing joints, a worker process that dies, the commands."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faultkit as fk
from posecrop.cache import Shard, ShardLock, cache_info
from posecrop.cache_reader import cache_settings, existing_image_ids, read_report, read_split
from posecrop.crop_stage import CropConfig, run_crop
from posecrop.regions import PIXEL_CENTRE
from posecrop.crops import outside_fraction
from posecrop.keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES
from posecrop.regions import REGION_NAMES, region_boxes
from posecrop.schema import IMAGE_COLUMNS
from reidkit.typedconfig import ConfigError, from_mapping

REPO = Path(__file__).resolve().parents[1]
MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")

# an upright person in a 64 x 128 crop (x, y)
POSE = {"nose": (32, 14), "neck": (32, 26), "r_shoulder": (24, 28), "r_elbow": (21, 44), "r_wrist": (20, 58),
        "l_shoulder": (40, 28), "l_elbow": (43, 44), "l_wrist": (44, 58), "r_hip": (27, 62), "r_knee": (27, 86),
        "r_ankle": (27, 110), "l_hip": (37, 62), "l_knee": (37, 86), "l_ankle": (37, 110), "r_eye": (30, 12),
        "l_eye": (34, 12), "r_ear": (28, 13), "l_ear": (36, 13)}
POSE_XY = np.array([POSE[n] for n in KEYPOINT_NAMES], np.float32)


# ------------------------------------------------------------------------------------------------ helpers


def _person(w: int = 64, h: int = 128) -> np.ndarray:
    """The fault kit's pedestrian picture, seeded by its size (as these tests always had it)."""
    return fk.person(w, h, seed=w * 1000 + h)


_encode = fk.encode


def _openpose(xy: np.ndarray | None, present: np.ndarray | None = None) -> str:
    """OpenPose 1.3 JSON for one person (present joints get confidence 0.9, the others 0, 0, 0)."""
    if xy is None:
        return json.dumps({"version": 1.3, "people": []})
    present = np.ones(18, bool) if present is None else present
    flat: list[float] = []
    for (x, y), p in zip(xy.tolist(), present):
        flat += [x, y, 0.9] if p else [0.0, 0.0, 0.0]
    return json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]})


_write = fk.put            # image + keypoint file writer of the fault kit
_replicate = fk.replicate  # Market layout copied under new frame numbers


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _rows(cache: Path) -> dict[str, dict]:
    out = {}
    for split in ("train", "query", "gallery"):
        if (cache / split).is_dir():
            for r in read_split(cache, split).to_pylist():
                out[r["image_id"]] = r
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from posecrop.synth import generate, preset
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(preset("tiny"), root, progress=False, preview=False)
    return root


# ------------------------------------------------------------------------------------------------ tests


def test_synthetic_dataset_end_to_end(synth, tmp_path):
    from posecrop.canonical import load_bank
    from posecrop.datasets import read_dataset
    from posecrop.show import contact_sheet
    from posecrop.sources import PoseBatchItem, make_pose_source

    records = read_dataset("market", synth)
    out = tmp_path / "cache"
    cfg = CropConfig(dataset="market", root=synth, out=out, workers=2, batch_size=8, rows_per_part=10,
                     progress=False)
    s = run_crop(cfg)
    assert s.written == len(records) and s.failed == 0 and s.already_done == 0
    assert s.per_split == {sp: sum(r.split == sp for r in records) for sp in ("train", "query", "gallery")}
    assert 0 < s.repaired_joints < 1 and 0 < s.fallback_joints < 1  # the synthetic estimator misses joints

    rows = _rows(out)
    assert set(rows) == {r.path for r in records}
    settings = cache_settings(out)
    assert settings["beta"] == 0.1 and settings["keypoint_names"] == list(KEYPOINT_NAMES)
    assert settings["pose_source"]["backend"] == "openpose-json"
    assert settings["canonical_bank_sha256"] == load_bank().sha256
    assert settings["crop_sizes"] == {"body": [384, 192], "part": [96, 192]}
    assert list(settings["regions"]["head"]["joints"]) == ["nose", "neck", "r_eye", "l_eye", "r_ear", "l_ear"]
    assert settings["encoding"]["format"] == "jpeg" and settings["encoding"]["quality"] == 95

    source = make_pose_source("openpose-json", keypoints_dir=synth / "keypoints")
    by_path = {r.path: r for r in records}
    for image_id, row in list(rows.items())[:25]:
        kp = np.array(row["keypoints"], np.float32)
        boxes = np.array(row["boxes"], np.float32)
        np.testing.assert_allclose(boxes, region_boxes(kp[None], beta=0.1)[0] + PIXEL_CENTRE, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(row["outside"], outside_fraction(boxes, row["width"], row["height"]), atol=1e-6)
        assert row["beta"] == pytest.approx(0.1 * (boxes[0, 3] - boxes[0, 1]), rel=1e-5)
        assert row["whole"]["bytes"] == (synth / image_id).read_bytes()
        for name, size in zip(REGION_NAMES, [(192, 384)] + [(192, 96)] * 4):
            img = Image.open(io.BytesIO(row[name]["bytes"]))
            assert img.format == "JPEG" and img.size == size and row[name]["path"].endswith(f"_{name}.jpg")
        # detected joints are kept exactly; the others were filled in
        raw, sc = source.estimate([PoseBatchItem(by_path[image_id], np.zeros((128, 64, 3), np.uint8))])
        src = np.array(row["joint_source"])
        np.testing.assert_allclose(kp[src == 0], raw[0][src == 0])
        assert ((src == 0) == (sc[0] >= 0.1)).all()

    again = run_crop(cfg)  # resume with nothing left to do
    assert again.already_done == len(records) and again.written == 0
    assert sum(i["rows"] for i in cache_info(out)["splits"].values()) == len(records)

    sheet = contact_sheet(out, tmp_path / "sheet.png", n=3)
    img = Image.open(sheet)
    assert img.format == "PNG" and img.height > 3 * 384 and img.width > 192 * 5

    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_dir=str(out / "query"), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.num_rows == s.per_split["query"] and ds[0]["body"].size == (192, 384)


def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(synth, tmp_path):
    data = tmp_path / "data"
    total = _replicate(synth, data, 4)
    out = tmp_path / "killed"
    args = ["crop", "--dataset", "market", "--root", str(data), "--out", str(out), "--workers", "1",
            "--batch-size", "4", "--rows-per-part", "4", "--no-progress"]
    proc = fk.popen_paused(*args, event="part-written")  # stops itself right after its first part file
    workers = fk.children(proc.pid)
    assert workers, "the worker pool had not started"
    fk.kill(proc)
    fk.wait_for(lambda: not any(fk.alive(w) for w in workers), timeout=20)  # no orphaned workers
    partial = existing_image_ids(out)
    assert 0 < len(partial) < total

    done = fk.cli(*args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    resumed = _rows(out)
    ids = [i for sp in ("train", "query", "gallery") for i in read_split(out, sp, ["image_id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == len(resumed)  # no duplicates

    ref = tmp_path / "uninterrupted"
    run_crop(CropConfig(dataset="market", root=data, out=ref, workers=0, rows_per_part=4, progress=False))
    expected = _rows(ref)
    assert set(resumed) == set(expected)
    for image_id in list(expected)[::7]:
        a, b = resumed[image_id], expected[image_id]
        assert a["keypoints"] == b["keypoints"] and a["boxes"] == b["boxes"] and a["joint_source"] == b["joint_source"]
        assert all(a[c]["bytes"] == b[c]["bytes"] for c in IMAGE_COLUMNS)

    # the commands on the resulting cache
    info = _cli("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "train" in info.stdout and "gallery" in info.stdout and "openpose-json" in info.stdout
    show = _cli("show", str(out), "--out", str(tmp_path / "sheet.png"), "--n", "2")
    assert show.returncode == 0, show.stderr
    assert Image.open(tmp_path / "sheet.png").format == "PNG"


def test_same_shard_refused_clearly_other_shard_runs(synth, tmp_path):
    out = tmp_path / "cache"
    lock = ShardLock(out, Shard(0, 2))
    lock.acquire()  # as if another `crop --shard 0/2` were running
    try:
        same = _cli("crop", "--root", str(synth), "--out", str(out), "--shard", "0/2", "--workers", "0",
                    "--no-progress")
        assert same.returncode == 3
        assert "shard 0/2" in same.stderr and "another process" in same.stderr and "lock file" in same.stderr
        recipe = tmp_path / "recipe.toml"  # the other shard from a recipe: [crop] table, flags override it
        recipe.write_text(f'[crop]\nroot = "{synth}"\nout = "{out}"\nshard = "0/2"\nworkers = 0\nbeta = 0.1\n')
        other = _cli("crop", "--config", str(recipe), "--shard", "1/2", "--no-progress")
        assert other.returncode == 0, other.stderr
    finally:
        lock.release()
    ids = existing_image_ids(out)
    assert ids and all(Shard(1, 2).owns(i) for i in ids)
    ShardLock(out, Shard(0, 2)).acquire()  # both locks were released (the first one by us, the second at exit)
    ShardLock(out, Shard(1, 2)).acquire()


def _awkward_dataset(root: Path) -> dict[str, str]:
    """A Market layout with hand-made poses and bad files; returns image -> what should happen."""
    person = _person()
    present_all = np.ones(18, bool)
    one_missing = present_all.copy()
    one_missing[KEYPOINT_INDEX["r_wrist"]] = False
    only_neck = np.zeros(18, bool)
    only_neck[KEYPOINT_INDEX["neck"]] = True
    full = _openpose(POSE_XY)
    jpg = _encode(person, quality=92)
    expect = {}

    def add(rel, data, kp, what):
        _write(root, rel, data, kp)
        expect[rel] = what

    add("bounding_box_train/0001_c1s1_000001_01.jpg", jpg, full, "0 missing")
    add("bounding_box_train/0001_c1s1_000002_01.jpg", jpg, _openpose(POSE_XY, one_missing), "1 missing")
    add("bounding_box_train/0001_c2s1_000003_01.jpg", jpg, _openpose(POSE_XY, only_neck), "17 missing")
    add("bounding_box_train/0002_c1s1_000004_01.jpg", jpg[: len(jpg) // 2], full, "failed truncated")
    add("bounding_box_train/0002_c1s1_000005_01.jpg", b"", full, "failed empty")
    add("bounding_box_train/0002_c2s1_000006_01.jpg", _encode(person, "PNG"), full, "ok png named jpg")
    add("bounding_box_train/0003_c1s1_000007_01.jpg", _encode(Image.fromarray(person).convert("L")), full, "ok grey")
    add("bounding_box_train/0003_c2s1_000008_01.jpg", _encode(Image.fromarray(person).convert("CMYK")), full,
        "ok cmyk")
    rgba = np.dstack([person, np.full(person.shape[:2], 128, np.uint8)])
    add("bounding_box_train/0004_c1s1_000009_01.png", _encode(rgba, "PNG"), full, "ok rgba")
    deep = Image.fromarray((person[..., 0].astype(np.uint16) * 257))
    add("bounding_box_train/0004_c2s1_000010_01.png", _encode(deep, "PNG"), full, "ok 16-bit")
    add("bounding_box_train/0005_c1s1_000011_01.jpg", _encode(person[:1, :1]), full, "ok 1x1")
    add("bounding_box_train/0005_c2s1_000012_01.jpg", jpg, None, "failed no keypoints")
    add("bounding_box_train/0006_c1s1_000013_01.jpg", _encode(_person(120, 240)), full, "failed too large")
    add("query/0001_c3s1_000014_00.jpg", jpg, full, "0 missing")
    add("bounding_box_test/0007_c1s1_000015_01.jpg", jpg, _openpose(None), "no person")
    add("bounding_box_test/not_a_market_name.jpg", jpg, full, "skipped")
    return expect


def test_bad_images_are_reported_and_poses_with_0_1_17_missing_joints(tmp_path):
    root = tmp_path / "data"
    expect = _awkward_dataset(root)
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=root, out=out, workers=2, batch_size=3, max_pixels=20_000,
                            progress=False))
    failed = {k for k, v in expect.items() if v.startswith("failed")}
    written = {k for k, v in expect.items() if not v.startswith(("failed", "skipped"))}
    assert s.failed == len(failed) and s.skipped == 1 and s.written == len(written)
    report = {e["image_id"]: e for e in read_report(out) if e["status"] in ("failed", "skipped")}
    assert set(report) == failed | {"bounding_box_test/not_a_market_name.jpg"}
    assert "truncated" in report["bounding_box_train/0002_c1s1_000004_01.jpg"]["reason"]
    assert "0 bytes" in report["bounding_box_train/0002_c1s1_000005_01.jpg"]["reason"]
    assert "keypoint file not found" in report["bounding_box_train/0005_c2s1_000012_01.jpg"]["reason"]
    assert "too large" in report["bounding_box_train/0006_c1s1_000013_01.jpg"]["reason"]
    assert report["bounding_box_train/0005_c2s1_000012_01.jpg"]["split"] == "train"

    rows = _rows(out)
    assert set(rows) == written
    src = {k: np.array(r["joint_source"]) for k, r in rows.items()}
    zero, one, seventeen = (src[f"bounding_box_train/0001_c{c}s1_00000{i}_01.jpg"] for c, i in ((1, 1), (1, 2), (2, 3)))
    assert (zero == 0).all()
    assert (one == 0).sum() == 17 and one[KEYPOINT_INDEX["r_wrist"]] == 1
    assert seventeen[KEYPOINT_INDEX["neck"]] == 0 and (np.delete(seventeen, KEYPOINT_INDEX["neck"]) == 2).all()
    np.testing.assert_allclose(rows["bounding_box_train/0001_c1s1_000001_01.jpg"]["keypoints"], POSE_XY)
    kp17 = np.array(rows["bounding_box_train/0001_c2s1_000003_01.jpg"]["keypoints"])
    np.testing.assert_allclose(kp17[KEYPOINT_INDEX["neck"]], POSE_XY[KEYPOINT_INDEX["neck"]])
    assert (src["bounding_box_test/0007_c1s1_000015_01.jpg"] == 2).all()  # no person found: frame fallback
    # the complete pose: the body box spans the person as Eq. 1-2 says, partly above the image
    body = np.array(rows["bounding_box_train/0001_c1s1_000001_01.jpg"]["boxes"][0])
    np.testing.assert_allclose(body[[1, 3]], np.array([2 * 12 - 26, 4 / 3 * 110 - 86 / 3]) + PIXEL_CENTRE,
                               atol=1e-3)  # Eq. 1, box frame
    for k in written:
        r = rows[k]
        for name, size in zip(REGION_NAMES, [(192, 384)] + [(192, 96)] * 4):
            assert Image.open(io.BytesIO(r[name]["bytes"])).size == size
    png = rows["bounding_box_train/0002_c2s1_000006_01.jpg"]
    assert png["whole"]["path"] == "bounding_box_train/0002_c2s1_000006_01.png"  # the real format's extension
    assert (png["width"], png["height"]) == (64, 128)
    tiny = rows["bounding_box_train/0005_c1s1_000011_01.jpg"]
    assert (tiny["width"], tiny["height"]) == (1, 1)
    assert (np.array(tiny["joint_source"]) == 2).all()  # every joint fell outside the 1x1 image: frame fallback
    grey = Image.open(io.BytesIO(rows["bounding_box_train/0003_c1s1_000007_01.jpg"]["body"]["bytes"]))
    assert grey.mode == "RGB"


class _DeadlyBank:
    """A canonical bank whose use kills the worker process for images 13 pixels wide (a crashing decoder)."""

    def __init__(self, bank) -> None:
        self._bank = bank

    def __getattr__(self, name):
        if name.startswith("_"):  # unpickling looks for __setstate__ & co. before _bank exists
            raise AttributeError(name)
        if name == "frame":
            return _DeadlyFrame(self._bank.frame)
        return getattr(self._bank, name)


class _DeadlyFrame:
    def __init__(self, frame) -> None:
        self._frame = frame

    def place(self, frames):
        if (np.asarray(frames)[:, 0] == 13).any():
            os._exit(1)
        return self._frame.place(frames)


def test_a_worker_that_dies_costs_only_its_image(tmp_path):
    from posecrop.canonical import load_bank
    root = tmp_path / "data"
    person = _person()
    for i, folder in enumerate(MARKET_FOLDERS * 2):
        _write(root, f"{folder}/{i + 1:04d}_c1s1_{i + 1:06d}_01.jpg", _encode(person), _openpose(POSE_XY))
    killer = "bounding_box_train/0009_c1s1_000009_01.jpg"
    _write(root, killer, _encode(_person(13, 128)), _openpose(POSE_XY * np.float32([13 / 64, 1])))
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=root, out=out, workers=1, batch_size=4, progress=False),
                 bank=_DeadlyBank(load_bank()))
    assert s.records == 7 and s.written == 6 and s.failed == 1
    (entry,) = [e for e in read_report(out) if e["status"] == "failed"]
    assert entry["image_id"] == killer and "worker process died" in entry["reason"]


def test_a_run_of_crashing_images_is_reported_and_the_run_goes_on(tmp_path):
    """More crashing images in a row than the environment-failure bound: once workers have finished work, each
    crash is pinned on its image and reported; the run is not aborted."""
    from posecrop.canonical import load_bank
    from posecrop.crop_pool import WorkerPool
    root = tmp_path / "data"
    person = _person()
    for i, folder in enumerate(MARKET_FOLDERS):
        _write(root, f"{folder}/{i + 1:04d}_c1s1_{i + 1:06d}_01.jpg", _encode(person), _openpose(POSE_XY))
    killers = [f"bounding_box_train/{i:04d}_c1s1_{i:06d}_01.jpg"
               for i in range(20, 20 + WorkerPool.MAX_DEATHS_WITHOUT_PROGRESS + 2)]
    for k in killers:
        _write(root, k, _encode(_person(13, 128)), _openpose(POSE_XY * np.float32([13 / 64, 1])))
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=root, out=out, workers=1, batch_size=4, progress=False),
                 bank=_DeadlyBank(load_bank()))
    assert s.written == 3 and s.failed == len(killers)
    assert {e["image_id"] for e in read_report(out) if e["status"] == "failed"} == set(killers)


def test_real_market_crops_with_posegan_keypoints(realdata, tmp_path):
    market = realdata / "market1501_samples"
    csvs = sorted((market / "keypoints_posegan_csv").glob("market-annotation-*.csv"))
    train_csv = market / "keypoints_posegan_csv" / "market-annotation-train.csv"
    in_train = {line.split(":")[0] for line in train_csv.read_text().splitlines()[1:]}
    root = tmp_path / "Market-1501"
    crops = sorted((market / "crops").glob("*.jpg"))
    for c in crops:
        box = int(c.stem.split("_")[-1])
        folder = "query" if box == 0 else ("bounding_box_train" if c.name in in_train else "bounding_box_test")
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / c.name).symlink_to(c)
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=root, out=out, pose_source="posegan-csv",
                            pose_options={"csv_paths": [str(p) for p in csvs]}, workers=0, progress=False))
    assert s.written == 23  # every DPM box (index >= 01) has a pose-gan row
    # the hand-drawn query boxes (index 00) are not covered by the CSVs: reported, and the run goes on
    assert s.failed == s.records - 23 == sum(c.stem.endswith("_00") for c in crops)
    assert all("no keypoints" in e["reason"] for e in read_report(out) if e["status"] == "failed")
    rows = _rows(out)
    for r in rows.values():
        kp, src = np.array(r["keypoints"]), np.array(r["joint_source"])
        body = np.array(r["boxes"][0])
        assert (r["width"], r["height"]) == (64, 128)
        assert (src == 0).sum() >= 4  # machine keypoints found most joints
        det = kp[src == 0]
        inside = (det[:, 0] >= body[0]) & (det[:, 0] <= body[2]) & (det[:, 1] >= body[1]) & (det[:, 1] <= body[3])
        assert inside.mean() >= 0.9
        assert 0.5 * 128 < body[3] - body[1] < 2.0 * 128  # a body about as tall as the detector box
    assert cache_settings(out)["pose_source"]["backend"] == "posegan-csv"


def test_config_validation_and_cli_defaults():
    from posecrop import commands_crop
    cfg = CropConfig()
    defaults = {"dataset": cfg.dataset, "beta": cfg.beta, "region_width": cfg.region_width, "threshold": cfg.threshold,
                "min_reliable": cfg.min_reliable,
                "body_size": "x".join(map(str, cfg.body_size)), "part_size": "x".join(map(str, cfg.part_size)),
                "encoding": cfg.encoding, "jpeg_quality": cfg.jpeg_quality, "fill": cfg.fill, "shard": cfg.shard,
                "batch_size": cfg.batch_size, "rows_per_part": cfg.rows_per_part}
    assert commands_crop.HELP_DEFAULTS == defaults
    ok = from_mapping(CropConfig, {"root": "d", "beta": 0.0625, "body_size": [256, 128],
                                   "region_joints": {"head": ["nose", "neck"]}, "shard": "1/3"})
    assert ok.body_size == (256, 128) and ok.region_spec().joints["head"] == ("nose", "neck")
    for bad, match in (({"beta": 2.0}, "beta"), ({"shard": "3/3"}, "shard"), ({"encoding": "gif"}, "encoding"),
                       ({"region_joints": {"head": ["nose", "chin"]}}, "chin"),
                       ({"region_joints": {"tail": ["nose"]}}, "tail"), ({"jpeg_quality": 0}, "jpeg_quality"),
                       ({"workers": -1}, "workers"), ({"bogus": 1}, "bogus"),
                       ({"region_width": "wide"}, "region_width")):
        with pytest.raises(ConfigError, match=match):
            from_mapping(CropConfig, bad)


def test_region_width_image_keeps_every_box_inside_the_image_columns(synth, tmp_path):
    runs = {}
    for width in ("paper", "image"):
        out = tmp_path / width
        run_crop(CropConfig(dataset="market", root=synth, out=out, region_width=width, workers=0, progress=False))
        assert cache_settings(out)["region_width"] == width
        runs[width] = _rows(out)
    assert runs["paper"].keys() == runs["image"].keys()
    outside_before = 0
    for key, r in runs["image"].items():
        boxes, paper = np.array(r["boxes"]), np.array(runs["paper"][key]["boxes"])
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= r["width"]).all() and (boxes[:, 2] > boxes[:, 0]).all()
        np.testing.assert_array_equal(boxes[:, [1, 3]], paper[:, [1, 3]])      # heights are Eq. 1-2's
        outside_before += int(((paper[:, 0] < 0) | (paper[:, 2] > r["width"])).any())
    assert outside_before > 0       # the synthetic poses do reach outside with the paper's width
