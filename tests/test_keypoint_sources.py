"""Precomputed-keypoint pose sources: OpenPose JSON (real BODY_25, multi-person and legacy 1.0 files) and the
pose-gan Market-1501 CSVs (real, all 32k rows), plus the source factory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posecrop.keypoints import BODY25_TO_COCO18, KEYPOINT_INDEX
from posecrop.records import ImageRecord
from posecrop.sources import PoseBatchItem, PoseReadError, PoseSource, make_pose_source, pose_source_kinds
from posecrop.sources.openpose_json import OpenPoseJsonSource, parse_people
from posecrop.sources.posegan_csv import PoseGanCsvSource


def record(path: str) -> ImageRecord:
    return ImageRecord(path, 1, 0, "train", "test")


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def raw_people(json_path: Path) -> list[np.ndarray]:
    data = json.loads(json_path.read_text())
    return [np.array(p.get("pose_keypoints_2d", p.get("pose_keypoints")), float).reshape(-1, 3)
            for p in data["people"]]


def assert_inside(kps: np.ndarray, scores: np.ndarray, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    found = scores > 0
    assert np.isfinite(kps[found]).all() and np.isnan(kps[~found]).all()
    assert (kps[found] >= 0).all() and (kps[found, 0] <= w).all() and (kps[found, 1] <= h).all()


# --------------------------------------------------------------------------------------------------- OpenPose JSON


def test_openpose_body25_single_person_real(realdata):
    folder = realdata / "openpose_json" / "viton_hd_samples"
    source = make_pose_source("openpose-json", keypoints_dir=folder / "openpose-json")
    assert isinstance(source, PoseSource) and source.name == "openpose-json"
    images = sorted((folder / "image").glob("*.jpg"))
    assert len(images) == 6
    batch = [PoseBatchItem(record(p.name), load_rgb(p)) for p in images]
    kps, scores = source.estimate(batch)
    assert kps.shape == (6, 18, 2) and scores.shape == (6, 18) and kps.dtype == np.float32
    for i, p in enumerate(images):
        assert_inside(kps[i], scores[i], batch[i].image)
        assert (scores[i] > 0).sum() >= 10  # full-body fashion photos
        raw = raw_people(folder / "openpose-json" / f"{p.stem}_keypoints.json")[0]
        expected = raw[BODY25_TO_COCO18]  # BODY_25 -> COCO-18: mid-hip and feet dropped
        found = expected[:, 2] > 0
        np.testing.assert_array_equal(scores[i] > 0, found)
        np.testing.assert_allclose(kps[i][found], expected[found, :2], rtol=1e-6)
        # the right hip of COCO-18 is BODY_25's joint 9 (8 is the mid-hip)
        if raw[9, 2] > 0:
            np.testing.assert_allclose(kps[i, KEYPOINT_INDEX["r_hip"]], raw[9, :2], rtol=1e-6)


def test_openpose_legacy_v1_real(realdata):
    folder = realdata / "openpose_json" / "cpvton_legacy_v1.0"
    source = OpenPoseJsonSource(folder / "pose")
    for p in sorted((folder / "image").glob("*.jpg")):
        image = load_rgb(p)
        assert image.shape[:2] == (256, 192)
        kp, sc = source.estimate([PoseBatchItem(record(p.name), image)])
        raw = raw_people(folder / "pose" / f"{p.stem}_keypoints.json")[0]
        assert raw.shape == (18, 3)  # the 1.0 key holds COCO-18 directly
        found = raw[:, 2] > 0
        np.testing.assert_array_equal(sc[0] > 0, found)
        np.testing.assert_allclose(kp[0][found], raw[found, :2])
        np.testing.assert_allclose(sc[0][found], raw[found, 2], rtol=1e-6)
        assert_inside(kp[0], sc[0], image)


def test_openpose_multi_person_picks_the_person_that_fits_the_image(realdata, tmp_path):
    """Real multi-person BODY_25 files: crop the real image around one person (as a ReID detector box would) and
    shift every person's coordinates into the crop: the source must pick that person."""
    folder = realdata / "openpose_json" / "openpose_examples_media"
    checked = 0
    for json_path in sorted(folder.glob("*_keypoints.json")):
        stem = json_path.name[: -len("_keypoints.json")]
        image = load_rgb(folder / f"{stem}.jpg")
        h, w = image.shape[:2]
        people = raw_people(json_path)
        assert len(people) >= 4
        source = OpenPoseJsonSource(folder)
        kp, sc = source.read(f"{stem}.jpg", w, h)
        assert_inside(kp, sc, image)
        assert (sc > 0).sum() >= 10
        coco = [p[BODY25_TO_COCO18] for p in people]
        assert any(np.allclose(kp[sc > 0], c[sc > 0, :2]) for c in coco)  # one of the file's people
        for k, person in enumerate(coco):
            found = person[:, 2] > 0
            if found.sum() < 10:
                continue
            (x1, y1), (x2, y2) = person[found, :2].min(0), person[found, :2].max(0)
            mx, my = 0.15 * (x2 - x1), 0.1 * (y2 - y1)
            box = (int(max(0, x1 - mx)), int(max(0, y1 - my)), int(min(w, x2 + mx + 1)), int(min(h, y2 + my + 1)))
            crop = image[box[1]:box[3], box[0]:box[2]]
            shifted = json.loads(json_path.read_text())
            for p in shifted["people"]:
                arr = np.array(p["pose_keypoints_2d"], float).reshape(-1, 3)
                arr[:, 0] -= box[0] * (arr[:, 2] > 0)
                arr[:, 1] -= box[1] * (arr[:, 2] > 0)
                p["pose_keypoints_2d"] = arr.ravel().tolist()
            (tmp_path / "kp" / "crops").mkdir(parents=True, exist_ok=True)
            (tmp_path / "kp" / "crops" / f"{stem}_{k}_keypoints.json").write_text(json.dumps(shifted))
            got, got_sc = OpenPoseJsonSource(tmp_path / "kp").estimate(
                [PoseBatchItem(record(f"crops/{stem}_{k}.jpg"), crop)])
            assert_inside(got[0], got_sc[0], crop)
            inside = got_sc[0] > 0
            np.testing.assert_allclose(got[0][inside] + np.array(box[:2]), person[inside, :2], atol=1e-3,
                                       err_msg=f"{stem}: person {k} not picked in its own crop")
            checked += 1
    assert checked >= 10


