"""mmpose pose source and the mmpose compatibility layer, on the real COCO and Market samples."""
from __future__ import annotations

import hashlib
import importlib
import json
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmengine")
pytest.importorskip("mmpose")

from posecrop import mmpose_compat  # noqa: E402
from posecrop.keypoints import COCO17_NAMES, KEYPOINT_NAMES, coco17_to_coco18, mark_missing  # noqa: E402
from posecrop.records import ImageRecord  # noqa: E402
from posecrop.sources.base import PoseBatchItem, PoseSource  # noqa: E402

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
COCO_DIR = REALDATA / "coco_keypoints_mmpose"
MARKET_CROPS = REALDATA / "market1501_samples" / "crops"
TINY = "rtmpose-t_coco17-256x192"
pytestmark = [pytest.mark.filterwarnings("ignore::posecrop.sources.mmpose_source.RandomWeightsWarning"),
              pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")]


def _coco():
    if not (COCO_DIR / "test_coco.json").is_file():
        pytest.skip(f"real COCO sample not found at {COCO_DIR}")
    return json.loads((COCO_DIR / "test_coco.json").read_text())


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def person_items() -> list[PoseBatchItem]:
    """Every annotated COCO person (its bbox crop) and six Market-1501 crops."""
    coco = _coco()
    if not MARKET_CROPS.is_dir():
        pytest.skip(f"Market crops not found at {MARKET_CROPS}")
    images = {im["id"]: _rgb(COCO_DIR / im["file_name"]) for im in coco["images"]}
    items = []
    for ann in coco["annotations"]:
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        crop = np.ascontiguousarray(images[ann["image_id"]][y:y + h, x:x + w])
        items.append(PoseBatchItem(ImageRecord(f"coco/{ann['id']}.jpg", 0, 0, "train", "coco"), crop))
    for path in sorted(MARKET_CROPS.glob("*.jpg"))[:6]:
        items.append(PoseBatchItem(ImageRecord(f"market/{path.name}", 1, 0, "train", "market"), _rgb(path)))
    return items


@pytest.fixture(scope="module")
def tiny_source():
    from posecrop.sources.mmpose_source import MMPoseSource

    return MMPoseSource(config=TINY, checkpoint="random", batch_size=6, threads=1)


@pytest.fixture(scope="module")
def batched(tiny_source, person_items) -> tuple[np.ndarray, np.ndarray]:
    return tiny_source.predict_coco17(person_items)


# ------------------------------------------------------------------------------------------ COCO-17 -> COCO-18


def test_coco17_to_coco18_on_real_ground_truth():
    anns = _coco()["annotations"]
    raw = np.array([a["keypoints"] for a in anns], dtype=np.float32).reshape(len(anns), 17, 3)
    kp17, vis = raw[..., :2], raw[..., 2]
    kp18, sc18 = mark_missing(*coco17_to_coco18(kp17, vis / 2.0))  # visibility 0/1/2 -> score 0/0.5/1

    assert kp18.shape == (len(anns), 18, 2) and sc18.shape == (len(anns), 18)
    for j18, name in enumerate(KEYPOINT_NAMES):
        if name == "neck":
            continue
        j17 = COCO17_NAMES.index(name)
        labeled = vis[:, j17] > 0
        np.testing.assert_array_equal(kp18[labeled, j18], kp17[labeled, j17])
        np.testing.assert_array_equal(sc18[:, j18], vis[:, j17] / 2.0)
        assert np.isnan(kp18[~labeled, j18]).all()
    ls, rs = COCO17_NAMES.index("l_shoulder"), COCO17_NAMES.index("r_shoulder")
    both = (vis[:, ls] > 0) & (vis[:, rs] > 0)
    assert both.sum() >= 5  # the sample has real shoulder pairs to check
    np.testing.assert_allclose(kp18[both, 1], (kp17[both, ls] + kp17[both, rs]) / 2)
    np.testing.assert_array_equal(sc18[:, 1], np.minimum(vis[:, ls], vis[:, rs]) / 2.0)
    assert np.isnan(kp18[~both, 1]).all()
    # every labeled COCO joint survives, plus one neck per labeled shoulder pair
    assert (sc18 > 0).sum() == (vis > 0).sum() + both.sum()


# ------------------------------------------------------------------------------------------ compatibility layer


def test_ensure_makes_mmpose_apis_importable():
    report = mmpose_compat.ensure_mmpose_importable()
    assert set(report) == {"xtcocotools", "torchvision", "mmcv.ops", "mmdet.utils", "mmdet.CSPNeXt"}
    apis = importlib.import_module("mmpose.apis")
    assert callable(apis.inference_topdown) and callable(apis.init_model)
    # import-time stand-ins do not outlive mmpose's import: the rest of the process sees the truth
    for name, kind in report.items():
        if name in ("torchvision", "mmdet.utils") and kind != "real":
            top = name.split(".")[0]
            assert top not in sys.modules and importlib.util.find_spec(top) is None
    if report["mmcv.ops"] != "real":
        assert "mmcv.ops" not in sys.modules
        assert not importlib.import_module("mmpose.models.heads.hybrid_heads.dekr_head").has_mmcv_full


def test_ensure_is_idempotent(monkeypatch):
    from mmengine.registry import MODELS

    first = mmpose_compat.ensure_mmpose_importable()
    modules, alias = dict(sys.modules), MODELS._children.get("mmdet")
    assert mmpose_compat.ensure_mmpose_importable() == first
    monkeypatch.setattr(mmpose_compat, "_report", None)  # run every step again, not just the cached answer
    assert mmpose_compat.ensure_mmpose_importable() == first
    assert MODELS._children.get("mmdet") is alias
    assert {k: v for k, v in sys.modules.items() if mmpose_compat.is_standin(v)} == \
        {k: v for k, v in modules.items() if mmpose_compat.is_standin(v)}


@pytest.mark.filterwarnings("ignore:The metainfo config file")
def test_xtcocotools_api_works_on_real_annotations():
    """mmpose's CocoDataset reads the real annotations through xtcocotools (real or the pycocotools adapter), and
    COCOeval with mmpose's sigmas scores the ground truth against itself as perfect."""
    mmpose_compat.ensure_mmpose_importable()
    coco = _coco()
    from mmpose.datasets import CocoDataset
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    dataset = CocoDataset(ann_file=str(COCO_DIR / "test_coco.json"), data_root="", data_mode="topdown",
                          data_prefix=dict(img=str(COCO_DIR) + "/"), test_mode=True, pipeline=[])
    by_id = {a["id"]: a for a in coco["annotations"]}
    assert len(dataset) > 0
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        truth = np.array(by_id[info["id"]]["keypoints"], dtype=np.float32).reshape(17, 3)
        np.testing.assert_array_equal(info["keypoints"][0], truth[:, :2])

    gt = COCO(str(COCO_DIR / "test_coco.json"))
    results = [dict(image_id=a["image_id"], category_id=1, keypoints=a["keypoints"], score=1.0)
               for a in coco["annotations"] if a["num_keypoints"] > 0]
    evaluator = COCOeval(gt, gt.loadRes(results), "keypoints", dataset.metainfo["sigmas"], use_area=True)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


@pytest.fixture
def importable_elsewhere(tmp_path, monkeypatch):
    """Importable torchvision and mmdet packages (on sys.path), as a user with those packages installed has."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("__version__ = 'test'\n")
    (tmp_path / "torchvision" / "transforms.py").write_text("class ToPILImage:\n    pass\n")
    (tmp_path / "mmdet").mkdir()
    (tmp_path / "mmdet" / "__init__.py").write_text("")
    (tmp_path / "mmdet" / "utils.py").write_text("ConfigType = dict\n\ndef reduce_mean(t):\n    return t\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mmpose.visualization

    saved = sys.modules.get("mmpose.visualization.simcc_vis")
    yield tmp_path
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "mmdet")]:
        del sys.modules[name]
    if saved is not None:
        sys.modules["mmpose.visualization.simcc_vis"] = saved
        mmpose.visualization.simcc_vis = saved
    importlib.invalidate_caches()


def test_real_packages_are_used_not_shadowed(importable_elsewhere, monkeypatch):
    mmpose_compat.ensure_mmpose_importable()
    monkeypatch.setattr(mmpose_compat, "_report", None)
    sys.modules.pop("mmpose.visualization.simcc_vis", None)  # re-imported below against what ensure left
    report = mmpose_compat.ensure_mmpose_importable()
    assert report["torchvision"] == "real" and report["mmdet.utils"] == "real"
    for name in ("torchvision", "torchvision.transforms", "mmdet", "mmdet.utils"):
        module = sys.modules[name]
        assert not mmpose_compat.is_standin(module)
        assert Path(module.__file__).is_relative_to(importable_elsewhere), name
    simcc_vis = importlib.import_module("mmpose.visualization.simcc_vis")
    assert simcc_vis.ToPILImage is sys.modules["torchvision.transforms"].ToPILImage
    # pycocotools is real and installed: the adapter hands out its classes unchanged
    if report["xtcocotools"] == "stand-in (pycocotools)":
        import pycocotools.coco

        assert sys.modules["xtcocotools.coco"].COCO is pycocotools.coco.COCO
    assert mmpose_compat.real_module_available("json")
    assert not mmpose_compat.real_module_available("posecrop_no_such_package")


def test_official_rtmpose_config_builds_with_mmdet_cspnext():
    """mmpose's own RTMPose config names `mmdet.CSPNeXt` (with `_scope_='mmdet'`); it builds without mmdet."""
    import mmpose
    from mmpose.models.backbones import CSPNeXt

    from posecrop.sources.mmpose_source import MMPoseSource, metafile_weights

    official = (Path(mmpose.__file__).parent / ".mim" / "configs" / "body_2d_keypoint" / "rtmpose" / "coco"
                / "rtmpose-t_8xb256-420e_coco-256x192.py")
    if not official.is_file():
        pytest.skip("mmpose's configs (.mim) are not installed")
    source = MMPoseSource(config=official, checkpoint="random", batch_size=2)
    assert isinstance(source.model.backbone, CSPNeXt)
    url = metafile_weights(official)
    assert url and url.startswith("https://") and url.endswith(".pth")


# ------------------------------------------------------------------------------------------ the pose source


def _input_window(width: int, height: int, padding: float, aspect: float) -> tuple[float, float, float, float]:
    """The region of the source image the top-down model sees: the whole image, padded, widened/heightened to the
    model's input aspect (w/h) about its centre."""
    sw, sh = width * padding, height * padding
    if sw > sh * aspect:
        sh = sw / aspect
    else:
        sw = sh * aspect
    return width / 2 - sw / 2, height / 2 - sh / 2, width / 2 + sw / 2, height / 2 + sh / 2


def test_batched_estimate_on_real_images(tiny_source, person_items, batched):
    assert isinstance(tiny_source, PoseSource)
    keypoints, scores = tiny_source.estimate(person_items)
    n = len(person_items)
    assert keypoints.shape == (n, 18, 2) and scores.shape == (n, 18)
    assert keypoints.dtype == np.float32 and scores.dtype == np.float32
    detected = scores > 0
    assert detected.any()
    assert np.isfinite(keypoints[detected]).all() and np.isnan(keypoints[~detected]).all()
    padding = next(t.padding for t in tiny_source.pipeline.transforms if hasattr(t, "padding"))
    in_w, in_h = tiny_source.cfg.codec["input_size"]
    for kp, ok, item in zip(keypoints, detected, person_items):
        h, w = item.image.shape[:2]
        x1, y1, x2, y2 = _input_window(w, h, padding, in_w / in_h)
        pts = kp[ok]
        assert ((pts[:, 0] >= x1 - 1) & (pts[:, 0] <= x2 + 1) & (pts[:, 1] >= y1 - 1) & (pts[:, 1] <= y2 + 1)).all()
    # COCO-18 from the model's COCO-17: the neck is the shoulders' mean with the smaller score
    kp17, sc17 = batched
    ls, rs = COCO17_NAMES.index("l_shoulder"), COCO17_NAMES.index("r_shoulder")
    np.testing.assert_array_equal(scores[:, 1], np.where(np.minimum(sc17[:, ls], sc17[:, rs]) > 0,
                                                         np.minimum(sc17[:, ls], sc17[:, rs]), 0))
    both = detected[:, 1]
    np.testing.assert_allclose(keypoints[both, 1], (kp17[both, ls] + kp17[both, rs]) / 2, atol=1e-4)


def _assert_same_poses(k_a, s_a, k_b, s_b):
    """Scores (SimCC maxima, continuous) agree to float precision; positions (argmaxes) agree exactly except where
    random weights leave a near-tie that float-level noise may resolve either way (allowed for <= 2% of joints)."""
    np.testing.assert_allclose(s_a, s_b, rtol=1e-4, atol=1e-4)
    same = np.abs(k_a - k_b).max(-1) <= 1e-2
    assert same.mean() >= 0.98, f"{(~same).sum()} of {same.size} keypoints moved"


def _simcc_logits(source, items) -> list[np.ndarray]:
    """The network's raw outputs (SimCC x/y logits) for items, in the source's batches."""
    import torch
    from mmengine.dataset import pseudo_collate

    outputs = []
    for start in range(0, len(items), source.batch_size):
        data = source.model.data_preprocessor(
            pseudo_collate([source.prepare(it) for it in items[start:start + source.batch_size]]), False)
        with torch.no_grad():
            outputs.append([t.numpy() for t in source.model(**data, mode="tensor")])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def test_batching_does_not_change_results(tiny_source, person_items, batched):
    from posecrop.sources.mmpose_source import MMPoseSource

    one_by_one = MMPoseSource(config=TINY, checkpoint="random", batch_size=1)  # same seeded random weights
    for a, b in zip(_simcc_logits(tiny_source, person_items), _simcc_logits(one_by_one, person_items)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    _assert_same_poses(*batched, *one_by_one.predict_coco17(person_items))


def test_matches_mmpose_inference_topdown(tiny_source, person_items, batched):
    """Our batched path gives what mmpose's own per-image API gives for the whole image (BGR input)."""
    from mmpose.apis import inference_topdown

    picks = [0, 1, len(person_items) - 2, len(person_items) - 1]
    ref_k, ref_s = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        for i in picks:
            (sample,) = inference_topdown(tiny_source.model, np.ascontiguousarray(person_items[i].image[..., ::-1]))
            ref_k.append(sample.pred_instances.keypoints[0])
            ref_s.append(sample.pred_instances.keypoint_scores[0])
    _assert_same_poses(batched[0][picks], batched[1][picks], np.stack(ref_k), np.stack(ref_s))


def test_describe(tiny_source):
    info = tiny_source.describe()
    json.dumps(info)
    assert info["backend"] == "mmpose"
    assert info["config_sha256"] == hashlib.sha256(Path(info["config"]).read_bytes()).hexdigest()
    assert info["checkpoint"] == "random" and info["random_weights"] and info["checkpoint_sha256"] is None
    assert info["batch_size"] == 6 and info["threads"] == 1 and info["device"] == "cpu"


def test_bad_image_names_the_file(tiny_source):
    item = PoseBatchItem(ImageRecord("bad/gray.jpg", 0, 0, "train", "market"), np.zeros((8, 4), np.uint8))
    with pytest.raises(ValueError, match="bad/gray.jpg"):
        tiny_source.estimate([item])


def _internet() -> bool:
    try:
        socket.create_connection(("download.openmmlab.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_no_checkpoint_without_internet_fails_fast(tmp_path, monkeypatch):
    from mmengine.config import Config

    from posecrop.sources.mmpose_source import MMPoseSource, PoseCheckpointError, resolve_config

    if _internet():
        pytest.skip("internet is available: the offline error path cannot be exercised here")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached, nothing written to the user's cache
    url = Config.fromfile(str(resolve_config(TINY))).load_from
    start = time.perf_counter()
    with pytest.raises(PoseCheckpointError) as err:
        MMPoseSource(config=TINY, checkpoint=None, download_timeout=5)
    assert time.perf_counter() - start < 30
    assert url in str(err.value) and "--pose-checkpoint PATH" in str(err.value)


def test_checkpoint_path(tiny_source, tmp_path):
    """A checkpoint as mmengine's runner writes it (state_dict + meta with numpy dataset_meta) loads from a path."""
    import torch

    from posecrop.sources.mmpose_source import MMPoseSource, PoseCheckpointError

    generator = torch.Generator().manual_seed(1)
    state = {k: (v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
             for k, v in tiny_source.model.state_dict().items()}
    path = tmp_path / "pose.pth"
    torch.save({"meta": {"dataset_meta": tiny_source.dataset_meta, "epoch": 420, "seed": np.int64(21)},
                "state_dict": state}, path)
    loaded = MMPoseSource(config=TINY, checkpoint=path, batch_size=2)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value.cpu(), state[key]), key
    info = loaded.describe()
    assert info["checkpoint"] == str(path) and not info["random_weights"]
    assert info["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(PoseCheckpointError, match="does not fit"):
        MMPoseSource(config="rtmpose-s_coco17-256x192", checkpoint=path)
    with pytest.raises(PoseCheckpointError, match="missing.pth"):
        MMPoseSource(config=TINY, checkpoint=tmp_path / "missing.pth")


def test_missing_config_names_the_file(tmp_path):
    from posecrop.sources.mmpose_source import MMPoseSource, PoseConfigError

    with pytest.raises(PoseConfigError, match="nope.py"):
        MMPoseSource(config=tmp_path / "nope.py", checkpoint="random")


@pytest.mark.filterwarnings("ignore:The metainfo config file", "ignore::DeprecationWarning")
def test_non_topdown_or_non_coco17_configs_are_refused():
    import mmpose

    from posecrop.sources.mmpose_source import MMPoseSource, PoseConfigError

    configs = Path(mmpose.__file__).parent / ".mim" / "configs" / "body_2d_keypoint"
    mpii = configs / "rtmpose" / "mpii" / "rtmpose-m_8xb64-210e_mpii-256x256.py"
    rtmo = configs / "rtmo" / "coco" / "rtmo-s_8xb32-600e_coco-640x640.py"  # bottom-up; imports mmdet.utils
    if not (mpii.is_file() and rtmo.is_file()):
        pytest.skip("mmpose's configs (.mim) are not installed")
    with pytest.raises(PoseConfigError, match="16 keypoints"):
        MMPoseSource(config=mpii, checkpoint="random")
    with pytest.raises(PoseConfigError, match="top-down"):
        MMPoseSource(config=rtmo, checkpoint="random")


def test_crop_cli_names_a_missing_pose_checkpoint_without_a_traceback(tmp_path):
    """`crop --pose-checkpoint PATH` selects the mmpose source; a wrong path is a clear one-line error (exit 1)."""
    import subprocess
    import sys

    from posecrop.synth import generate, preset

    data = tmp_path / "data"
    generate(preset("tiny"), data, progress=False, preview=False)
    (data / "keypoints").rename(tmp_path / "kp-elsewhere")  # no precomputed keypoints: mmpose would be the default
    missing = tmp_path / "weights" / "rtmpose-s.pth"
    r = subprocess.run([sys.executable, "cli.py", "crop", "--dataset", "market", "--root", str(data),
                        "--out", str(tmp_path / "cache"), "--pose-checkpoint", str(missing), "--no-progress"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    msg = " ".join(r.stderr.split())
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert str(missing) in msg and "not found" in msg and "Traceback" not in r.stderr, msg
