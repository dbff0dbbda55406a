"""The data pipeline over the Parquet cache: columns read, flip consistency, normalisation, samplers."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from posecrop.cache_reader import CacheError
from posecrop.crops import BOX_FRAME
from posecrop.regions import REGION_NAMES
from posecrop.schema import IMAGE_COLUMNS, cache_schema
from reidtrain.config import AugmentConfig
from reidtrain.model.registry import model_inputs
from reidtrain.data import (CacheReadError, EpochSampler, ReidDataset, SampleTransform, input_columns, input_sizes,
                            load_split, make_loader, normalize_batch, normalize_inputs, relabel)

# region boxes (x1, y1, x2, y2) in the 40x80 source image, REGION_NAMES order (one leaves the image on the left)
TINY_BOXES = [[0.0, 0.0, 40.0, 80.0], [4.0, 0.0, 36.0, 20.0], [0.0, 14.0, 40.0, 44.0], [-6.0, 40.0, 34.0, 64.0],
              [2.0, 58.0, 38.0, 80.0]]
CROP_SIZES = {"whole": (80, 40), "body": (64, 32), "head": (16, 32), "upper_body": (16, 32),
              "upper_leg": (16, 32), "lower_leg": (16, 32)}


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _identity_image(pid: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Left half one colour, right half another (an identity's 'clothes'; left != right shows a flip)."""
    h, w = hw
    palette = np.random.default_rng(pid).integers(30, 226, size=(2, 3))
    img = np.empty((h, w, 3), np.float32)
    img[:, : w // 2] = palette[0]
    img[:, w // 2:] = palette[1]
    img[:, : w // 4] += 25  # the outer left quarter brighter still: left-right asymmetry in every channel
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiny_cache(root: Path, train_ids: int = 4, per_id: int = 4, test_ids: int = 3, seed: int = 0,
                     dataset: str = "market", parts_per_split: int = 2) -> Path:
    """A small crop cache written straight with pyarrow in the posecrop schema (JPEG bytes from PIL).

    train: `train_ids` identities x `per_id` images; query: one image per test identity (camera 0);
    gallery: two images per test identity (camera 1) plus one distractor (pid 0).
    """
    rng = np.random.default_rng(seed)
    schema = cache_schema({"dataset": dataset, "crop_sizes": {k: list(v) for k, v in CROP_SIZES.items()},
                           "box_frame": BOX_FRAME, "fill": "mean"})
    plan = {"train": [(pid, c % 2, k) for pid in range(1, train_ids + 1) for k, c in enumerate(range(per_id))],
            "query": [(100 + i, 0, 0) for i in range(test_ids)],
            "gallery": [(100 + i, 1, k) for i in range(test_ids) for k in range(2)] + [(0, 1, 0)]}
    for split, items in plan.items():
        rows = []
        for pid, cam, k in items:
            image_id = f"{split}/{pid:04d}_c{cam}_{k:02d}.jpg"
            row = {"image_id": image_id, "dataset": dataset, "split": split, "pid": pid, "camid": cam,
                   "width": 40, "height": 80, "keypoints": [[0.0, 0.0]] * 18, "scores": [1.0] * 18,
                   "joint_source": [0] * 18, "boxes": TINY_BOXES, "outside": [0.0] * 5,
                   "beta": 0.1}
            for col in IMAGE_COLUMNS:
                row[col] = {"bytes": _jpeg(_identity_image(pid, CROP_SIZES[col], rng)), "path": f"{col}.jpg"}
            rows.append(row)
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(parts_per_split):  # several part files, rows out of order: the reader must sort
            chunk = rows[i::parts_per_split][::-1]
            if chunk:
                pq.write_table(pa.Table.from_pylist(chunk, schema=schema), folder / f"part-000of001-{i:06d}.parquet")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


def test_reads_only_the_needed_columns(tmp_path, cache):
    """A cache holding only the five crops serves the crop models; only `whole` serves baseline."""
    for name, keep in (("crops", list(REGION_NAMES)), ("whole", ["whole"])):
        for split in ("train",):
            table = pa.concat_tables(pq.read_table(f) for f in sorted((cache / split).glob("*.parquet")))
            drop = [c for c in IMAGE_COLUMNS if c not in keep]
            (tmp_path / name / split).mkdir(parents=True)
            pq.write_table(table.drop_columns(drop), tmp_path / name / split / "part-000of001-000000.parquet")
    crops = load_split(tmp_path / "crops", "train", input_columns("intra-inter"))
    assert list(crops.images) == list(REGION_NAMES) and len(crops) == 16
    with pytest.raises(CacheError, match="whole"):
        load_split(tmp_path / "crops", "train", input_columns("baseline"))
    base = load_split(tmp_path / "whole", "train", input_columns("baseline"))
    assert list(base.images) == ["body"]
    assert ReidDataset(base, SampleTransform({"body": (80, 40)}))[0]["inputs"]["body"].shape == (3, 80, 40)
    with pytest.raises(CacheError, match="body|head"):
        load_split(tmp_path / "whole", "train", input_columns("aligned"))


def test_split_content_and_relabel(cache):
    split = load_split(cache, "train", input_columns("aligned"))
    assert len(split) == 16 and split.image_ids == sorted(split.image_ids)
    labels, pids = relabel(split.pids)
    assert pids == [1, 2, 3, 4] and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert (np.asarray(pids)[labels] == split.pids).all()
    gallery = load_split(cache, "gallery", input_columns("aligned"))
    assert 0 in gallery.pids.tolist() and split.dataset == "market"


def test_items_are_resized_uint8_per_input(cache):
    split = load_split(cache, "query", input_columns("intra-inter"))
    sizes = input_sizes(model_inputs("intra-inter", (32, 16), (8, 16)))
    ds = ReidDataset(split, SampleTransform(sizes))
    item = ds[0]
    assert item["inputs"]["body"].shape == (3, 32, 16) and item["inputs"]["head"].shape == (3, 8, 16)
    assert all(t.dtype == torch.uint8 for t in item["inputs"].values())
    assert item["label"] == -1 and item["pid"] == 100
    base = ReidDataset(load_split(cache, "query", input_columns("baseline")),
                       SampleTransform(input_sizes(model_inputs("baseline", (32, 16), (8, 16)))))
    assert list(base[0]["inputs"]) == ["body"] and base[0]["inputs"]["body"].shape == (3, 32, 16)


def test_flip_is_the_same_decision_for_all_five_crops(cache):
    split = load_split(cache, "train", input_columns("intra-inter"))
    sizes = input_sizes(model_inputs("intra-inter", (64, 32), (16, 32)))
    plain = ReidDataset(split, SampleTransform(sizes))
    ds = ReidDataset(split, SampleTransform(sizes, AugmentConfig(flip=True, pad=0, erasing=0.0)))
    decisions = []
    for seed in range(40):
        index = seed % len(ds)
        item, ref = ds[(index, seed * 7919)]["inputs"], plain[index]["inputs"]
        flips = set()
        for key, img in item.items():
            if torch.equal(img, ref[key]):
                flips.add(False)
            else:
                assert torch.equal(img, ref[key].flip(-1)), f"{key}: neither the crop nor its mirror image"
                flips.add(True)
        assert len(flips) == 1, f"crops flipped differently for seed {seed}"
        decisions.append(flips.pop())
    assert 5 < sum(decisions) < 35  # both outcomes happen, about half each
    # with padding-crop and erasing on top, the same (index, seed) gives the same augmentation: reproducible,
    # independent of worker or process
    ds = ReidDataset(split, SampleTransform(sizes, AugmentConfig(flip=True, pad=4, erasing=0.5, color_jitter=0.5)))
    a, b = ds[(3, 12345)], ds[(3, 12345)]
    assert all(torch.equal(a["inputs"][k], b["inputs"][k]) for k in a["inputs"])
    c = ds[(3, 54321)]
    assert any(not torch.equal(a["inputs"][k], c["inputs"][k]) for k in a["inputs"])


def test_no_augmentation_without_seed_and_erasing_changes_pixels(cache):
    split = load_split(cache, "train", input_columns("aligned"))
    sizes = input_sizes(model_inputs("intra-inter", (64, 32), (16, 32)))
    plain = ReidDataset(split, SampleTransform(sizes))[2]
    aug = ReidDataset(split, SampleTransform(sizes, AugmentConfig(flip=False, pad=0, erasing=1.0)))
    item = aug[(2, 99)]
    assert any(not torch.equal(item["inputs"][k], plain["inputs"][k]) for k in plain["inputs"])
    same = ReidDataset(split, SampleTransform(sizes, AugmentConfig(flip=False, pad=0, erasing=0.0)))[(2, 99)]
    assert all(torch.equal(same["inputs"][k], plain["inputs"][k]) for k in plain["inputs"])


def test_channel_mean_normalisation():
    x = torch.randint(0, 256, (2, 3, 8, 4), dtype=torch.uint8)
    y = normalize_batch(x, "channel-mean")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y, x.float() / 255 - (x.float() / 255).mean(dim=(2, 3), keepdim=True))
    z = normalize_batch(x, "imagenet")
    torch.testing.assert_close(z[0, 0], (x[0, 0].float() / 255 - 0.485) / 0.229)
    with pytest.raises(ValueError, match="normalisation"):
        normalize_batch(x, "nope")
    # a sample's parts are normalised with the means of its whole-body image: their colour survives
    inputs = {"body": x, "head": torch.full((2, 3, 2, 4), 200, dtype=torch.uint8)}
    out = normalize_inputs(inputs)
    torch.testing.assert_close(out["body"], y)
    body_mean = (x.float() / 255).mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out["head"], 200 / 255 - body_mean.expand(2, 3, 2, 4))
    assert normalize_inputs(inputs, "imagenet")["head"].shape == (2, 3, 2, 4)


def test_samplers_are_seeded_sharded_and_identity_balanced():
    labels = np.repeat(np.arange(6), [5, 4, 6, 3, 4, 2])
    s = EpochSampler(labels, batch_size=8, mode="random", seed=1)
    s.set_epoch(1)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(len(labels)))
    s.set_epoch(2)
    assert [i for i, _ in s] != [i for i, _ in first]
    s.set_epoch(1)
    assert list(s) == first
    ranks = [EpochSampler(labels, 8, "random", seed=1, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == len(labels) // 2
    assert not {i for i, _ in shares[0]} & {i for i, _ in shares[1]}
    assert {i: sd for i, sd in first} == {i: sd for sh in shares for i, sd in sh}  # same seeds as 1 process
    ident = EpochSampler(labels, batch_size=6, mode="identity", instances_per_id=2, seed=0)
    order = [i for i, _ in ident]
    assert len(order) % 6 == 0 and order
    for b in range(0, len(order), 6):
        batch_labels = labels[order[b: b + 6]]
        assert len(set(batch_labels.tolist())) == 3
        assert all((batch_labels == lab).sum() == 2 for lab in set(batch_labels.tolist()))
    with pytest.raises(ValueError, match="identities"):
        EpochSampler(labels, batch_size=16, mode="identity", instances_per_id=2)


def test_loader_with_workers_matches_in_process(cache):
    split = load_split(cache, "train", input_columns("intra-inter"))
    labels, _ = relabel(split.pids)
    sizes = input_sizes(model_inputs("intra-inter", (32, 16), (8, 16)))
    ds = ReidDataset(split, SampleTransform(sizes, AugmentConfig()), labels)
    sampler = EpochSampler(labels, 4, seed=3)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(ds, 4, workers, sampler, train=True)
        sampler.set_epoch(1)
        batches[workers] = list(loader)
    assert len(batches[0]) == 4
    for b0, b2 in zip(batches[0], batches[2]):
        assert torch.equal(b0["label"], b2["label"])
        assert all(torch.equal(b0["inputs"][k], b2["inputs"][k]) for k in b0["inputs"])
        assert b0["inputs"]["body"].shape == (4, 3, 32, 16)


def test_bad_cache_errors_name_the_place(tmp_path, cache):
    with pytest.raises(CacheError, match="train"):
        load_split(tmp_path, "train", input_columns("aligned"))
    (tmp_path / "train").mkdir()
    with pytest.raises(CacheError, match="no part files"):
        load_split(tmp_path, "train", input_columns("aligned"))
    # undecodable bytes: the error names the image and the column
    rows = pq.read_table(next((cache / "query").glob("*.parquet"))).to_pylist()
    rows[0]["head"] = {"bytes": b"not a jpeg", "path": "x.jpg"}
    (tmp_path / "query").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=cache_schema({})),
                   tmp_path / "query" / "part-000of001-000000.parquet")
    split = load_split(tmp_path, "query", input_columns("aligned"))
    ds = ReidDataset(split, SampleTransform(input_sizes(model_inputs("intra-inter", (32, 16), (8, 16)))))
    bad = split.image_ids.index(rows[0]["image_id"])
    with pytest.raises(CacheReadError, match=rf"{rows[0]['image_id']}.*head"):
        ds[bad]