def write_json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def person(points: dict[int, tuple[float, float, float]], n: int = 18) -> dict:
    flat = np.zeros((n, 3))
    for i, v in points.items():
        flat[i] = v
    return {"pose_keypoints_2d": flat.ravel().tolist()}


def test_openpose_bad_values_become_missing(tmp_path):
    image = np.zeros((100, 50, 3), np.uint8)
    pts = {0: (25, 10, 0.9), 1: (25, 20, 0.8), 2: (-3, 20, 0.7), 5: (60, 20, 0.7), 8: (20, 150, 0.5),
           11: (30, 60, 0.6), 3: (10, 30, -0.2), 4: (50, 100, 0.4)}
    text = json.dumps({"people": [person(pts)]}).replace("0.6", "NaN", 1)  # Python's json writes/reads NaN
    write_json(tmp_path / "a_keypoints.json", text)
    kp, sc = OpenPoseJsonSource(tmp_path).estimate([PoseBatchItem(record("a.jpg"), image)])
    assert set(np.flatnonzero(sc[0] > 0)) == {0, 1, 4}  # x<0, x>w, y>h, negative and NaN confidences dropped
    np.testing.assert_allclose(kp[0, 4], (50, 100))  # on the border counts as inside
    assert np.isnan(kp[0, [2, 3, 5, 8, 11]]).all()


def test_openpose_no_people_and_flat_layout(tmp_path):
    write_json(tmp_path / "img_keypoints.json", {"version": 1.3, "people": []})
    src = OpenPoseJsonSource(tmp_path, layout="flat")
    kp, sc = src.estimate([PoseBatchItem(record("bounding_box_train/img.jpg"), np.zeros((128, 64, 3), np.uint8))])
    assert (sc == 0).all() and np.isnan(kp).all()
    with pytest.raises(PoseReadError, match=r"bounding_box_train/img_keypoints.json: OpenPose keypoint file not "
                                            r"found \(for image bounding_box_train/img.jpg\)"):
        OpenPoseJsonSource(tmp_path).read("bounding_box_train/img.jpg", 64, 128)
    with pytest.raises(ValueError, match="layout must be one of"):
        OpenPoseJsonSource(tmp_path, layout="nested")
    with pytest.raises(PoseReadError, match="does not exist"):
        OpenPoseJsonSource(tmp_path / "missing")


