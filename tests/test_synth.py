"""The synthetic dataset generator: determinism, Market-1501 layout, OpenPose keypoint files and their faults,
body parts where they belong, and the `synth` command."""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posecrop import synth as S
from posecrop import synth_render as R
from posecrop.keypoints import KEYPOINT_INDEX
from reidkit.typedconfig import ConfigError, from_mapping

MARKET_NAME = re.compile(r"^(?P<pid>-1|\d{4})_c(?P<cam>\d)s(?P<seq>\d)_(?P<frame>\d{6})_(?P<box>\d{2})\.jpg$")
TINY = S.preset("tiny")
# a moderate sample for the fault statistics (~280 images, a few seconds)
MEDIUM = dataclasses.replace(TINY, num_ids_train=12, num_ids_test=12, num_cameras=4, cameras_per_id=(2, 4),
                             images_per_id_per_camera=4, num_distractors=6, num_junk=3, seed=7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, S.SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return out, S.generate(TINY, out, progress=False)


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "medium"
    S.generate(MEDIUM, out, progress=False, preview=False)
    return out, json.loads((out / S.TRUTH_FILE).read_text())["images"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != S.INFO_FILE}


def _detected(root: Path, rel: str) -> list[dict]:
    return json.loads((root / S.KEYPOINTS_FOLDER / (rel[:-4] + "_keypoints.json")).read_text())["people"]


def test_same_seed_gives_identical_files_and_another_seed_differs(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    S.generate(TINY, again, progress=False)
    a, b = _files(root), _files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    info_a, info_b = (json.loads((d / S.INFO_FILE).read_text()) for d in (root, again))
    assert info_a["config"] == info_b["config"] and info_a["identities"] == info_b["identities"]

    other = tmp_path / "other"
    S.generate(dataclasses.replace(TINY, seed=1), other, progress=False, preview=False)
    c = _files(other)
    imgs_a = sorted(v for k, v in a.items() if k.endswith(".jpg"))
    imgs_c = sorted(v for k, v in c.items() if k.endswith(".jpg"))
    assert not set(imgs_a) & set(imgs_c)  # no image shared between the two seeds


def test_image_does_not_depend_on_generation_order():
    """Each image has its own random stream: rendering a spec alone gives the same bytes as in the full run."""
    identities = S.make_identities(TINY)
    specs = S.plan_images(TINY, identities)
    by_pid = {i.pid: i for i in identities}
    cams = {c: S.camera_setup(TINY, c) for c in range(TINY.num_cameras)}
    forward = [S.render_image(TINY, s, by_pid, cams[s.cam]).jpeg for s in specs[:6]]
    backward = [S.render_image(TINY, s, by_pid, cams[s.cam]).jpeg for s in specs[:6][::-1]][::-1]
    assert forward == backward
    assert len(set(forward)) == len(forward)


def test_market_layout(tiny):
    root, summary = tiny
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == {"bounding_box_train", "bounding_box_test", "query", "keypoints"}
    seen: dict[str, list[tuple[int, int, int]]] = {}
    for split, folder in S.SPLIT_FOLDERS.items():
        names = sorted(p.name for p in (root / folder).iterdir())
        assert len(names) == summary.images[split] > 0
        for name in names:
            m = MARKET_NAME.match(name)
            assert m, f"{folder}/{name} is not a Market-1501 name"
            seen.setdefault(split, []).append((int(m["pid"]), int(m["cam"]), int(m["box"])))
    train_pids = {p for p, _, _ in seen["train"]}
    query_pids = {p for p, _, _ in seen["query"]}
    gallery_pids = {p for p, _, _ in seen["gallery"]}
    assert len(train_pids) == TINY.num_ids_train and min(train_pids) >= 1
    assert len(query_pids) == TINY.num_ids_test and min(query_pids) >= 1
    assert not train_pids & (query_pids | gallery_pids)          # train and test identities are disjoint
    assert query_pids <= gallery_pids and {0, -1} <= gallery_pids   # distractors and junk only in the gallery
    assert sum(p == 0 for p, _, _ in seen["gallery"]) == TINY.num_distractors == summary.distractors
    assert sum(p == -1 for p, _, _ in seen["gallery"]) == TINY.num_junk == summary.junk
    assert all(box == 0 for _, _, box in seen["query"]) and all(box >= 1 for _, _, box in seen["gallery"])
    cams = {c for v in seen.values() for _, c, _ in v}
    assert cams == set(range(1, TINY.num_cameras + 1))
    gallery = Counter((p, c) for p, c, _ in seen["gallery"])
    for pid, cam, _ in seen["query"]:  # every query has a true match in another camera
        assert any(p == pid and c != cam for p, c in gallery), (pid, cam)
        assert gallery[(pid, cam)] == TINY.images_per_id_per_camera
    assert (root / S.INFO_FILE).is_file() and (root / S.TRUTH_FILE).is_file() and (root / S.PREVIEW_FILE).is_file()
    info = json.loads((root / S.INFO_FILE).read_text())
    assert info["complete"] and info["summary"]["images"] == summary.images


def test_market_reader_reads_the_output(tiny):
    datasets = pytest.importorskip("posecrop.datasets")
    root, summary = tiny
    records = datasets.read_dataset("market", root)
    by_split = Counter(r.split for r in records)
    assert by_split["train"] == summary.images["train"]
    assert by_split["query"] == summary.images["query"]
    assert by_split["gallery"] == summary.images["gallery"] - summary.junk  # junk is dropped by the protocol
    truth = json.loads((root / S.TRUTH_FILE).read_text())["images"]
    for r in records:
        assert truth[r.path]["pid"] == r.pid and truth[r.path]["camid"] == r.camid


def test_images_decode_at_market_size(tiny):
    root, _ = tiny
    jpgs = [p for f in S.SPLIT_FOLDERS.values() for p in (root / f).iterdir()]
    for p in jpgs:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 128), p
    preview = Image.open(root / S.PREVIEW_FILE)
    assert preview.format == "PNG" and preview.size[0] > 256


def test_keypoint_files_are_openpose_json(tiny):
    root, _ = tiny
    truth = json.loads((root / S.TRUTH_FILE).read_text())["images"]
    images = [p.relative_to(root).as_posix() for f in S.SPLIT_FOLDERS.values() for p in (root / f).iterdir()]
    assert set(truth) == set(images)
    for rel in images:
        doc = json.loads((root / S.KEYPOINTS_FOLDER / (rel[:-4] + "_keypoints.json")).read_text())
        assert doc["version"] == 1.3 and isinstance(doc["people"], list) and len(doc["people"]) <= 1
        for person in doc["people"]:
            assert person["person_id"] == [-1] and person["face_keypoints_2d"] == []
            a = np.array(person["pose_keypoints_2d"], dtype=np.float64)
            assert a.shape == (54,)
            a = a.reshape(18, 3)
            missing = a[:, 2] == 0
            assert np.all(a[missing] == 0), rel
            x, y, c = a[~missing].T
            assert np.all((0 <= x) & (x <= 63) & (0 <= y) & (y <= 127) & (c > 0) & (c <= 1)), rel
        t = truth[rel]
        if t["kind"] == "distractor-background":
            assert doc["people"] == [] and t["keypoints"] is None
        else:
            assert np.array(t["keypoints"]).shape == (18, 2)


def test_detected_joints_sit_on_the_true_joints(medium):
    root, truth = medium
    errors = []
    for rel, t in truth.items():
        people = _detected(root, rel)
        if t["kind"] != "person" or not people:
            continue
        a = np.array(people[0]["pose_keypoints_2d"]).reshape(18, 3)
        ok = a[:, 2] >= 0.3
        errors.append(np.linalg.norm(a[ok, :2] - np.array(t["keypoints"])[ok], axis=1))
    errors = np.concatenate(errors)
    assert np.median(errors) < 2.5 and np.mean(errors < 6) > 0.95


def test_estimator_faults_like_real_ones(medium):
    root, truth = medium
    persons = {rel: t for rel, t in truth.items() if t["kind"] == "person"}
    empty = [rel for rel in persons if not _detected(root, rel)]
    rate = len(empty) / len(persons)
    assert len(persons) > 200
    assert abs(rate - MEDIUM.faults.no_person_rate) < 0.06, rate
    assert all(persons[rel]["no_person"] for rel in empty)

    found = {"back": [], "front": []}
    wrist, shoulder, outside_detected = [], [], 0
    face = [KEYPOINT_INDEX[n] for n in ("nose", "r_eye", "l_eye")]
    for rel, t in persons.items():
        people = _detected(root, rel)
        if not people:
            continue
        a = np.array(people[0]["pose_keypoints_2d"]).reshape(18, 3)
        good = a[:, 2] >= 0.3
        if t["view"] in found:
            found[t["view"]].append(good[face].mean())
        wrist.append(a[[KEYPOINT_INDEX["r_wrist"], KEYPOINT_INDEX["l_wrist"]], 2] > 0)
        shoulder.append(a[[KEYPOINT_INDEX["r_shoulder"], KEYPOINT_INDEX["l_shoulder"]], 2] > 0)
        outside_detected += int(np.sum((a[:, 2] > 0) & ~np.array(t["in_image"])))
    assert len(found["back"]) > 10 and len(found["front"]) > 10
    assert np.mean(found["back"]) < 0.1 < 0.6 < np.mean(found["front"])  # faces vanish in back views
    assert np.mean(wrist) < np.mean(shoulder) - 0.2                        # wrists are often lost
    assert outside_detected == 0                                            # joints outside the image are missing
    scores = np.concatenate([np.array(p[0]["pose_keypoints_2d"]).reshape(18, 3)[:, 2]
                             for p in (_detected(root, r) for r in persons) if p])
    scores = scores[scores > 0]
    assert 0.5 < np.median(scores) < 0.85 and scores.max() <= 0.95
    assert 0.02 < np.mean(scores < 0.26) < 0.25  # some weak detections, as estimators report


def test_misaligned_boxes_cut_and_shift(medium):
    _, truth = medium
    persons = [t for t in truth.values() if t["kind"] == "person"]
    cuts = Counter(t["cut"] for t in persons if t["split"] != "query")
    assert cuts["head"] > 0 and cuts["legs"] > 0 and cuts["none"] > len(persons) / 2
    assert all(t["cut"] == "none" for t in persons if t["split"] == "query")  # hand-drawn query boxes
    necks = np.array([t["keypoints"][KEYPOINT_INDEX["neck"]] for t in persons])
    assert necks[:, 0].std() > 2 and necks[:, 1].std() > 4  # the person is not always in the same place


def _render_front(look: R.Look) -> np.ndarray:
    canvas = Image.new("RGB", (64 * R.RENDER_SCALE, 128 * R.RENDER_SCALE), (128, 128, 128))
    R.draw_person(canvas, R.Pose(yaw=0.0, phase=0.5, stride=0.5), look, R.Placement(32, 6, 116))
    return np.asarray(canvas.resize((64, 128), Image.Resampling.BOX), dtype=np.int16)


def test_accessories_show_in_their_body_part():
    base = R.Look(skin=R.SKIN_TONES[1], hair=R.HAIR_COLOURS[0], long_hair=False, hat="none", shirt="red",
                  sleeves="short", pattern="plain", bag="none", bag_colour="black", trousers="jeans",
                  trouser_kind="long", shoes="white", shade=(0, 0, 0), height_scale=1.0, width_scale=1.0)
    canvas = Image.new("RGB", (64 * R.RENDER_SCALE, 128 * R.RENDER_SCALE))
    joints = R.draw_person(canvas, R.Pose(yaw=0.0, phase=0.5, stride=0.5), base, R.Placement(32, 6, 116))
    y = {n: joints[KEYPOINT_INDEX[n]][1] for n in ("neck", "r_hip", "r_knee", "r_ankle")}
    ref = _render_front(base)
    # (changed attribute, rows where the change must show: [top, bottom])
    cases = [({"hat": "red"}, (0, y["neck"])),
             ({"shoes": "red"}, (y["r_knee"], 128)),
             ({"trousers": "white"}, (y["r_hip"] - 10, y["r_ankle"] + 4)),
             ({"pattern": "stripes"}, (y["neck"], y["r_hip"] + 6)),
             ({"bag": "backpack"}, (y["neck"] - 4, y["r_hip"] + 6))]
    for change, (top, bottom) in cases:
        diff = np.abs(_render_front(dataclasses.replace(base, **change)) - ref).sum(-1) > 30
        rows = np.nonzero(diff.any(1))[0]
        assert rows.size > 0, change
        assert top - 1 <= rows.min() and rows.max() <= bottom + 1, (change, rows.min(), rows.max(), top, bottom)


def test_identities_form_look_alike_families():
    cfg = S.preset("demo")
    ids = S.make_identities(cfg)
    assert len(ids) == cfg.num_ids_train + cfg.num_ids_test
    assert len({i.look.categorical() for i in ids}) == len(ids)  # every identity can be told apart
    test = [i for i in ids if i.split == "test"]
    assert len({i.look.shirt for i in test}) <= len(test) / 3   # many share a shirt colour
    families: dict[int, list[S.Identity]] = {}
    for i in ids:
        families.setdefault(i.family, []).append(i)
    one_cue = 0
    for members in families.values():
        base = members[0].look.categorical()
        for m in members[1:]:
            one_cue += sum(a != b for a, b in zip(base, m.look.categorical())) <= 2
    assert one_cue >= 0.7 * (len(ids) - len(families))
    cams = [len(i.cameras) for i in ids]
    assert min(cams) >= cfg.cameras_per_id[0] and max(cams) <= cfg.cameras_per_id[1]


def test_config_validation_and_presets():
    with pytest.raises(ConfigError, match="num_cameras"):
        from_mapping(S.SynthConfig, {"num_cameras": 9})
    with pytest.raises(ConfigError, match="no_person_rate"):
        from_mapping(S.SynthConfig, {"faults": {"no_person_rate": 1.5}})
    cfg = from_mapping(S.SynthConfig, {"seed": 3, "faults": {"wrist_miss_rate": 0.5}})
    assert cfg.seed == 3 and cfg.faults.wrist_miss_rate == 0.5
    with pytest.raises(ValueError, match="unknown synth preset"):
        S.preset("huge")


def test_refuses_foreign_folder_resumes_and_overwrites(tmp_path):
    cfg = dataclasses.replace(TINY, num_ids_train=1, num_ids_test=1, cameras_per_id=(2, 2),
                              images_per_id_per_camera=1, num_distractors=1, num_junk=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(S.SynthError, match="not empty"):
        S.generate(cfg, foreign, progress=False)

    out = tmp_path / "ds"
    S.generate(cfg, out, progress=False, preview=False)
    victim = next((out / "bounding_box_train").iterdir())
    original = victim.read_bytes()
    victim.write_bytes(b"half a jpeg")  # a damaged file is rewritten, a missing one re-created
    kp = next((out / S.KEYPOINTS_FOLDER / "query").iterdir())
    kp.unlink()
    S.generate(cfg, out, progress=False, preview=False)
    assert victim.read_bytes() == original and kp.is_file()

    other = dataclasses.replace(cfg, seed=5)
    with pytest.raises(S.SynthError, match="another config"):
        S.generate(other, out, progress=False, preview=False)
    S.generate(other, out, progress=False, preview=False, overwrite=True)
    assert json.loads((out / S.INFO_FILE).read_text())["config"]["seed"] == 5
    assert not victim.exists() or victim.read_bytes() != original


def test_synth_command(tmp_path):
    from typer.testing import CliRunner

    import cli

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(cli.app, ["synth", "--out", str(out), "--preset", "tiny", "--seed", "2", "--num-ids-train", "2",
                                  "--num-cameras", "2", "--no-progress", "--no-preview"])
    assert res.exit_code == 0, res.output
    assert "bounding_box_train" in res.output and "query" in res.output
    info = json.loads((out / S.INFO_FILE).read_text())
    assert info["config"]["seed"] == 2 and info["config"]["num_ids_train"] == 2 and info["config"]["num_cameras"] == 2
    assert info["summary"]["images"]["train"] == len(list((out / "bounding_box_train").iterdir()))

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    res = runner.invoke(cli.app, ["synth", "--out", str(tmp_path / "busy"), "--preset", "tiny", "--no-progress"])
    assert res.exit_code == 2 and "refusing" in res.output
    res = runner.invoke(cli.app, ["synth", "--out", str(tmp_path / "bad"), "--preset", "nope"])
    assert res.exit_code != 0 and "unknown synth preset" in res.output


def test_left_and_right_follow_the_view():
    """Facing the camera, the person's right shoulder is on the image left; from the back it is on the right;
    a person walking to the image right has the nose right of the neck."""
    look = dataclasses.replace(S.make_identities(TINY)[0].look, width_scale=1.0)
    sides = {}
    for yaw in (0.0, np.pi, np.pi / 2, -np.pi / 2):
        canvas = Image.new("RGB", (64 * R.RENDER_SCALE, 128 * R.RENDER_SCALE))
        j = R.draw_person(canvas, R.Pose(yaw=yaw, phase=0.0, stride=0.5), look, R.Placement(32, 6, 116))
        sides[R.view_name(yaw)] = j
    rs, ls, nose, neck = (KEYPOINT_INDEX[n] for n in ("r_shoulder", "l_shoulder", "nose", "neck"))
    assert sides["front"][rs, 0] < sides["front"][ls, 0] - 10
    assert sides["back"][rs, 0] > sides["back"][ls, 0] + 10
    assert sides["right"][nose, 0] > sides["right"][neck, 0] + 3
    assert sides["left"][nose, 0] < sides["left"][neck, 0] - 3
