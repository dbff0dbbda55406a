"""crops = "recrop": the loader re-cuts the five crops from the cached source image and boxes - the very crops
the crop stage stored (exactly, when the cache is lossless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from posecrop.crop_stage import CropConfig, run_crop
from posecrop.regions import REGION_NAMES
from reidtrain.data import (CacheReadError, ReidDataset, SampleTransform, input_columns, input_sizes, load_split)
from reidtrain.model.registry import model_inputs

from test_data import write_tiny_cache

SIZES = input_sizes(model_inputs("aligned", (384, 192), (96, 192)))   # the crop stage's default crop sizes


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from posecrop.synth import generate, preset
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(preset("tiny"), root, progress=False, preview=False)
    return root


def _both(cache: Path, split: str) -> tuple[ReidDataset, ReidDataset]:
    columns = input_columns("intra-inter")
    stored = ReidDataset(load_split(cache, split, columns, "stored"), SampleTransform(SIZES))
    recut = ReidDataset(load_split(cache, split, columns, "recrop"), SampleTransform(SIZES))
    assert stored.data.image_ids == recut.data.image_ids and recut.data.keys == list(REGION_NAMES)
    assert recut.data.images == {}   # no stored crop column was read
    return stored, recut


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_recut_crops_are_the_stored_crops(synth, tmp_path, encoding):
    cache = tmp_path / "cache"
    run_crop(CropConfig(dataset="market", root=synth, out=cache, workers=0, encoding=encoding, progress=False))
    stored, recut = _both(cache, "query")
    for i in range(len(stored)):
        a, b = stored.load(i), recut.load(i)
        for key in REGION_NAMES:
            assert a[key].shape == b[key].shape
            if encoding == "png":
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{stored.data.image_ids[i]} {key}")
            else:  # the stored crop is the same crop after JPEG q95
                assert np.abs(a[key].astype(int) - b[key].astype(int)).mean() < 3.0
    # at other input sizes the crops are cut straight at that size (one resample)
    small = ReidDataset(load_split(cache, "query", input_columns("aligned"), "recrop"),
                        SampleTransform(input_sizes(model_inputs("aligned", (64, 32), (16, 32)))))
    assert small[0]["inputs"]["body"].shape == (3, 64, 32) and small[0]["inputs"]["head"].shape == (3, 16, 32)


def test_real_market_crops_recut(realdata, tmp_path):
    market = realdata / "market1501_samples"
    csvs = sorted((market / "keypoints_posegan_csv").glob("market-annotation-*.csv"))
    in_train = {line.split(":")[0] for line in csvs[-1].read_text().splitlines()[1:]} \
        if csvs[-1].name.endswith("train.csv") else set()
    root = tmp_path / "Market-1501"
    for c in sorted((market / "crops").glob("*.jpg")):
        box = int(c.stem.split("_")[-1])
        folder = "query" if box == 0 else ("bounding_box_train" if c.name in in_train else "bounding_box_test")
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / c.name).symlink_to(c)
    cache = tmp_path / "cache"
    s = run_crop(CropConfig(dataset="market", root=root, out=cache, pose_source="posegan-csv", encoding="png",
                            pose_options={"csv_paths": [str(p) for p in csvs]}, workers=0, progress=False))
    assert s.written > 10
    compared = 0
    for split in ("train", "gallery"):
        stored, recut = _both(cache, split)
        for i in range(len(stored)):
            a, b = stored.load(i), recut.load(i)
            assert all(np.array_equal(a[k], b[k]) for k in REGION_NAMES), stored.data.image_ids[i]
            compared += 1
    assert compared == s.written


def test_caches_without_the_box_frame_are_refused_clearly(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    for f in (cache / "train").glob("*.parquet"):   # a cache written before boxes were in the crop frame
        table = pq.read_table(f)
        meta = dict(table.schema.metadata)
        key = next(k for k in meta if b"posecrop" in k)
        settings = __import__("json").loads(meta[key])
        settings.pop("box_frame")
        meta[key] = __import__("json").dumps(settings).encode()
        pq.write_table(table.replace_schema_metadata(meta), f)
    for f in (cache / "query").glob("*.parquet"):
        f.unlink()
    for f in (cache / "gallery").glob("*.parquet"):
        f.unlink()
    with pytest.raises(CacheReadError, match="crops = 'stored'"):
        load_split(cache, "train", input_columns("aligned"), "recrop")
    assert len(load_split(cache, "train", input_columns("aligned"), "stored")) == 16
    # baseline reads `whole` either way
    assert len(load_split(cache, "train", input_columns("baseline"), "recrop")) == 16


def test_bad_source_bytes_or_boxes_name_the_image(tmp_path):
    import pyarrow as pa
    cache = write_tiny_cache(tmp_path / "cache")
    f = max((cache / "gallery").glob("*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    table = pq.read_table(f)
    rows = table.to_pylist()
    rows[0]["whole"] = {"bytes": b"not an image", "path": "whole.jpg"}
    rows[1]["boxes"] = [[float("nan")] * 4] * 5
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), f)
    ds = ReidDataset(load_split(cache, "gallery", input_columns("intra-inter"), "recrop"), SampleTransform(SIZES))
    for row, problem in ((rows[0], "whole"), (rows[1], "cannot be cut")):
        with pytest.raises(CacheReadError, match=problem) as e:
            ds[ds.data.image_ids.index(row["image_id"])]
        assert row["image_id"] in str(e.value)