@pytest.mark.parametrize("content, message", [
    ("{not json", r"bad_keypoints.json: not valid JSON"),
    ({"version": 1.3},
     r"bad_keypoints.json: not an OpenPose keypoint file \(expected an object with a 'people' list\)"),
    ({"people": [{"pose_keypoints_2d": [1.0] * 60}]}, r"bad_keypoints.json: people\[0\].pose_keypoints_2d has 60 "
                                                       r"numbers; expected 54 \(COCO-18\) or 75 \(BODY_25\)"),
    ({"people": [{"face_keypoints_2d": []}]}, r"people\[0\] has no pose_keypoints_2d or pose_keypoints"),
    ({"people": [{"pose_keypoints": ["a"] * 54}]}, r"people\[0\].pose_keypoints holds non-numbers"),
])
def test_openpose_unreadable_files_raise(tmp_path, content, message):
    write_json(tmp_path / "sub" / "bad_keypoints.json", content)
    with pytest.raises(PoseReadError, match=message) as e:
        OpenPoseJsonSource(tmp_path).estimate([PoseBatchItem(record("sub/bad.png"), np.zeros((10, 10, 3), np.uint8))])
    assert str(tmp_path / "sub" / "bad_keypoints.json") in str(e.value)


def test_openpose_parse_people_shapes():
    kps, scores = parse_people({"people": [person({0: (1, 2, 0.5)}, 25), person({1: (3, 4, 1.0)})]}, "x")
    assert kps.shape == (2, 18, 2) and scores.shape == (2, 18)
    np.testing.assert_allclose(kps[0, 0], (1, 2))
    np.testing.assert_allclose(kps[1, 1], (3, 4))


# --------------------------------------------------------------------------------------------------- pose-gan CSV


@pytest.fixture(scope="module")
def csv_dir(realdata) -> Path:
    return realdata / "market1501_samples" / "keypoints_posegan_csv"


@pytest.fixture(scope="module")
def posegan(csv_dir) -> PoseGanCsvSource:
    return PoseGanCsvSource([csv_dir / "market-annotation-train.csv", csv_dir / "market-annotation-test.csv"])


def test_posegan_rows_and_missing_shares(posegan, csv_dir):
    assert isinstance(posegan, PoseSource)
    assert [f["rows"] for f in posegan.describe()["files"]] == [12936, 19732]
    assert len(posegan) == 32668
    found = posegan.scores > 0
    assert found.dtype == bool and posegan.keypoints.shape == (32668, 18, 2)
    complete, none = found.all(1).mean(), (~found).all(1).mean()
    assert 0.05 < complete < 0.07  # ~6 % of the machine poses have all 18 joints
    assert 0.10 < none < 0.13  # ~12 % have none
    assert np.isnan(posegan.keypoints[~found]).all() and np.isfinite(posegan.keypoints[found]).all()
    # one row, parsed independently: y list first, then x
    line = (csv_dir / "market-annotation-train.csv").read_text().splitlines()[1]
    name, ys, xs = line.split(":")
    ys, xs = np.array(json.loads(ys)), np.array(json.loads(xs))
    kp, sc = posegan.read(name.strip())
    np.testing.assert_array_equal(sc > 0, (ys >= 0) & (xs >= 0))
    np.testing.assert_array_equal(kp[sc > 0], np.stack([xs, ys], -1)[sc > 0])


def test_posegan_face_points_follow_openpose_order(posegan):
    """Front-facing people (r_shoulder left of l_shoulder in the image) have r_eye left of l_eye, and back-facing
    ones have r_ear right of l_ear: the CSV columns are OpenPose's r_eye, l_eye, r_ear, l_ear."""
    kp, found = posegan.keypoints, posegan.scores > 0
    x = kp[..., 0]
    i = KEYPOINT_INDEX
    both_sh = found[:, i["r_shoulder"]] & found[:, i["l_shoulder"]]
    front = both_sh & (x[:, i["r_shoulder"]] < x[:, i["l_shoulder"]] - 4)
    back = both_sh & (x[:, i["r_shoulder"]] > x[:, i["l_shoulder"]] + 4)
    eyes = front & found[:, i["r_eye"]] & found[:, i["l_eye"]]
    ears_back = back & found[:, i["r_ear"]] & found[:, i["l_ear"]]
    assert eyes.sum() > 5000 and ears_back.sum() > 2000
    assert (x[eyes, i["r_eye"]] < x[eyes, i["l_eye"]]).mean() > 0.99
    assert (x[ears_back, i["r_ear"]] > x[ears_back, i["l_ear"]]).mean() > 0.99


def test_posegan_real_crops(posegan, realdata):
    crops = sorted((realdata / "market1501_samples" / "crops").glob("*.jpg"))
    covered = [p for p in crops if p.name in posegan]
    assert len(covered) == 23 and all(not p.name.endswith("_00.jpg") for p in covered)
    batch = [PoseBatchItem(record(f"bounding_box_train/{p.name}"), load_rgb(p)) for p in covered]
    kps, scores = posegan.estimate(batch)
    for i, item in enumerate(batch):
        assert item.image.shape == (128, 64, 3)
        assert_inside(kps[i], scores[i], item.image)
    assert (scores > 0).sum(1).mean() > 8
    # a larger image of the same crop gets scaled coordinates
    kp2, _ = posegan.read(covered[0].name, width=128, height=256)
    np.testing.assert_allclose(kp2, kps[0] * 2)


