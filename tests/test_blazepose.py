"""The blazepose pose source: the 33 -> COCO-18 mapping, the source on real Market-1501 / CUHK01 images, and
`crop --pose-source blazepose` (alone and in a chain) end to end on a small Market-layout folder of real crops."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from posecrop.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from posecrop.records import ImageRecord
from posecrop.sources.base import PoseBatchItem
from posecrop.sources.blazepose import LANDMARKS_TO_COCO18, NUM_LANDMARKS, BlazePoseSource, landmarks_to_coco18

REPO = Path(__file__).resolve().parents[1]
K = KEYPOINT_INDEX


# --------------------------------------------------------------------------------------------------- mapping


def _landmarks() -> np.ndarray:
    """33 distinct in-image landmarks: x = (i + 1) / 40, y = (i + 1) / 35, visibility = 0.5 + i / 100."""
    i = np.arange(NUM_LANDMARKS, dtype=np.float32)
    return np.stack([(i + 1) / 40, (i + 1) / 35, 0.5 + i / 100], axis=-1)


def test_mapping_order_and_pixel_frame():
    lm = _landmarks()
    kp, sc = landmarks_to_coco18(lm, 64, 128)
    assert kp.shape == (NUM_KEYPOINTS, 2) and sc.shape == (NUM_KEYPOINTS,) and kp.dtype == np.float32
    # the BlazePose landmark of each COCO-18 joint (by name, from the MediaPipe landmark list)
    expected = {"nose": 0, "r_shoulder": 12, "r_elbow": 14, "r_wrist": 16, "l_shoulder": 11, "l_elbow": 13,
                "l_wrist": 15, "r_hip": 24, "r_knee": 26, "r_ankle": 28, "l_hip": 23, "l_knee": 25, "l_ankle": 27,
                "r_eye": 5, "l_eye": 2, "r_ear": 8, "l_ear": 7}
    for name, i in expected.items():
        assert LANDMARKS_TO_COCO18[K[name]] == i
        # normalised [0, 1] spans the image edges; pixel centres sit at integer coordinates (as OpenPose)
        np.testing.assert_allclose(kp[K[name]], [lm[i, 0] * 64 - 0.5, lm[i, 1] * 128 - 0.5], atol=1e-5)
        assert sc[K[name]] == pytest.approx(lm[i, 2])
    np.testing.assert_allclose(kp[K["neck"]], (kp[K["r_shoulder"]] + kp[K["l_shoulder"]]) / 2, atol=1e-5)
    assert sc[K["neck"]] == pytest.approx(min(lm[11, 2], lm[12, 2]))
    centre, _ = landmarks_to_coco18(np.tile([[0.5, 0.5, 1.0]], (NUM_LANDMARKS, 1)), 64, 128)
    np.testing.assert_allclose(centre[0], [31.5, 63.5])


def test_mapping_scores_missing_and_outside():
    lm = _landmarks()
    lm[0, 2] = 0.03           # low visibility: kept as given (the repair threshold decides)
    lm[16, 0] = 1.2           # r_wrist right of the image
    lm[28, 1] = -0.1          # r_ankle above it
    lm[11, 0] = np.nan        # l_shoulder unknown -> the neck too
    lm[7, 2] = 0.0            # l_ear invisible
    lm[8] = [0.0, 1.0, 0.7]   # r_ear exactly on the image corner: inside
    kp, sc = landmarks_to_coco18(lm, 60, 160)
    assert sc[K["nose"]] == pytest.approx(0.03) and np.isfinite(kp[K["nose"]]).all()
    for name in ("r_wrist", "r_ankle", "l_shoulder", "neck", "l_ear"):
        assert sc[K[name]] == 0 and np.isnan(kp[K[name]]).all(), name
    np.testing.assert_allclose(kp[K["r_ear"]], [-0.5, 159.5])
    assert sc[K["r_ear"]] == pytest.approx(0.7)
    assert (sc > 0).sum() == NUM_KEYPOINTS - 5


def test_mapping_batches_and_rejects_other_shapes():
    lm = np.stack([_landmarks(), _landmarks()[::-1]])
    kp, sc = landmarks_to_coco18(lm, 64, 128)
    assert kp.shape == (2, NUM_KEYPOINTS, 2) and sc.shape == (2, NUM_KEYPOINTS)
    np.testing.assert_allclose(kp[1], landmarks_to_coco18(lm[1], 64, 128)[0])
    with pytest.raises(ValueError, match=r"\(\.\.\., 33, 3\)"):
        landmarks_to_coco18(np.zeros((17, 3)), 64, 128)


def test_missing_mediapipe_names_what_to_install():
    code = ("import sys; sys.modules['mediapipe'] = None\n"
            "from posecrop.sources import make_pose_source\n"
            "try:\n    make_pose_source('blazepose')\nexcept ValueError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "ERR the blazepose pose source needs mediapipe" in proc.stdout, proc.stdout + proc.stderr
    assert "mediapipe==0.10.21" in proc.stdout and "protobuf<7" in proc.stdout


def test_bad_options_are_refused():
    pytest.importorskip("mediapipe")
    from posecrop.sources import make_pose_source

    with pytest.raises(ValueError, match="mode must be one of"):
        make_pose_source("blazepose", mode="tracking")
    with pytest.raises(ValueError, match="roi_scale"):
        make_pose_source("blazepose", roi_scale=0.1)
    with pytest.raises(ValueError, match="does not take option"):
        make_pose_source("blazepose", model_complexity=2)


# --------------------------------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def blazepose():
    pytest.importorskip("mediapipe")
    from posecrop.sources.blazepose import BlazePoseSource, BlazePoseUnavailable

    try:
        return BlazePoseSource()
    except BlazePoseUnavailable as e:
        pytest.skip(str(e))


def _items(paths: list[Path]) -> list[PoseBatchItem]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(PoseBatchItem(ImageRecord(p.name, 0, 0, "train", "test"), np.asarray(im.convert("RGB"))))
    return out


def _plausible(kp: np.ndarray, sc: np.ndarray, width: int, height: int) -> None:
    present = sc > 0
    assert present.sum() >= 12
    assert ((kp[present] >= -0.5) & (kp[present] <= [width - 0.5, height - 0.5])).all()
    top = np.nanmean(kp[[K["nose"], K["neck"]], 1])
    hips = np.nanmean(kp[[K["r_hip"], K["l_hip"]], 1])
    feet = np.nanmean(kp[[K["r_ankle"], K["l_ankle"], K["r_knee"], K["l_knee"]], 1])
    assert top < hips < feet  # an upright person
    assert feet - top > 0.4 * height  # who fills the crop


def test_real_market_crops_match_the_posegan_openpose_joints(blazepose, realdata):
    from posecrop.sources.posegan_csv import PoseGanCsvSource

    market = realdata / "market1501_samples"
    csv = PoseGanCsvSource(sorted((market / "keypoints_posegan_csv").glob("*.csv")))
    paths = [p for p in sorted((market / "crops").glob("*.jpg")) if p.name in csv][:6]
    kps, scores = blazepose.estimate(_items(paths))
    assert kps.shape == (len(paths), NUM_KEYPOINTS, 2) and scores.shape == (len(paths), NUM_KEYPOINTS)
    errors = []
    for p, kp, sc in zip(paths, kps, scores):
        _plausible(kp, sc, 64, 128)
        ref, ref_sc = csv.read(p.name, 64, 128)
        both = (sc > 0) & (ref_sc > 0)
        errors += list(np.linalg.norm(kp[both] - ref[both], axis=-1) / 128)
    # BlazePose and OpenPose agree on these people (left and right included): ~0.02 H median measured
    assert np.median(errors) < 0.05 and np.mean(np.array(errors) < 0.1) > 0.8


def test_real_cuhk01_images(blazepose, realdata):
    paths = sorted((realdata / "cuhk01" / "campus").glob("*.png"))[:4]
    if not paths:
        pytest.skip("no CUHK01 images")
    kps, scores = blazepose.estimate(_items(paths))
    for kp, sc in zip(kps, scores):
        _plausible(kp, sc, 60, 160)


def test_no_person_gives_an_all_missing_pose(blazepose):
    flat = PoseBatchItem(ImageRecord("grey.png", 0, 0, "train", "test"), np.full((128, 64, 3), 128, np.uint8))
    kp, sc = blazepose.estimate([flat])
    assert (sc == 0).all() and np.isnan(kp).all()


def test_describe_records_the_model_hash_and_pickles_without_the_model(blazepose):
    d = blazepose.describe()
    landmark = d["model_files"]["landmark"]
    assert Path(landmark["file"]).name == "pose_landmark_full.tflite"
    assert landmark["sha256"] == hashlib.sha256(Path(landmark["file"]).read_bytes()).hexdigest()
    assert d["checkpoint_sha256"] == landmark["sha256"] and d["mediapipe_version"] == "0.10.21"
    assert d["mode"] == "roi" and "detector" not in d["model_files"]
    assert d["landmark_outputs"] == ["Identity", "Identity_1", "Identity_3"] and "heatmap_kernel=7" in d["config"]
    json.dumps(d)
    copy = pickle.loads(pickle.dumps(blazepose))
    assert copy._model is None and copy.describe() == d


def test_pruned_graph_equals_mediapipes_landmark_subgraph(blazepose, realdata):
    """The pruned model in MediaPipe's calculators gives the landmarks and the person / no-person decision of the
    stock PoseLandmarkByRoiCpu subgraph on the full bundled model (options intact), on real crops."""
    from mediapipe.framework.formats import rect_pb2

    from posecrop.sources.blazepose import stock_roi_graph

    paths = (sorted((realdata / "market1501_samples" / "crops").glob("*.jpg"))[:12]
             + sorted((realdata / "cuhk01" / "campus").glob("*.png"))[:4])
    stock = stock_roi_graph()
    found = 0
    try:
        for item in _items(paths) + [PoseBatchItem(ImageRecord("grey.png", 0, 0, "train", "t"),
                                                   np.full((128, 64, 3), 128, np.uint8))]:
            height, width = item.image.shape[:2]
            roi = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, rotation=0.0, width=1.25 * height / width,
                                          height=1.25)
            out = stock.process({"image": item.image, "roi": roi}).landmarks
            ours = blazepose.landmarks(item.image)
            assert (ours is None) == (out is None), item.record.path
            if out is not None:
                ref = np.array([[p.x, p.y, p.visibility] for p in out.landmark], np.float32)
                np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=item.record.path)
                found += 1
    finally:
        stock.close()
    assert found >= len(paths) - 1


def test_prune_tflite_keeps_the_named_outputs_only(blazepose):
    from mediapipe.tasks.metadata import schema_py_generated as schema

    from posecrop.sources.blazepose import LANDMARK_OUTPUTS, BlazePoseUnavailable, prune_tflite

    full = blazepose.model_files["landmark"].read_bytes()

    def outputs_and_ops(model: bytes) -> tuple[list[str], int]:
        graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
        return [graph.Tensors(graph.Outputs(i)).Name().decode() for i in range(graph.OutputsLength())], \
            graph.OperatorsLength()

    names, ops = outputs_and_ops(full)
    assert names == ["Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4"]
    pruned_names, pruned_ops = outputs_and_ops(prune_tflite(full, LANDMARK_OUTPUTS))
    assert pruned_names == list(LANDMARK_OUTPUTS) and pruned_ops < ops
    # the landmarks alone need still fewer operators; an unknown output is refused by name
    assert outputs_and_ops(prune_tflite(full, ["Identity"]))[1] < pruned_ops
    with pytest.raises(BlazePoseUnavailable, match="no output 'Identity_9'"):
        prune_tflite(full, ["Identity_9"])


def test_detector_mode_and_padding_give_the_same_frame(realdata):
    """The stock detector path (mp.solutions.pose) and a padded / upscaled input report coordinates in the source
    image, like the default fixed-region path."""
    pytest.importorskip("mediapipe")
    from posecrop.sources.blazepose import BlazePoseSource

    path = realdata / "market1501_samples" / "crops" / "0002_c2s1_000351_01.jpg"
    items = _items([path])
    ref, ref_sc = BlazePoseSource().estimate(items)
    for options in ({"mode": "detector", "min_detection_confidence": 0.1}, {"pad": 0.25, "upscale": 2.0}):
        kp, sc = BlazePoseSource(**options).estimate(items)
        both = (sc[0] > 0) & (ref_sc[0] > 0)
        assert both.sum() >= 10, options
        assert np.median(np.linalg.norm(kp[0][both] - ref[0][both], axis=-1)) < 0.05 * 128, options


# --------------------------------------------------------------------------------------------------- crop stage


MARKET_PICK = {  # a handful of real crops: query boxes (index 00, not in the pose-gan CSVs) and DPM boxes
    "query": ["0001_c1s1_001051_00.jpg", "0051_c3s1_005551_00.jpg", "1285_c1s5_053991_00.jpg"],
    "boxes": ["0002_c2s1_000351_01.jpg", "0011_c6s4_002502_01.jpg", "0018_c4s1_002351_02.jpg"],
}


@pytest.fixture()
def small_market(tmp_path, realdata) -> Path:
    market = realdata / "market1501_samples"
    train_csv = market / "keypoints_posegan_csv" / "market-annotation-train.csv"
    in_train = {line.split(":")[0] for line in train_csv.read_text().splitlines()[1:]}
    root = tmp_path / "Market-1501"
    for name in MARKET_PICK["query"] + MARKET_PICK["boxes"]:
        folder = "query" if name.endswith("_00.jpg") else (
            "bounding_box_train" if name in in_train else "bounding_box_test")
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).symlink_to(market / "crops" / name)
    return root


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)


def _rows(cache: Path) -> dict[str, dict]:
    rows = {}
    for part in sorted(cache.glob("*/part-*.parquet")):
        for r in pq.read_table(part, columns=["image_id", "pose_source", "keypoints", "scores",
                                              "joint_source"]).to_pylist():
            rows[Path(r["image_id"]).name] = r
    return rows


def test_crop_with_blazepose_in_two_workers(small_market, tmp_path):
    pytest.importorskip("mediapipe")
    # one corrupt image next to the real ones: reported, the others are written
    (small_market / "query" / "0099_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    cache = tmp_path / "cache"
    proc = _cli("crop", "--root", small_market, "--out", cache, "--pose-source", "blazepose", "--workers", "2",
                "--batch-size", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GetPrototype" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr[-2000:]
    rows = _rows(cache)
    assert set(rows) == set(MARKET_PICK["query"] + MARKET_PICK["boxes"])  # every real image kept
    assert "pose source blazepose 6" in " ".join(proc.stdout.split())
    for r in rows.values():
        assert r["pose_source"] == "blazepose"
        assert (np.array(r["joint_source"]) == 0).sum() >= 12  # found by the model, not repaired
    report = [json.loads(line) for line in (cache / "crop_report.jsonl").read_text().splitlines()]
    failed = [e for e in report if e["status"] == "failed"]
    assert [e["image_id"] for e in failed] == ["query/0099_c1s1_000001_00.jpg"]
    summary = [e for e in report if e["status"] == "summary"][-1]
    assert summary["pose_sources"] == {"blazepose": 6}
    settings = json.loads(pq.read_schema(next(cache.glob("*/part-*.parquet"))).metadata[b"posecrop"])
    src = settings["pose_source"]
    assert src["backend"] == "blazepose" and len(src["model_files"]["landmark"]["sha256"]) == 64
    info = _cli("info", cache, "--json")
    assert info.returncode == 0, info.stderr
    splits = json.loads(info.stdout)["splits"]
    assert sum(s["pose_sources"].get("blazepose", 0) for s in splits.values()) == 6


def test_chain_posegan_then_blazepose_falls_through_per_image(small_market, tmp_path, realdata):
    """pose-gan's CSVs cover the DPM boxes but not the query split: those go to BlazePose, per image."""
    pytest.importorskip("mediapipe")
    from posecrop.crop_stage import CropConfig, run_crop
    from posecrop.sources.blazepose import BlazePoseSource
    from posecrop.sources.chain import PoseChain
    from posecrop.sources.posegan_csv import PoseGanCsvSource

    csvs = sorted((realdata / "market1501_samples" / "keypoints_posegan_csv").glob("*.csv"))
    blaze = BlazePoseSource()
    chain = PoseChain([PoseGanCsvSource(csvs), blaze])
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, workers=2, batch_size=2, progress=False),
                 pose_source=chain)
    assert s.written == 6 and s.failed == 0
    assert s.pose_sources == {"posegan-csv": 3, "blazepose": 3}
    rows = _rows(out)
    for name in MARKET_PICK["boxes"]:
        assert rows[name]["pose_source"] == "posegan-csv"
        assert set(np.unique(np.array(rows[name]["scores"])).tolist()) <= {0.0, 1.0}  # the CSV's scores
    for name in MARKET_PICK["query"]:
        assert rows[name]["pose_source"] == "blazepose"
    assert blaze._model is None  # BlazePose ran in the worker processes, never in this one
    settings = json.loads(pq.read_schema(next(out.glob("*/part-*.parquet"))).metadata[b"posecrop"])
    assert settings["pose_source"]["backend"] == "posegan-csv,blazepose"
    assert [p["backend"] for p in settings["pose_source"]["chain"]] == ["posegan-csv", "blazepose"]
    assert settings["pose_source"]["chain"][1]["checkpoint_sha256"] == blaze.model_sha256["landmark"]


