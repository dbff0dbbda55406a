"""Plausibility rules (posecrop/plausibility.py): adversarial synthetic poses for every rule, good poses pass, the
real pose-gan OpenPose poses pass, and the crop stage keeps every image whatever its pose - with synthetic
keypoint files and with real BlazePose output on CUHK01 images (made at test time)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import faultkit as fk
from posecrop.cache import cache_info
from posecrop.cache_reader import read_report, read_split
from posecrop.canonical import repair
from posecrop.crop_stage import CropConfig, run_crop
from posecrop.crop_worker import WorkerSettings, _place
from posecrop.keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES
from posecrop.plausibility import (DEFAULT_RULES, FACE, RULES, PlausibilityRules, check_poses, distrust, format_issue,
                                   issue_counts, parse_issue)
from posecrop.regions import RegionGeometryError, RegionSpec, region_boxes
from posecrop.show import contact_sheet

J = KEYPOINT_INDEX
SIZE = (64, 128)
# an upright person in a 64 x 128 crop (x, y), as in tests/test_crop_stage.py
POSE = {"nose": (32, 14), "neck": (32, 26), "r_shoulder": (24, 28), "r_elbow": (21, 44), "r_wrist": (20, 58),
        "l_shoulder": (40, 28), "l_elbow": (43, 44), "l_wrist": (44, 58), "r_hip": (27, 62), "r_knee": (27, 86),
        "r_ankle": (27, 110), "l_hip": (37, 62), "l_knee": (37, 86), "l_ankle": (37, 110), "r_eye": (30, 12),
        "l_eye": (34, 12), "r_ear": (28, 13), "l_ear": (36, 13)}
GOOD = np.array([POSE[n] for n in KEYPOINT_NAMES], np.float32)
ONES = np.ones(18, np.float32)


def _check(*poses: np.ndarray, scores: np.ndarray | None = None, size=SIZE, **kw):
    kp = np.stack(poses).astype(np.float32)
    sc = np.ones(kp.shape[:2], np.float32) if scores is None else scores
    return check_poses(kp, sc, size, **kw)


def _upside_down(p: np.ndarray = GOOD) -> np.ndarray:
    q = p.copy()
    q[:, 1] = 127 - q[:, 1]
    return q


def _head_below_hips() -> np.ndarray:
    p = GOOD.copy()
    p[FACE, 1] += 60          # the face drops to y ~ 72-74, below the hips at 62; the torso stays upright
    return p


def _flat_line() -> np.ndarray:
    """Every joint on one image row: no level is above another (order undecided), H = 0."""
    p = GOOD.copy()
    p[:, 0] = np.linspace(2, 62, 18)
    p[:, 1] = 64
    return p


def _scaled(p: np.ndarray, f: float, centre=(32, 64)) -> np.ndarray:
    return (p - np.array(centre)) * f + np.array(centre)


# ------------------------------------------------------------------------------------------------ each rule


def test_good_poses_pass_also_partial_and_mirrored_ones():
    partial = np.full_like(GOOD, np.nan)
    upper = [J[n] for n in ("nose", "neck", "r_shoulder", "l_shoulder", "r_elbow", "l_elbow", "r_eye", "l_eye")]
    partial[upper] = GOOD[upper]
    mirrored = GOOD.copy()
    mirrored[:, 0] = 63 - mirrored[:, 0]
    bigger = _scaled(GOOD, 1.15)                 # a person filling the frame, feet slightly outside
    r = _check(GOOD, partial, mirrored, bigger, scores=np.stack([ONES, np.isfinite(partial[:, 0]) * 1.0, ONES, ONES]))
    assert r.reasons == ["", "", "", ""] and not r.unreliable.any() and not r.whole.any()


def test_upside_down_distrusts_the_whole_pose():
    r = _check(_upside_down())
    assert r.reasons == ["upside_down"] and r.whole[0] and r.unreliable[0].all()
    # the real BlazePose failure of the issue: head at y ~ 228, ankles at y ~ 115 in a 300-px image
    p = _scaled(GOOD, 1.0)
    p[:, 1] = 343 - (p[:, 1] * 1.0 + 100)       # head ~ 229, ankles ~ 133
    r = _check(p, size=(120, 300))
    assert "upside_down" in r.reasons[0] and r.whole[0]


def test_head_below_an_upright_torso_distrusts_the_face_only():
    r = _check(_head_below_hips())
    assert r.reasons == ["head_below_hips"] and not r.whole[0]
    assert set(np.flatnonzero(r.unreliable[0])) == set(FACE)
    # without shoulders nothing says which part is wrong: the whole pose
    sc = ONES.copy()
    sc[[J["neck"], J["r_shoulder"], J["l_shoulder"]]] = 0
    r = _check(_head_below_hips(), scores=sc[None])
    assert "head_below_hips" in r.reasons[0] and r.whole[0]


def test_a_single_wild_joint_is_distrusted_alone():
    p = GOOD.copy()
    p[J["r_wrist"]] = (200, 60)                 # far right of a 64-px wide image
    q = GOOD.copy()
    q[J["l_knee"]] = (37, 10)                    # a knee above the shoulders, inside the image
    r = _check(p, q)
    assert r.reasons == ["outside_image", "legs_above_neck"] and not r.whole.any()
    assert np.flatnonzero(r.unreliable[0]).tolist() == [J["r_wrist"]]
    assert np.flatnonzero(r.unreliable[1]).tolist() == [J["l_knee"]]


def test_a_skeleton_mostly_outside_the_image_is_distrusted_as_a_whole():
    r = _check(GOOD + np.array([150.0, 0.0]))
    assert r.reasons == ["outside_image"] and r.whole[0]


def test_giant_and_tiny_skeletons():
    tall_torso = GOOD.copy()
    tall_torso[[J["neck"], J["r_shoulder"], J["l_shoulder"]], 1] = 4   # shoulders at the top ...
    tall_torso[[J["r_hip"], J["l_hip"]], 1] = 116                       # ... hips at the bottom: torso 0.88 H
    tall_torso[FACE, 1] = 2
    tall_torso[[J["r_knee"], J["l_knee"], J["r_ankle"], J["l_ankle"]], 1] = 120
    giant = _scaled(GOOD, 2.5)
    tiny = _scaled(GOOD, 0.15)
    r = _check(tall_torso, giant, tiny)
    assert r.reasons == ["too_large", "too_large", "too_small"]   # not a handful of joints outside the image
    assert r.whole.all()


def test_collapsed_and_flat_skeletons():
    r = _check(_scaled(GOOD, 0.03), _flat_line())
    assert "collapsed" in r.reasons[0].split(",") and r.whole[0]
    assert "height" in r.reasons[1].split(",") and r.whole[1]
    assert "upside_down" not in r.reasons[1]     # no level is above another: only Eq. 1-2 catches it
    with pytest.raises(RegionGeometryError, match="H <= 0"):
        region_boxes(_flat_line()[None])


def test_unreliable_joints_are_not_judged_and_thresholds_are_data():
    p = GOOD.copy()
    p[J["r_wrist"]] = (500, -300)
    sc = ONES.copy()
    sc[J["r_wrist"]] = 0.05                      # below the repair threshold: the repair distrusts it anyway
    assert _check(p, scores=sc[None], threshold=0.1).reasons == [""]
    tall = _scaled(GOOD, 1.0)
    assert _check(tall).reasons == [""]
    assert _check(tall, rules=PlausibilityRules(max_torso=0.2)).reasons == ["too_large"]
    assert _check(_upside_down(), rules=PlausibilityRules(enabled=("height",))).reasons == ["height"]
    with pytest.raises(ValueError, match="unknown plausibility rule"):
        PlausibilityRules(enabled=("upside_down", "nonsense"))


def test_batch_equals_pose_by_pose_and_distrust_zeroes_the_scores():
    poses = [GOOD, _upside_down(), _head_below_hips(), _flat_line(), _scaled(GOOD, 0.03), _scaled(GOOD, 2.5)]
    rng = np.random.default_rng(0)
    sc = rng.uniform(0.0, 1.0, (len(poses), 18)).astype(np.float32)
    sizes = np.array([[64, 128], [64, 128], [80, 160], [64, 128], [64, 128], [60, 160]], np.float64)
    batch = check_poses(np.stack(poses), sc, sizes)
    for i, p in enumerate(poses):
        one = check_poses(p[None], sc[i:i + 1], sizes[i])
        assert one.reasons[0] == batch.reasons[i]
        np.testing.assert_array_equal(one.unreliable[0], batch.unreliable[i])
    d = distrust(sc, batch)
    assert (d[batch.unreliable] == 0).all() and (d[~batch.unreliable] == sc[~batch.unreliable]).all()
    assert batch.counts() == {rule: int(sum(rule in r.split(",") for r in batch.reasons)) for rule in RULES}


def test_pose_issue_strings_round_trip_and_count():
    assert format_issue("", "fallback") == ""
    issues = [format_issue("upside_down", "fallback"), format_issue("outside_image,legs_above_neck", "repaired"),
              "", format_issue("regions", "fallback")]
    assert parse_issue(issues[1]) == (["outside_image", "legs_above_neck"], "repaired")
    assert issue_counts(issues) == {"implausible": 3, "repaired": 1, "fallback": 2,
                                    "by_rule": {"outside_image": 1, "upside_down": 1, "legs_above_neck": 1,
                                                "regions": 1}}
    with pytest.raises(ValueError):
        format_issue("upside_down", "dropped")


# ------------------------------------------------------------------------------------------------ real poses


def test_real_posegan_poses_pass(realdata):
    """The pose-gan OpenPose poses of 32,668 Market-1501 crops: real good poses the rules must leave alone; the
    same poses turned upside down must be caught."""
    from posecrop.sources.posegan_csv import PoseGanCsvSource

    folder = realdata / "market1501_samples" / "keypoints_posegan_csv"
    src = PoseGanCsvSource(sorted(folder.glob("market-annotation-*.csv")))
    r = check_poses(src.keypoints, src.scores, SIZE)
    assert len(src) > 30_000
    assert r.implausible.mean() < 0.001, (r.implausible.sum(), r.counts())
    levels = [(src.scores[:, j] > 0).any(1) for j in ([J["nose"]], [J["r_hip"], J["l_hip"]],
                                                      [J["r_ankle"], J["l_ankle"]])]
    judged = levels[0] & levels[2]
    flipped = check_poses(_upside_down_all(src.keypoints), src.scores, SIZE)
    assert flipped.fired[judged, RULES.index("upside_down")].mean() > 0.99


def _upside_down_all(kp: np.ndarray) -> np.ndarray:
    q = kp.copy()
    q[..., 1] = 127 - q[..., 1]
    return q


# ------------------------------------------------------------------------------------------------ crop stage


def _settings(rules: PlausibilityRules = DEFAULT_RULES) -> WorkerSettings:
    from posecrop.canonical import load_bank

    return WorkerSettings("", load_bank(), RegionSpec(), 0.1, 0.1, 4, [(384, 192)] + [(96, 192)] * 4, "jpeg", 95,
                          "mean", 10**8, rules=rules)


def test_the_frame_fallback_is_the_last_line_of_defence():
    """With every rule switched off, an upside-down pose still gets boxes: its regions cannot be placed after the
    repair, so it takes the frame fallback (reason 'regions')."""
    kp = np.stack([GOOD, _upside_down()]).astype(np.float32)
    sc = np.ones((2, 18), np.float32)
    sizes = np.array([SIZE, SIZE], np.float64)
    keypoints, source, boxes, issues = _place(kp, sc, sizes, _settings(PlausibilityRules(enabled=())))
    assert issues == ["", "regions: fallback"]
    assert all(not isinstance(b, str) for b in boxes) and (source[1] == 2).all() and (source[0] == 0).all()
    keypoints, source, boxes, issues = _place(kp, sc, sizes, _settings())
    assert issues == ["", "upside_down: fallback"] and (source[1] == 2).all()


def _market_with_bad_poses(root: Path) -> dict[str, str]:
    """A Market-1501 folder: per image the OpenPose JSON of a good, upside-down, flat (H <= 0), head-below-hips,
    giant, or empty pose; returns image -> the expected rule ('' for a plausible pose)."""
    img = fk.encode(fk.person(64, 128, seed=1))
    cases = {"good": (GOOD, ""), "upside": (_upside_down(), "upside_down"), "flat": (_flat_line(), "height"),
             "head": (_head_below_hips(), "head_below_hips"), "tiny": (_scaled(GOOD, 0.15), "too_small"),
             "empty": (None, "")}
    expect = {}
    k = 0
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        for name, (pose, rule) in cases.items():
            k += 1
            rel = f"{folder}/{1 + k % 3:04d}_c{1 + k % 2}s1_{k:06d}_01.jpg"
            text = (json.dumps({"version": 1.3, "people": []}) if pose is None
                    else fk.openpose_text(fk.flat_pose(pose)))
            fk.put(root, rel, img, text)
            expect[rel] = rule
    return expect


def _rows(out: Path) -> dict[str, dict]:
    rows = {}
    for split in ("train", "query", "gallery"):
        for r in read_split(out, split, ["image_id", "joint_source", "pose_issue"]).to_pylist():
            rows[r["image_id"]] = r
    return rows


def test_crop_keeps_every_image_whatever_its_pose(tmp_path):
    root, out = tmp_path / "data", tmp_path / "cache"
    expect = _market_with_bad_poses(root)
    s = run_crop(CropConfig(dataset="market", root=root, out=out, workers=0, batch_size=4, progress=False))
    assert s.failed == 0 and s.written == len(expect)
    rows = _rows(out)
    assert set(rows) == set(expect)
    for image_id, rule in expect.items():
        issue = rows[image_id]["pose_issue"]
        if rule:
            rules, outcome = parse_issue(issue)
            assert rule in rules, (image_id, issue)
            want = "repaired" if rule == "head_below_hips" else "fallback"
            assert outcome == want and (np.array(rows[image_id]["joint_source"]) == (1 if want == "repaired" else 2)
                                        ).any()
        else:
            assert issue == "", (image_id, issue)
    n_bad = sum(bool(r) for r in expect.values())
    assert s.pose_issues["implausible"] == n_bad == 12
    assert s.pose_issues["repaired"] == 3 and s.pose_issues["fallback"] == 9
    named = {e["image_id"]: e["reason"] for e in read_report(out) if e["status"] == "implausible"}
    assert named == {k: rows[k]["pose_issue"] for k, v in expect.items() if v}
    (summary,) = [e for e in read_report(out) if e["status"] == "summary"]
    assert summary["pose_issues"] == s.pose_issues
    info = cache_info(out)
    assert sum(sp["pose_issues"]["implausible"] for sp in info["splits"].values()) == n_bad
    assert info["settings"]["plausibility"]["rules"]["max_torso"] == DEFAULT_RULES.max_torso

    sheet = contact_sheet(out, tmp_path / "sheet.png", n=4, implausible=True)
    img = np.asarray(Image.open(sheet).convert("RGB"))
    assert img.shape[0] > 384 and (np.abs(img.astype(int) - (255, 60, 60)).sum(-1) < 10).sum() > 500  # red frames

    res = fk.cli("info", str(out))
    assert res.returncode == 0, res.stderr
    assert "implausible poses 4" in res.stdout and "upside_down 1" in res.stdout
    res = fk.cli("crop", "--root", str(root), "--out", str(tmp_path / "cli"), "--workers", "0", "--no-progress")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "18 rows written" in text and "0 failed" in text, text
    assert "implausible poses (kept) 12 (3 repaired, 9 frame fallback): upside_down 3, head_below_hips 3" in text


def test_caches_without_pose_issue_still_read(tmp_path):
    root, out = tmp_path / "data", tmp_path / "cache"
    _market_with_bad_poses(root)
    run_crop(CropConfig(dataset="market", root=root, out=out, workers=0, progress=False))
    for part in out.glob("*/part-*.parquet"):   # as a cache written before the column existed
        t = pq.read_table(part)
        pq.write_table(t.drop_columns(["pose_issue"]).replace_schema_metadata(t.schema.metadata), part)
    info = cache_info(out)
    assert all(sp["pose_issues"] is None for sp in info["splits"].values())
    assert contact_sheet(out, tmp_path / "old.png", n=2).exists()
    from reidtrain.data import read_split_table
    assert read_split_table(out, "train", ["image_id", "pid", "camid"]).num_rows == 6


# ------------------------------------------------------------------------------------------------ real BlazePose


# CUHK01 images on which BlazePose (mediapipe 0.10.21, model_complexity 1) returns implausible poses, found by
# running it over all 3,884 images: upside-down skeletons whose repaired Eq. 1-2 height is H <= 0 (the crop
# stage used to drop them), a skeleton shrunk onto the head, a head below the hips; and two plausible ones.
CUHK01_BAD = {"0216004.png": "upside_down", "0292003.png": "upside_down", "0330001.png": "upside_down",
              "0121002.png": "too_small", "0362001.png": "head_below_hips"}
CUHK01_GOOD = ("0001001.png", "0001003.png")
BLAZE_TO_COCO18 = [0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]


def _blazepose_openpose_json(path: Path) -> str:
    """Run BlazePose on one image and write its pose as OpenPose COCO-18 JSON (visibility as the confidence, the
    neck the mean of the shoulders with the smaller visibility)."""
    import cv2
    import mediapipe as mp

    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        res = pose.process(img)
    if res.pose_landmarks is None:
        return json.dumps({"version": 1.3, "people": []})
    lm = res.pose_landmarks.landmark
    xyv = np.array([[p.x * w, p.y * h, p.visibility] for p in lm])
    flat: list[float] = []
    for m in BLAZE_TO_COCO18:
        x, y, v = ((xyv[11] + xyv[12]) / 2)[:2].tolist() + [min(xyv[11, 2], xyv[12, 2])] if m is None else xyv[m]
        flat += [float(x), float(y), float(v)]
    return json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]})


def test_real_blazepose_failures_on_cuhk01_keep_their_images(realdata, tmp_path):
    pytest.importorskip("mediapipe")
    campus = realdata / "cuhk01" / "campus"
    if not campus.is_dir():
        pytest.skip(f"{campus} not found")
    root, out = tmp_path / "cuhk01", tmp_path / "cache"
    expect = {}
    folders = ("bounding_box_train", "bounding_box_test", "query")
    for k, name in enumerate([*CUHK01_BAD, *CUHK01_GOOD]):
        pid, shot = int(name[:4]), int(name[4:7])
        rel = f"{folders[k % 3]}/{pid:04d}_c{1 + (shot > 2)}s1_{shot:06d}_01.png"
        fk.put(root, rel, (campus / name).read_bytes(), _blazepose_openpose_json(campus / name))
        expect[rel] = CUHK01_BAD.get(name, "")

    # the fixtures are real failures: without the rules, the repaired upside-down poses have no regions
    from posecrop.records import ImageRecord
    from posecrop.sources import make_pose_source
    src = make_pose_source("openpose-json", keypoints_dir=root / "keypoints")
    for rel, rule in expect.items():
        if rule == "upside_down":
            kp, sc = src.read(ImageRecord(rel, 0, 0, "train", "market"), 60, 160)
            r = repair(kp[None], sc[None], image_size=(60, 160))
            with pytest.raises(RegionGeometryError, match="H <= 0"):
                region_boxes(r.keypoints)

    s = run_crop(CropConfig(dataset="market", root=root, out=out, workers=0, progress=False))
    assert s.failed == 0 and s.written == len(expect)
    rows = _rows(out)
    for rel, rule in expect.items():
        rules, outcome = parse_issue(rows[rel]["pose_issue"])
        assert (rule in rules) if rule else not rules, (rel, rows[rel]["pose_issue"])
    assert s.pose_issues["implausible"] == len(CUHK01_BAD)
    assert s.pose_issues["by_rule"]["upside_down"] == 3
    info = cache_info(out)
    assert sum(sp["pose_issues"]["implausible"] for sp in info["splits"].values()) == len(CUHK01_BAD)
    assert {e["image_id"] for e in read_report(out) if e["status"] == "implausible"} == {
        k for k, v in expect.items() if v}