def test_posegan_unknown_image_and_double_extension_names(posegan):
    kp, sc = posegan.read("bounding_box_test/1488_c5s3_071737_01.jpg.jpg")  # a real double-extension file
    assert kp.shape == (18, 2)
    with pytest.raises(PoseReadError) as e:
        posegan.read(record("query/0001_c1s1_001051_00.jpg"))
    assert "query/0001_c1s1_001051_00.jpg: no keypoints for this image in" in str(e.value)
    assert "market-annotation-train.csv" in str(e.value) and "market-annotation-test.csv" in str(e.value)


def test_posegan_bad_files(tmp_path):
    good = ("name:keypoints_y:keypoints_x\n" + "a.jpg: [" + ", ".join(["5"] * 18) + "]: [" + ", ".join(["3"] * 18)
            + "]\n")
    (tmp_path / "a.csv").write_text(good)
    src = make_pose_source("posegan-csv", csv_paths=[tmp_path / "a.csv"])
    np.testing.assert_allclose(src.read("x/a.jpg")[0], np.full((18, 2), [3, 5]))
    with pytest.raises(PoseReadError, match="a.jpg appears more than once"):
        PoseGanCsvSource([tmp_path / "a.csv", tmp_path / "a.csv"])
    (tmp_path / "b.csv").write_text(good + "b.jpg: [1, 2]: [3, 4]\n")
    with pytest.raises(PoseReadError, match=r"b.csv:3: expected 'name: \[18 y values\]: \[18 x values\]'"):
        PoseGanCsvSource(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("name,x,y\n")
    with pytest.raises(PoseReadError, match=r"c.csv: not a pose-gan keypoint CSV \(expected the header"):
        PoseGanCsvSource(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text(good.replace("[5,", "[five,"))
    with pytest.raises(PoseReadError, match="d.csv:2: non-integer keypoint value 'five'"):  # names the line
        PoseGanCsvSource(tmp_path / "d.csv")
    with pytest.raises(PoseReadError, match="e.csv: pose-gan keypoint CSV not found"):
        PoseGanCsvSource(tmp_path / "e.csv")
    # values outside the 64 x 128 frame are missing joints
    (tmp_path / "f.csv").write_text(good.replace("[5,", "[130,"))
    assert PoseGanCsvSource(tmp_path / "f.csv").read("a.jpg")[1][0] == 0


# --------------------------------------------------------------------------------------------------- factory


def test_a_registered_pose_source_is_built_and_chained_like_the_built_in_ones(monkeypatch):
    """Adding a pose source: its class plus one register_pose_source call (or "module:Class", imported on first
    use); options are its constructor's keywords."""
    import posecrop.sources as sources
    from posecrop.sources import register_pose_source, source_parameters
    from posecrop.sources.chain import parse_chain

    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))

    class Upright:
        in_worker = False

        def __init__(self, score: float = 0.9) -> None:
            self.score = score

    register_pose_source("upright", Upright)
    assert pose_source_kinds()[-1] == "upright" and source_parameters("upright") == (["score"], False)
    assert make_pose_source("upright", score=0.5).score == 0.5
    assert parse_chain("upright,openpose-json") == ["upright", "openpose-json"]
    with pytest.raises(ValueError, match=r"'upright' does not take option\(s\) layout"):
        make_pose_source("upright", layout="x")
    with pytest.raises(ValueError, match="already registered"):
        register_pose_source("upright", Upright)
    register_pose_source("json-again", "posecrop.sources.openpose_json:OpenPoseJsonSource")  # lazy form
    assert source_parameters("json-again") == source_parameters("openpose-json")


def test_make_pose_source_errors(tmp_path):
    assert pose_source_kinds() == ("openpose-json", "posegan-csv", "mmpose", "blazepose")
    with pytest.raises(ValueError, match="unknown pose source 'openpose'; known kinds: openpose-json, posegan-csv, "
                                         "mmpose, blazepose"):
        make_pose_source("openpose", keypoints_dir=tmp_path)
    with pytest.raises(ValueError, match=r"pose source 'openpose-json' does not take option\(s\) csv_paths; "
                                         r"accepted: keypoints_dir, layout"):
        make_pose_source("openpose-json", csv_paths=[])
