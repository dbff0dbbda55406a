"""Dataset readers: Market-1501 on the real file list, CUHK03 on the real subset, synthetic Duke/MSMT17/CUHK03-mat/
folder layouts, and every layout error."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from posecrop.datasets import DatasetLayoutError, dataset_names, dataset_options, read_dataset, scan_dataset
from posecrop.datasets.cuhk03 import extract_cuhk03
from posecrop.records import SPLITS, ImageRecord

HAS_H5PY = importlib.util.find_spec("h5py") is not None


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def csv_names(realdata: Path, which: str) -> list[str]:
    path = realdata / "market1501_samples" / "keypoints_posegan_csv" / f"market-annotation-{which}.csv"
    return [line.split(":", 1)[0] for line in path.read_text().splitlines()[1:] if line.strip()]


# --------------------------------------------------------------------------------------------------- Market-1501


@pytest.fixture(scope="module")
def market(tmp_path_factory, realdata) -> Iterator[tuple[Path, dict]]:
    """A Market-1501 layout built from the real file list (the pose-gan CSVs name every train/test image) inside a
    parent folder; real crops are symlinked, the other files are empty. Query = the real hand-drawn (_00) crops.
    32k empty files: built in /dev/shm when there is one (creating them on a busy disk takes 15-30 s)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        parent = Path(tempfile.mkdtemp(prefix="market_parent", dir=shm))
    else:
        parent = tmp_path_factory.mktemp("market_parent")
    try:
        yield _build_market(parent, realdata)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _build_market(parent: Path, realdata: Path) -> tuple[Path, dict]:
    base = parent / "Market-1501-v15.09.15"
    crops = {p.name: p for p in (realdata / "market1501_samples" / "crops").glob("*.jpg")}
    names = {"train": csv_names(realdata, "train"), "test": csv_names(realdata, "test")}
    for folder, key in (("bounding_box_train", "train"), ("bounding_box_test", "test")):
        (base / folder).mkdir(parents=True)
        for name in names[key]:
            target = base / folder / name
            if name in crops:
                os.symlink(crops[name], target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    (base / "query").mkdir()
    query = sorted(n for n in crops if n.endswith("_00.jpg") and not n.startswith("0000_"))
    for name in query:
        os.symlink(crops[name], base / "query" / name)
    touch(base / "bounding_box_test" / "Thumbs.db")  # ships with the real Market zip: not an image
    touch(base / "gt_bbox" / "0001_c1s1_001051_00.jpg")  # an unused folder of the release
    return parent, {"query": query, **names}


def test_market_real_file_list(market):
    parent, names = market
    records = read_dataset("market", parent)
    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    assert len(by_split["train"]) == len(names["train"]) == 12936
    assert len({r.pid for r in by_split["train"]}) == 751
    junk = [n for n in names["test"] if n.startswith("-1_")]
    distractors = [n for n in names["test"] if n.startswith("0000_")]
    assert len(by_split["gallery"]) == len(names["test"]) - len(junk) == 15913  # the published gallery size
    assert sum(r.pid == 0 for r in by_split["gallery"]) == len(distractors) > 0  # distractors kept
    assert all(r.pid != -1 for r in records)  # junk dropped
    assert len({r.pid for r in by_split["gallery"] if r.pid > 0}) == 750
    assert [Path(r.path).name for r in by_split["query"]] == names["query"]
    assert {r.camid for r in records} == set(range(6))
    assert all(r.dataset == "market" for r in records)
    assert [r.split for r in records] == sorted((r.split for r in records), key=SPLITS.index)
    # the release's 18 double-extension gallery files are read like the others
    double = next(r for r in by_split["gallery"] if r.path.endswith("1488_c5s3_071737_01.jpg.jpg"))
    assert (double.pid, double.camid) == (1488, 4)
    # camera counts follow the c<N> field of the names
    expected_cams = Counter(int(n.split("_")[1][1]) - 1 for n in names["train"])
    assert Counter(r.camid for r in by_split["train"]) == expected_cams


def test_market_records_open_with_paths_relative_to_the_given_root(market):
    parent, _ = market
    records = read_dataset("market", parent)
    q = next(r for r in records if r.path.endswith("0001_c1s1_001051_00.jpg"))
    assert q == ImageRecord("Market-1501-v15.09.15/query/0001_c1s1_001051_00.jpg", 1, 0, "query", "market")
    t = next(r for r in records if r.path.endswith("0002_c2s1_000351_01.jpg"))
    assert (t.split, t.pid, t.camid) == ("train", 2, 1)
    with Image.open(parent / t.path) as im:
        assert im.size == (64, 128)
    # the inner folder works as a root too, giving shorter paths
    inner = read_dataset("market", parent / "Market-1501-v15.09.15")
    assert [r.path for r in inner] == [r.path.split("/", 1)[1] for r in records]


def test_market_missing_folder_error(tmp_path):
    touch(tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    touch(tmp_path / "bounding_box_test" / "0002_c1s1_000451_03.jpg")
    with pytest.raises(DatasetLayoutError) as e:
        read_dataset("market", tmp_path)
    assert str(e.value) == (f"Market-1501 layout not found under {tmp_path}: expected folders bounding_box_train, "
                            f"query, bounding_box_test (missing: query), or a single Market-1501* folder holding them")


def test_market_parent_errors(tmp_path):
    (tmp_path / "Market-1501-v15.09.15" / "query").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"Market-1501 layout not found under .*Market-1501-v15\.09\.15: "
                                                 r"expected folders .* "
                                                 r"\(missing: bounding_box_train, bounding_box_test\)"):
        read_dataset("market", tmp_path)
    (tmp_path / "Market-1501-copy").mkdir()
    with pytest.raises(DatasetLayoutError, match="ambiguous.*Market-1501-copy, Market-1501-v15.09.15"):
        read_dataset("market", tmp_path)


def test_market_empty_folder_and_missing_root(tmp_path):
    for f in ("bounding_box_train", "query", "bounding_box_test"):
        touch(tmp_path / f / "0002_c1s1_000451_03.jpg")
    (tmp_path / "query" / "0002_c1s1_000451_03.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="folder query holds no images"):
        read_dataset("market", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset("market", tmp_path / "nope")


def test_market_unparseable_names_are_reported_not_dropped(tmp_path):
    for f in ("bounding_box_train", "query", "bounding_box_test"):
        touch(tmp_path / f / "0002_c1s1_000451_03.jpg")
    touch(tmp_path / "bounding_box_train" / "0002_c7s1_000451_03.jpg")
    touch(tmp_path / "query" / "holiday.jpg")
    touch(tmp_path / "bounding_box_test" / "-1_c2s1_000451_03.jpg")  # junk: dropped by protocol, not an error
    touch(tmp_path / "bounding_box_test" / ".0002_c1s1_000451_04.jpg.abc.tmp")  # an atomic-write leftover
    with pytest.raises(DatasetLayoutError) as e:
        read_dataset("market", tmp_path)
    msg = str(e.value)
    assert "2 file(s) could not be used" in msg
    assert "bounding_box_train/0002_c7s1_000451_03.jpg: camera c7 outside c1-c6" in msg
    assert "query/holiday.jpg: file name does not match PPPP_cCsS_FFFFFF_BB.jpg" in msg
    assert len(e.value.skipped) == 2
    records, skipped = scan_dataset("market", tmp_path)
    assert skipped == sorted(e.value.skipped)
    assert len(records) == 3 and read_dataset("market", tmp_path, strict=False) == records


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'viper'; known datasets: market, duke"):
        read_dataset("viper", tmp_path)
    with pytest.raises(ValueError, match="dataset 'market' does not take option.* split; accepted: none"):
        read_dataset("market", tmp_path, split=3)
    assert set(dataset_names()) == {"market", "duke", "cuhk03-labeled", "cuhk03-detected", "msmt17", "cuhk01", "folder"}
    assert dataset_options("cuhk03-labeled") == {"protocol": "auto", "split": 0, "num_test_ids": None,
                                                 "split_file": None}



def test_a_registered_dataset_is_read_like_the_built_in_ones(tmp_path, monkeypatch):
    """Adding a dataset: its reader plus one register_dataset call; options, sorting, the skipped list, the
    unknown-name message and the CLI's --dataset help all follow the registry."""
    import subprocess
    import sys

    from posecrop.datasets import registry, register_dataset

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # this test's registrations stay here

    def read_flat(root: Path, dataset: str, camera: int = 0) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
        records, skipped = [], []
        for p in sorted(root.iterdir()):
            pid, _, split = p.stem.partition("-")
            if pid.isdigit() and split in SPLITS:
                records.append(ImageRecord(p.name, int(pid), camera, split, dataset))
            else:
                skipped.append((p.name, "not PID-SPLIT.jpg"))
        return records, skipped

    for name in ("7-gallery.jpg", "3-train.jpg", "5-query.jpg", "holiday.jpg"):
        touch(tmp_path / name)
    register_dataset("flat", read_flat)
    assert dataset_names()[-1] == "flat" and dataset_options("flat") == {"camera": 0}
    records, skipped = scan_dataset("flat", tmp_path, camera=2)
    assert [(r.path, r.split, r.camid) for r in records] == [("3-train.jpg", "train", 2), ("5-query.jpg", "query", 2),
                                                             ("7-gallery.jpg", "gallery", 2)]
    assert skipped == [("holiday.jpg", "not PID-SPLIT.jpg")]
    with pytest.raises(DatasetLayoutError, match="1 file"):
        read_dataset("flat", tmp_path)
    with pytest.raises(ValueError, match="known datasets: market, duke, .*, folder, flat"):
        read_dataset("viper", tmp_path)
    with pytest.raises(ValueError, match="'flat' is already registered"):
        register_dataset("flat", read_flat)
    # the command line lists what the registry holds (here: the built-in datasets)
    help_text = subprocess.run([sys.executable, "cli.py", "crop", "--help"], cwd=Path(__file__).resolve().parents[1],
                               capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}).stdout
    assert all(name in help_text for name in dataset_names() if name != "flat")


# --------------------------------------------------------------------------------------------------- Duke


def test_duke_synthetic(tmp_path):
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train" / "0001_c2_f0046182.jpg")
    touch(base / "bounding_box_train" / "0001_c8_f0046999.jpg")
    touch(base / "query" / "0005_c2_f0046985.jpg")
    touch(base / "bounding_box_test" / "0005_c5_f0051341.jpg")
    touch(base / "bounding_box_test" / "0019_c1_f0056053.jpg")
    records = read_dataset("duke", tmp_path)
    assert [(r.path, r.pid, r.camid, r.split) for r in records] == [
        ("DukeMTMC-reID/bounding_box_train/0001_c2_f0046182.jpg", 1, 1, "train"),
        ("DukeMTMC-reID/bounding_box_train/0001_c8_f0046999.jpg", 1, 7, "train"),
        ("DukeMTMC-reID/query/0005_c2_f0046985.jpg", 5, 1, "query"),
        ("DukeMTMC-reID/bounding_box_test/0005_c5_f0051341.jpg", 5, 4, "gallery"),
        ("DukeMTMC-reID/bounding_box_test/0019_c1_f0056053.jpg", 19, 0, "gallery"),
    ]
    touch(base / "query" / "0002_c1s1_000451_03.jpg")  # a Market name is not a Duke name
    touch(base / "query" / "0002_c9_f0000001.jpg")
    _, skipped = scan_dataset("duke", tmp_path)
    assert skipped == [("DukeMTMC-reID/query/0002_c1s1_000451_03.jpg", "file name does not match PPPP_cC_fFFFFFFF.jpg"),
                       ("DukeMTMC-reID/query/0002_c9_f0000001.jpg", "camera c9 outside c1-c8")]
    with pytest.raises(DatasetLayoutError, match="DukeMTMC-reID layout not found under .*missing: bounding_box_train"):
        read_dataset("duke", base / "query")


# --------------------------------------------------------------------------------------------------- MSMT17


def make_msmt(base: Path, version: str = "V1") -> None:
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {
        "list_train.txt": (train_dir, ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                       "0000/0000_001_05_0303morning_0036_1.jpg 0",
                                       "0001/0001_000_15_0303noon_0871_0.jpg 1"]),
        "list_val.txt": (train_dir, ["0001/0001_003_07_0303noon_0901_2.jpg 1"]),
        "list_query.txt": (test_dir, ["0000/0000_000_01_0303afternoon_0044_0.jpg 0"]),
        "list_gallery.txt": (test_dir, ["0000/0000_002_13_0303afternoon_0101_0.jpg 0",
                                        "0001/0001_000_02_0304morning_0011_0.jpg 1"]),
    }
    for list_name, (folder, lines) in lists.items():
        for line in lines:
            touch(base / folder / line.split()[0])
        (base / list_name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_synthetic(tmp_path, version):
    make_msmt(tmp_path / f"MSMT17_{version}", version)
    records = read_dataset("msmt17", tmp_path)
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    assert [(r.path, r.pid, r.camid, r.split) for r in records] == [
        (f"MSMT17_{version}/{train_dir}/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0, "train"),
        (f"MSMT17_{version}/{train_dir}/0000/0000_001_05_0303morning_0036_1.jpg", 0, 4, "train"),
        (f"MSMT17_{version}/{train_dir}/0001/0001_000_15_0303noon_0871_0.jpg", 1, 14, "train"),
        (f"MSMT17_{version}/{train_dir}/0001/0001_003_07_0303noon_0901_2.jpg", 1, 6, "train"),  # from list_val
        (f"MSMT17_{version}/{test_dir}/0000/0000_000_01_0303afternoon_0044_0.jpg", 0, 0, "query"),
        (f"MSMT17_{version}/{test_dir}/0000/0000_002_13_0303afternoon_0101_0.jpg", 0, 12, "gallery"),
        (f"MSMT17_{version}/{test_dir}/0001/0001_000_02_0304morning_0011_0.jpg", 1, 1, "gallery"),
    ]
    no_val = read_dataset("msmt17", tmp_path, include_val=False)
    assert len(no_val) == len(records) - 1 and not any("0901" in r.path for r in no_val)


def test_msmt17_bad_lines_and_missing_files(tmp_path):
    make_msmt(tmp_path)
    with (tmp_path / "list_gallery.txt").open("a") as f:
        f.write("0002/0002_000_03_0303noon_0001_0.jpg 2\n")  # listed, not on disk
        f.write("0000/0000_000_16_0303noon_0001_0.jpg 0\n")  # camera 16
        f.write("0000/0000_000_01_0303noon_0002_0.jpg 7\n")  # pid disagrees with the name
        f.write("just-a-name.jpg\n")
    records, skipped = scan_dataset("msmt17", tmp_path)
    assert len(records) == 7
    assert skipped == [
        ("list_gallery.txt:6", "expected '<relative path> <pid>', got 'just-a-name.jpg'"),
        ("test/0000/0000_000_01_0303noon_0002_0.jpg",
         "list_gallery.txt gives pid 7 but the file name starts with 0000"),
        ("test/0000/0000_000_16_0303noon_0001_0.jpg", "camera 16 outside 1-15"),
        ("test/0002/0002_000_03_0303noon_0001_0.jpg", "listed in list_gallery.txt but not found"),
    ]
    with pytest.raises(DatasetLayoutError, match="4 file"):
        read_dataset("msmt17", tmp_path)


def test_msmt17_layout_errors(tmp_path):
    make_msmt(tmp_path)
    (tmp_path / "list_query.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"MSMT17 layout not found under .*: expected list files "
                                                 r"list_train.txt, list_query.txt, list_gallery.txt "
                                                 r"\(missing: list_query.txt\)"):
        read_dataset("msmt17", tmp_path)
    (tmp_path / "list_query.txt").write_text("")
    with pytest.raises(DatasetLayoutError, match="no usable query images"):
        read_dataset("msmt17", tmp_path)
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetLayoutError, match=r"expected image folders train/ and test/ \(MSMT17_V1\) or "
                                                 r"mask_train_v2/ and mask_test_v2/ \(MSMT17_V2\)"):
        read_dataset("msmt17", tmp_path)


# --------------------------------------------------------------------------------------------------- CUHK03: folder


@pytest.mark.parametrize("kind", ["labeled", "detected"])
def test_cuhk03_real_subset_folder(realdata, kind):
    root = realdata / "cuhk03_subset"
    files = sorted((root / kind).glob("*.jpg"))
    records = read_dataset(f"cuhk03-{kind}", root)  # auto -> folder (no .mat files there)
    assert records == read_dataset(f"cuhk03-{kind}", root, protocol="folder")
    assert len(records) == len(files) == 190
    assert {r.path for r in records} == {f"{kind}/{f.name}" for f in files}
    ids = sorted({r.pid for r in records})
    assert ids == list(range(20))
    test_ids = set(ids[-10:])  # default: min(100, 20 // 2) = 10 test ids, the last ones
    for r in records:
        slot = int(Path(r.path).stem.split("_")[1])
        assert r.camid == (0 if slot < 5 else 1)
        assert r.split == (("query" if slot < 5 else "gallery") if r.pid in test_ids else "train")
    for pid in test_ids:  # every test id has both a query and a gallery image
        assert {r.split for r in records if r.pid == pid} == {"query", "gallery"}
    assert not any(r.path.endswith("0002_04.jpg") for r in records)  # an empty slot of the .mat
    few = read_dataset(f"cuhk03-{kind}", root, protocol="folder", num_test_ids=3)
    assert {r.pid for r in few if r.split != "train"} == {17, 18, 19}
    all_train = read_dataset(f"cuhk03-{kind}", root, protocol="folder", num_test_ids=0)
    assert {r.split for r in all_train} == {"train"}


def test_cuhk03_folder_split_file_and_errors(tmp_path, realdata):
    src = realdata / "cuhk03_subset" / "labeled"
    (tmp_path / "labeled").mkdir()
    for f in sorted(src.glob("000[0-3]_*.jpg")):
        os.symlink(f, tmp_path / "labeled" / f.name)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [0, 2], "test": [1, 3]}))
    records = read_dataset("cuhk03-labeled", tmp_path, split_file=str(split))
    assert {r.pid for r in records if r.split == "train"} == {0, 2}
    assert {r.pid for r in records if r.split == "query"} == {1, 3}
    split.write_text(json.dumps({"train": [0, 2], "test": [1, 9]}))
    with pytest.raises(DatasetLayoutError, match=r"split.json: ids not in the folder: \[9\]; folder ids in neither "
                                                 r"list: \[3\]"):
        read_dataset("cuhk03-labeled", tmp_path, split_file=str(split))
    split.write_text("[1, 2]")
    with pytest.raises(DatasetLayoutError, match=r"split.json: expected a JSON object"):
        read_dataset("cuhk03-labeled", tmp_path, split_file=str(split))
    with pytest.raises(ValueError, match="num_test_ids must be in 0-3"):
        read_dataset("cuhk03-labeled", tmp_path, num_test_ids=4)
    touch(tmp_path / "labeled" / "0001_12.jpg")
    touch(tmp_path / "labeled" / "img.jpg")
    _, skipped = scan_dataset("cuhk03-labeled", tmp_path)
    assert skipped == [("labeled/0001_12.jpg", "image slot 12 outside 00-09"),
                       ("labeled/img.jpg", "file name does not match PPPP_II.jpg (identity, image slot 00-09)")]
    with pytest.raises(DatasetLayoutError, match="CUHK03 \\(detected\\) layout not found under .*: expected one of "
                                                 "cuhk-03.mat or cuhk03_release/cuhk-03.mat .*folder detected/"):
        read_dataset("cuhk03-detected", tmp_path)
    with pytest.raises(DatasetLayoutError, match="expected folder detected/ of PPPP_II.jpg crops"):
        read_dataset("cuhk03-detected", tmp_path, protocol="folder")
    one = tmp_path / "one"
    touch(one / "labeled" / "0001_00.jpg")
    with pytest.raises(DatasetLayoutError, match="at least 2 identities"):
        read_dataset("cuhk03-labeled", one)
    with pytest.raises(ValueError, match="protocol must be one of"):
        read_dataset("cuhk03-labeled", one, protocol="np")


