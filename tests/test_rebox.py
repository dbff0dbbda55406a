"""beta recomputation: a cache cropped at beta b1, loaded with beta = b2, gives the boxes and crops of a fresh crop
at b2 (Table 11 without re-cropping), for both region widths; evaluation uses the checkpoint's beta."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posecrop.crop_stage import CropConfig, run_crop
from posecrop.regions import REGION_NAMES
from reidkit.typedconfig import ConfigError
from reidtrain.config import TrainConfig
from reidtrain.data import CacheReadError, ReidDataset, SampleTransform, input_columns, load_split

SIZES = {name: (64, 32) if name == "body" else (16, 32) for name in REGION_NAMES}
COLUMNS = input_columns("intra-inter")
B1, B2 = 0.0, 6 / 48


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from posecrop.synth import generate, preset
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(preset("tiny"), root, progress=False, preview=False)
    return root


def _crop(root: Path, out: Path, beta: float, region_width: str) -> Path:
    run_crop(CropConfig(dataset="market", root=root, out=out, beta=beta, region_width=region_width, workers=0,
                        encoding="png", body_size=(64, 32), part_size=(16, 32), progress=False))
    return out


@pytest.mark.parametrize("region_width", ["paper", "image"])
def test_boxes_at_another_beta_are_a_fresh_crops(synth, tmp_path, region_width):
    c1 = _crop(synth, tmp_path / "b1", B1, region_width)
    c2 = _crop(synth, tmp_path / "b2", B2, region_width)
    for split in ("train", "query", "gallery"):
        fresh = load_split(c2, split, COLUMNS, "recrop")
        moved = load_split(c1, split, COLUMNS, "recrop", beta=B2)
        same = load_split(c1, split, COLUMNS, "recrop", beta=B1)
        original = load_split(c1, split, COLUMNS, "recrop")
        assert moved.image_ids == fresh.image_ids and len(fresh) > 0
        np.testing.assert_array_equal(moved.recrop.boxes, fresh.recrop.boxes)
        np.testing.assert_array_equal(same.recrop.boxes, original.recrop.boxes)   # its own beta: the cache's boxes
        # the overlap really moved: the part boxes grow by (B2 - B1) * H at their inner edges
        h = original.recrop.boxes[:, 0, 3] - original.recrop.boxes[:, 0, 1]
        np.testing.assert_allclose(original.recrop.boxes[:, 2, 1] - moved.recrop.boxes[:, 2, 1], (B2 - B1) * h,
                                   rtol=1e-4, atol=1e-3)
    # and the crops the loader cuts equal the fresh cache's stored (lossless) crops and its re-cut ones
    fresh_stored = ReidDataset(load_split(c2, "query", COLUMNS, "stored"), SampleTransform(SIZES))
    moved = ReidDataset(load_split(c1, "query", COLUMNS, "recrop", beta=B2), SampleTransform(SIZES))
    unmoved = ReidDataset(load_split(c1, "query", COLUMNS, "recrop"), SampleTransform(SIZES))
    differs = 0
    for i in range(len(moved)):
        a, b, c = fresh_stored.load(i), moved.load(i), unmoved.load(i)
        for key in REGION_NAMES:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{moved.data.image_ids[i]} {key}")
            differs += int(not np.array_equal(b[key], c[key]))
    assert differs > 0


def test_beta_needs_the_recrop_path_and_a_valid_fraction(synth, tmp_path):
    cache = _crop(synth, tmp_path / "c", B1, "paper")
    with pytest.raises(ConfigError, match="recrop"):
        load_split(cache, "query", COLUMNS, "stored", beta=0.1)
    with pytest.raises(ConfigError, match="recrop"):
        load_split(cache, "query", input_columns("baseline"), "recrop", beta=0.1)   # reads `whole`
    with pytest.raises(CacheReadError, match="beta 1.5"):
        load_split(cache, "query", COLUMNS, "recrop", beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(beta=1.5)
    with pytest.raises(ValueError, match="recrop"):
        TrainConfig(beta=0.1, crops="stored")


@pytest.mark.slow
def test_training_and_evaluation_use_the_runs_beta(synth, tmp_path, one_thread):
    from reidtrain.evaluate import eval_dataset, load_trained
    from reidtrain.train import train

    cache = _crop(synth, tmp_path / "c", B1, "paper")
    cfg = TrainConfig(cache=cache, out=tmp_path / "run", model="intra-inter", beta=B2, epochs=1, batch_size=4,
                      workers=0, tensorboard=False, body_size=(64, 32), part_size=(16, 32))
    train(cfg, progress=False)
    _, meta, _ = load_trained(tmp_path / "run" / "model.pt", "cpu")
    assert meta["config"]["beta"] == B2
    ds = eval_dataset(cache, "query", meta)
    np.testing.assert_array_equal(ds.data.recrop.boxes, load_split(cache, "query", COLUMNS, "recrop", B2).recrop.boxes)