class _DeadlyBlazePose(BlazePoseSource):
    """BlazePose that kills its worker process on images 13 pixels wide (a crashing native library)."""

    def estimate(self, batch):
        if any(item.image.shape[1] == 13 for item in batch):
            os._exit(1)
        return super().estimate(batch)


def test_a_crash_inside_the_pose_model_costs_only_its_image(small_market, tmp_path):
    pytest.importorskip("mediapipe")
    from PIL import Image

    from posecrop.cache_reader import read_report
    from posecrop.crop_stage import CropConfig, run_crop

    killer = small_market / "query" / "0007_c1s1_000007_00.jpg"
    with Image.open(small_market / "query" / MARKET_PICK["query"][0]) as im:
        im.convert("RGB").resize((13, 128)).save(killer)
    out = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=small_market, out=out, workers=1, batch_size=2, progress=False),
                 pose_source=_DeadlyBlazePose())
    assert s.records == 7 and s.written == 6 and s.failed == 1 and s.pose_sources == {"blazepose": 6}
    (entry,) = [e for e in read_report(out) if e["status"] == "failed"]
    assert entry["image_id"] == "query/0007_c1s1_000007_00.jpg" and "worker process died" in entry["reason"]


def test_without_a_writable_temp_folder_the_stock_subgraph_gives_the_same_landmarks(tmp_path, realdata, monkeypatch):
    pytest.importorskip("mediapipe")
    import tempfile

    from posecrop.sources.blazepose import BlazePoseSource

    items = _items(sorted((realdata / "market1501_samples" / "crops").glob("*.jpg"))[:3])
    ref = BlazePoseSource().estimate(items)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the temp folder should be")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    source = BlazePoseSource()
    with pytest.warns(RuntimeWarning, match="cannot write the pruned landmark model"):
        kp, sc = source.estimate(items)
    np.testing.assert_allclose(kp, ref[0], atol=1e-4)
    np.testing.assert_array_equal(sc > 0, ref[1] > 0)