# --------------------------------------------------------------------------------------------------- CUHK03: .mat


class Ref:
    """Stands for an h5py object reference."""


class FakeMat(dict):
    """What h5py.File offers the extractor: datasets by name and by object reference, MATLAB arrays stored
    transposed. Built from plain MATLAB-shaped arrays."""

    def store(self, array: np.ndarray) -> Ref:
        ref = Ref()
        self[ref] = np.asarray(array).T
        return ref


def matlab_image(rng, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_fake_cuhk03(rng) -> tuple[FakeMat, dict]:
    """Two camera pairs (3 and 2 ids, 10 slots each, some empty), 20 test sets of 1-2 ids."""
    f = FakeMat()
    images = {}
    pairs = []
    for pair, n_ids in ((1, 3), (2, 2)):
        cells = np.empty((n_ids, 10), dtype=object)
        for pid in range(n_ids):
            for slot in range(10):
                if slot in (4, 9) and pid == 0:
                    cells[pid, slot] = f.store(np.zeros(2, np.uint64))  # MATLAB's empty cell in HDF5
                    continue
                img = matlab_image(rng, 12 + slot, 5 + pid)
                images[f"{pair}_{pid + 1:03d}_{1 if slot < 5 else 2}_{slot + 1:02d}.png"] = img
                cells[pid, slot] = f.store(img)
        pairs.append(f.store(cells))
    f["labeled"] = np.array([pairs], dtype=object)  # MATLAB 5x1 cell -> (1, n) in HDF5
    tests = [np.array([[1 + s % 2, 1 + s % 2]], dtype=np.float64) for s in range(20)]
    tests[3] = np.array([[1, 3], [2, 1]], dtype=np.float64)
    f["testsets"] = np.array([[f.store(t) for t in tests]], dtype=object)
    return f, images


def test_cuhk03_classic_extraction_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    f, images = make_fake_cuhk03(rng)
    info = extract_cuhk03(f, "labeled", tmp_path / "images_labeled", source="fake", progress=False)
    assert info["images"] == len(images) == 46 and len(info["testsets"]) == 20
    written = sorted(p.name for p in (tmp_path / "images_labeled").glob("*.png"))
    assert written == sorted(images)
    for name in ("1_001_1_01.png", "2_002_2_10.png"):  # pixels and orientation survive the transposes
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images_labeled" / name)), images[name])
    # the marker lets the reader work without the .mat (and without h5py)
    records = read_dataset("cuhk03-labeled", tmp_path, split=3)
    assert len(records) == 46
    test = {(r.pid, r.split, r.camid) for r in records if r.split != "train"}
    assert {pid for pid, _, _ in test} == {1003, 2001}
    assert all((split == "query") == (camid == 0) for _, split, camid in test)
    assert {r.pid for r in records if r.split == "train"} == {1001, 1002, 2002}
    r = next(r for r in records if r.path == "images_labeled/1_003_2_07.png")
    assert (r.pid, r.camid, r.split) == (1003, 1, "gallery")
    r0 = read_dataset("cuhk03-labeled", tmp_path, protocol="classic", split=0)
    assert {r.pid for r in r0 if r.split == "query"} == {1001}
    for bad in (20, "3"):
        with pytest.raises(ValueError, match="classic split must be 0-19"):
            read_dataset("cuhk03-labeled", tmp_path, split=bad)
    # resumable: a second run keeps the files and rewrites the same marker
    again = extract_cuhk03(f, "labeled", tmp_path / "images_labeled", progress=False)
    assert again["testsets"] == info["testsets"]


@pytest.mark.skipif(HAS_H5PY, reason="checks the message shown when h5py is missing")
def test_cuhk03_raw_mat_without_h5py_says_how_to_fix(tmp_path):
    (tmp_path / "cuhk03_release").mkdir()
    (tmp_path / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(DatasetLayoutError, match=r"cuhk-03.mat is a MATLAB v7.3 \(HDF5\) file and reading it needs "
                                                 r"the h5py package: pip install h5py"):
        read_dataset("cuhk03-detected", tmp_path)


@pytest.mark.skipif(not HAS_H5PY, reason="h5py not installed")
def test_cuhk03_classic_from_real_hdf5(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    fake, images = make_fake_cuhk03(rng)
    with h5py.File(tmp_path / "cuhk-03.mat", "w") as h:
        refs = {}
        group = h.create_group("#refs#")

        def write(key):
            value = fake[key]
            if value.dtype == object:
                out = np.empty(value.shape, dtype=h5py.ref_dtype)
                for idx, item in np.ndenumerate(value):
                    out[idx] = write(item)
                value = out
            if isinstance(key, str):
                h.create_dataset(key, data=value)
                return None
            if key not in refs:
                refs[key] = group.create_dataset(f"r{len(refs)}", data=value).ref
            return refs[key]

        write("labeled")
        write("testsets")
    records = read_dataset("cuhk03-labeled", tmp_path, split=3)
    assert len(records) == 46 and (tmp_path / "images_labeled" / ".complete").is_file()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images_labeled" / "1_002_2_06.png")),
                                  images["1_002_2_06.png"])


def write_new_protocol(tmp_path: Path, kind: str = "detected") -> list[str]:
    from scipy.io import savemat

    names = [f"{pair}_{pid:03d}_{view}_{slot:02d}.png" for pair, pid in ((1, 1), (1, 2), (3, 7))
             for view, slot in ((1, 1), (1, 2), (2, 6), (2, 7))]
    labels = [1] * 4 + [2] * 4 + [3] * 4
    cams = [1, 1, 2, 2] * 3
    for name in names:
        touch(tmp_path / f"images_{kind}" / name)
    filelist = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        filelist[i, 0] = n
    savemat(tmp_path / f"cuhk03_new_protocol_config_{kind}.mat", {
        "filelist": filelist, "labels": np.array(labels, float)[:, None], "camId": np.array(cams, float)[:, None],
        "train_idx": np.arange(1, 9, dtype=float)[:, None], "query_idx": np.array([[9.0], [10.0]]),
        "gallery_idx": np.array([[11.0], [12.0]])})
    return names


def test_cuhk03_new_protocol(tmp_path):
    names = write_new_protocol(tmp_path)
    records = read_dataset("cuhk03-detected", tmp_path)  # auto -> new (no raw .mat)
    assert records == read_dataset("cuhk03-detected", tmp_path, protocol="new")
    assert [(r.path, r.pid, r.camid, r.split) for r in records if r.split != "train"] == [
        ("images_detected/3_007_1_01.png", 3, 0, "query"), ("images_detected/3_007_1_02.png", 3, 0, "query"),
        ("images_detected/3_007_2_06.png", 3, 1, "gallery"), ("images_detected/3_007_2_07.png", 3, 1, "gallery")]
    assert sorted(r.path for r in records if r.split == "train") == sorted(f"images_detected/{n}" for n in names[:8])
    assert {r.pid for r in records if r.split == "train"} == {1, 2}
    (tmp_path / "images_detected" / names[10]).unlink()
    _, skipped = scan_dataset("cuhk03-detected", tmp_path)
    assert skipped == [(f"images_detected/{names[10]}", "listed in cuhk03_new_protocol_config_detected.mat but "
                                                        "not found")]
    with pytest.raises(ValueError, match="num_test_ids and split_file apply to protocol='folder' only"):
        read_dataset("cuhk03-detected", tmp_path, num_test_ids=5)


def test_auto_protocol_is_resolved_and_a_changed_resolution_is_a_settings_mismatch(tmp_path):
    from posecrop.cache import settings_mismatch
    from posecrop.datasets import resolve_dataset_options

    write_new_protocol(tmp_path)
    assert resolve_dataset_options("cuhk03-detected", tmp_path, {}) == {"protocol": "new"}
    assert resolve_dataset_options("cuhk03-detected", tmp_path, {"protocol": "folder"}) == {"protocol": "folder"}
    assert resolve_dataset_options("market", tmp_path, {}) == {}
    before = {"dataset_options": {}, "dataset_options_resolved": {"protocol": "new"}}
    (tmp_path / "cuhk-03.mat").write_bytes(b"")   # the raw file appears: "auto" now means classic
    now = {"dataset_options": {}, "dataset_options_resolved":
           resolve_dataset_options("cuhk03-detected", tmp_path, {})}
    assert now["dataset_options_resolved"] == {"protocol": "classic"}
    assert settings_mismatch(before, now) == ["dataset_options_resolved"]
    # a cache written before the resolved options were recorded still resumes
    assert settings_mismatch({"dataset_options": {}}, now) == []


def test_cuhk03_new_protocol_errors(tmp_path):
    write_new_protocol(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"expected cuhk03_new_protocol_config_labeled.mat \(missing\)"):
        read_dataset("cuhk03-labeled", tmp_path, protocol="new")
    for p in (tmp_path / "images_detected").iterdir():
        p.unlink()
    (tmp_path / "images_detected").rmdir()
    with pytest.raises(DatasetLayoutError, match=r"expected images in images_detected/ or the raw cuhk-03.mat or "
                                                 r"cuhk03_release/cuhk-03.mat to extract them from"):
        read_dataset("cuhk03-detected", tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"CUHK03 classic layout not found under .*: expected cuhk-03.mat or "
                                                 r"cuhk03_release/cuhk-03.mat \(missing\)"):
        read_dataset("cuhk03-detected", tmp_path, protocol="classic")
    (tmp_path / "cuhk03_new_protocol_config_labeled.mat").write_text("not a mat file")
    (tmp_path / "images_labeled").mkdir()
    with pytest.raises(DatasetLayoutError, match="cuhk03_new_protocol_config_labeled.mat: cannot be read as a "
                                                 "MATLAB file"):
        read_dataset("cuhk03-labeled", tmp_path)


# --------------------------------------------------------------------------------------------------- generic folder


def test_folder_dataset(tmp_path):
    touch(tmp_path / "train" / "12" / "c3_0001.jpg")
    touch(tmp_path / "train" / "12" / "frame.png")
    touch(tmp_path / "train" / "7" / "0007_c2s1_000001_00.JPG")
    touch(tmp_path / "query" / "7" / "x_c11.jpeg")
    touch(tmp_path / "gallery" / "7" / "a.jpg")
    touch(tmp_path / "gallery" / "7" / "notes.txt")
    records = read_dataset("folder", tmp_path)
    assert [(r.path, r.pid, r.camid, r.split) for r in records] == [
        ("train/12/c3_0001.jpg", 12, 2, "train"), ("train/12/frame.png", 12, 0, "train"),
        ("train/7/0007_c2s1_000001_00.JPG", 7, 1, "train"), ("query/7/x_c11.jpeg", 7, 10, "query"),
        ("gallery/7/a.jpg", 7, 0, "gallery")]
    touch(tmp_path / "gallery" / "bob" / "a.jpg")
    touch(tmp_path / "gallery" / "loose.jpg")
    touch(tmp_path / "gallery" / "7" / "c0_a.jpg")
    _, skipped = scan_dataset("folder", tmp_path)
    assert skipped == [("gallery/7/c0_a.jpg", "camera token c0 is not 1-based"),
                       ("gallery/bob/a.jpg", "pid folder 'bob' is not an integer >= 0"),
                       ("gallery/loose.jpg", "image not inside a <pid> folder")]


def test_folder_dataset_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"folder dataset layout not found under .*: expected folders "
                                                 r"train/<pid>/, query/<pid>/ and gallery/<pid>/ .*missing: train, "
                                                 r"query, gallery\)"):
        read_dataset("folder", tmp_path)
    touch(tmp_path / "query" / "1" / "a.jpg")
    with pytest.raises(DatasetLayoutError, match=r"missing: train, gallery"):
        read_dataset("folder", tmp_path)
    (tmp_path / "gallery").mkdir()
    records = read_dataset("folder", tmp_path)
    assert [r.split for r in records] == ["query"]
    (tmp_path / "query" / "1" / "a.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="no images found in query, gallery"):
        read_dataset("folder", tmp_path)


# --------------------------------------------------------------------------------------------------- CUHK01


def cuhk01_folder(folder: Path, num_ids: int, images=(1, 2, 3, 4)) -> Path:
    for pid in range(1, num_ids + 1):
        for i in images:
            touch(folder / f"{pid:04d}{i:03d}.png")
    return folder


def _test_ids(records: list[ImageRecord]) -> set[int]:
    return {r.pid for r in records if r.split != "train"}


def test_cuhk01_real_set_protocols(realdata):
    root = realdata / "cuhk01"
    if not (root / "campus").is_dir():
        pytest.skip(f"CUHK01 not found at {root}")
    records = read_dataset("cuhk01", root)
    assert len(records) == 3884 and len({r.pid for r in records}) == 971
    assert {r.pid for r in records} == set(range(1, 972))
    assert all((root / r.path).is_file() and r.path.startswith("campus/") for r in records)
    for r in records:  # camid from the view: images 001-002 camera A, 003-004 camera B
        assert r.camid == (0 if int(r.path[-7:-4]) <= 2 else 1)
    splits = {}
    for num_test, num_train in ((486, 485), (100, 871)):
        for seed in (0, 1):
            recs = read_dataset("cuhk01", root, num_test_ids=num_test, split=seed)
            train = {r.pid for r in recs if r.split == "train"}
            query = {r.pid for r in recs if r.split == "query"}
            gallery = {r.pid for r in recs if r.split == "gallery"}
            assert len(train) == num_train and query == gallery and len(query) == num_test
            assert not train & query
            counts = Counter(r.split for r in recs)
            assert counts == {"train": 4 * num_train, "query": 2 * num_test, "gallery": 2 * num_test}
            assert all(r.camid == 0 for r in recs if r.split == "query")
            assert all(r.camid == 1 for r in recs if r.split == "gallery")
            assert Counter(r.camid for r in recs if r.split == "train") == {0: 2 * num_train, 1: 2 * num_train}
            splits[num_test, seed] = query
    assert read_dataset("cuhk01", root) == records          # the defaults are split 0 of 486
    assert _test_ids(records) == splits[486, 0]
    assert _test_ids(read_dataset("cuhk01", root, split=1)) == splits[486, 1]   # deterministic per seed
    assert splits[486, 0] != splits[486, 1] and splits[100, 0] != splits[100, 1]
    # the documented rule: the first num_test_ids of default_rng(split).permutation(sorted ids)
    assert splits[100, 1] == {int(i) for i in np.random.default_rng(1).permutation(np.arange(1, 972))[:100]}
    from posecrop.datasets import resolve_dataset_options
    assert resolve_dataset_options("cuhk01", root, {}) == {"num_test_ids": 486, "split": 0}
    assert resolve_dataset_options("cuhk01", root, {"num_test_ids": 100}) == {"num_test_ids": 100, "split": 0}
    assert dataset_options("cuhk01") == {"num_test_ids": 486, "split": 0}


def test_cuhk01_layouts_flat_campus_and_parent(tmp_path):
    flat = cuhk01_folder(tmp_path / "flat", 6)
    recs = read_dataset("cuhk01", flat, num_test_ids=2)
    assert len(recs) == 24 and Counter(r.split for r in recs) == {"train": 16, "query": 4, "gallery": 4}
    assert all("/" not in r.path for r in recs)
    cuhk01_folder(tmp_path / "CUHK01" / "campus", 6)
    (tmp_path / "CUHK01" / "README.md").write_text("x")
    for root, prefix in ((tmp_path / "CUHK01", "campus/"), (tmp_path, "CUHK01/campus/")):
        got = read_dataset("cuhk01", root, num_test_ids=2)
        assert [r.path for r in got] == [prefix + r.path for r in recs]
        assert [(r.pid, r.camid, r.split) for r in got] == [(r.pid, r.camid, r.split) for r in recs]
    assert len(_test_ids(recs)) == 2


def test_cuhk01_layout_errors_name_the_folder_and_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=f"CUHK01 layout not found under {empty}: expected a folder campus/"):
        read_dataset("cuhk01", empty)
    (empty / "campus").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"CUHK01 layout under {empty / 'campus'}: no images"):
        read_dataset("cuhk01", empty)
    # another dataset's names: none usable
    market = tmp_path / "market" / "campus"
    touch(market / "0002_c1s1_000451_03.jpg")
    touch(market / "0002_c2s1_000301_01.jpg")
    with pytest.raises(DatasetLayoutError, match="none of the 2 images can be used .*PPPPIII.png") as info:
        read_dataset("cuhk01", market.parent)
    assert {p for p, _ in info.value.skipped} == {"campus/0002_c1s1_000451_03.jpg", "campus/0002_c2s1_000301_01.jpg"}
    # a few wrong names among good ones: strict lists them, scan_dataset reports them and reads the rest
    mixed = cuhk01_folder(tmp_path / "mixed", 4)
    touch(mixed / "0001005.png")
    touch(mixed / "photo.png")
    with pytest.raises(DatasetLayoutError, match="2 file\\(s\\) could not be used") as info:
        read_dataset("cuhk01", mixed, num_test_ids=2)
    assert [p for p, _ in info.value.skipped] == ["0001005.png", "photo.png"]
    recs, skipped = scan_dataset("cuhk01", mixed, num_test_ids=2)
    assert len(recs) == 16 and [p for p, _ in skipped] == ["0001005.png", "photo.png"]
    assert "outside 0001-9999 / 001-004" in skipped[0][1] and "does not match PPPPIII.png" in skipped[1][1]
    # missing images and a missing identity: an error naming them, even with strict=False
    holes = cuhk01_folder(tmp_path / "holes", 5)
    (holes / "0002003.png").unlink()
    for i in (1, 2, 3, 4):
        (holes / f"0004{i:03d}.png").unlink()
    for strict in (True, False):
        with pytest.raises(DatasetLayoutError, match=f"under {holes}: 2 of the identities 0001-0005 lack") as info:
            read_dataset("cuhk01", holes, strict=strict, num_test_ids=2)
        message = str(info.value)
        assert "identity 0002: missing 0002003\n" in message + "\n"
        assert "identity 0004: missing 0004001, 0004002, 0004003, 0004004" in message
    # two files for one image
    dup = cuhk01_folder(tmp_path / "dup", 3)
    touch(dup / "0001001.jpg")
    _, skipped = scan_dataset("cuhk01", dup, num_test_ids=1)
    assert skipped == [("0001001.png", "a second file for identity 0001 image 001 (also 0001001.jpg)")]
    # options
    with pytest.raises(ValueError, match="num_test_ids must be in 1-2 for the 3 identities"):
        read_dataset("cuhk01", dup, strict=False, num_test_ids=3)
    with pytest.raises(ValueError, match="split must be an integer >= 0, got 'a'"):
        read_dataset("cuhk01", dup, split="a")
    with pytest.raises(ValueError, match="does not take option.* protocol; accepted: num_test_ids, split"):
        read_dataset("cuhk01", dup, protocol="classic")


def test_cuhk01_split_is_a_seeded_permutation_of_the_ids(tmp_path):
    root = cuhk01_folder(tmp_path / "c", 20)
    ids = {s: _test_ids(read_dataset("cuhk01", root, num_test_ids=5, split=s)) for s in range(4)}
    assert all(len(v) == 5 for v in ids.values()) and len({frozenset(v) for v in ids.values()}) > 1
    assert ids[2] == _test_ids(read_dataset("cuhk01", root, num_test_ids=5, split=2))
    # the 5 test ids of a split are the first 5 of the permutation that gives 10 (nested test sets per seed)
    assert ids[3] <= _test_ids(read_dataset("cuhk01", root, num_test_ids=10, split=3))
