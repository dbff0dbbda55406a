"""CUHK03 (labeled / detected boxes) under the classic, the new (767/700) or a plain-folder protocol.

cuhk03-labeled / cuhk03-detected   (option protocol: "auto" (default), "classic", "new", "folder")
           classic: the raw release `cuhk-03.mat` (MATLAB v7.3 / HDF5, read with h5py) at `root/` or
             `root/cuhk03_release/`. Its images are extracted once into `root/images_<labeled|detected>/` as PNG
             named `<campair>_<pid:03>_<view>_<slot:02>.png` (slots 01-05 = view 1 = camera A, 06-10 = view 2
             = camera B: the names used by the new-protocol file lists too), atomically and resumably; a
             `.complete` JSON marker in that folder stores the 20 test sets, so later reads need neither h5py nor
             the .mat. Split `split` (0-19, default 0 as in the paper) takes its 100 test ids from `testsets`;
             the other 1,367 ids are train. Test images: query = camera A (view 1), gallery = camera B (view 2).
             pid = 1000 * campair + pid-in-pair (e.g. 3_045 -> 3045); camid = view - 1.
           new: the 767/700 protocol of Zhong et al.: `root/cuhk03_new_protocol_config_<kind>.mat` (scipy.io
             loadmat: train_idx/query_idx/gallery_idx 1-based into filelist/labels/camId) with the images in
             `root/images_<kind>/` (extracted from cuhk-03.mat when absent). pid = labels, camid = camId - 1.
           folder: already-extracted crops `root/<labeled|detected>/PPPP_II.jpg` (PPPP identity, II slot 00-09;
             camera A if II < 5 else B, camid 0/1). Ids sorted; the last `num_test_ids` (default min(100, ids//2))
             are test ids (query = camera A, gallery = camera B), the rest train. `split_file`: a JSON file
             {"train": [pids], "test": [pids]} overrides that choice.
           auto: classic if the raw .mat (or an extraction marker) exists, else new if its config exists, else
             folder.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from reidkit.atomic import atomic_path, atomic_write_text

from ..records import ImageRecord
from .common import DatasetLayoutError, Skipped, _bare_stem, _image_files, _join, _rel

CUHK03_PROTOCOLS: tuple[str, ...] = ("auto", "classic", "new", "folder")
_CUHK_RAW_MAT = ("cuhk-03.mat", "cuhk03_release/cuhk-03.mat")
_CUHK_IMAGE_NAME = re.compile(r"^(?P<pair>\d)_(?P<pid>\d{3})_(?P<view>[12])_(?P<slot>\d{2})$")
_CUHK_FOLDER_NAME = re.compile(r"^(?P<pid>\d+)_(?P<slot>\d+)$")
_CUHK_MARKER = ".complete"
_CUHK_NUM_SPLITS = 20


def _cuhk_kind(dataset: str) -> str:
    return dataset.split("-", 1)[1]  # labeled | detected


def _find_raw_mat(root: Path) -> Path | None:
    return next((root / p for p in _CUHK_RAW_MAT if (root / p).is_file()), None)


def _cuhk03_protocol(root: Path, kind: str) -> str:
    """What protocol="auto" means for this folder: classic if the raw .mat (or an extraction marker) exists, else
    new if its config exists, else folder."""
    if _find_raw_mat(root) is not None or (root / f"images_{kind}" / _CUHK_MARKER).is_file():
        return "classic"
    if (root / f"cuhk03_new_protocol_config_{kind}.mat").is_file():
        return "new"
    if (root / kind).is_dir():
        return "folder"
    raise DatasetLayoutError(
        f"CUHK03 ({kind}) layout not found under {root}: expected one of "
        f"{' or '.join(_CUHK_RAW_MAT)} (classic protocol), cuhk03_new_protocol_config_{kind}.mat with "
        f"images_{kind}/ (new protocol), or a folder {kind}/ of PPPP_II.jpg crops")


def resolve_options(root: Path, dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """protocol="auto" made explicit: the protocol this folder's files select."""
    if options.get("protocol", "auto") == "auto" and root.is_dir():
        options = {**options, "protocol": _cuhk03_protocol(root, _cuhk_kind(dataset))}
    return options


def read_cuhk03(root: Path, dataset: str, protocol: str = "auto", split: int = 0, num_test_ids: int | None = None,
                 split_file: str | None = None) -> tuple[list[ImageRecord], list[Skipped]]:
    kind = _cuhk_kind(dataset)
    if protocol not in CUHK03_PROTOCOLS:
        raise ValueError(f"{dataset}: protocol must be one of {CUHK03_PROTOCOLS}, got {protocol!r}")
    raw = _find_raw_mat(root)
    images_dir = root / f"images_{kind}"
    config = root / f"cuhk03_new_protocol_config_{kind}.mat"
    if protocol == "auto":
        protocol = _cuhk03_protocol(root, kind)
    if protocol == "folder":
        return _read_cuhk03_folder(root, dataset, kind, num_test_ids, split_file)
    if num_test_ids is not None or split_file is not None:
        raise ValueError(f"{dataset}: num_test_ids and split_file apply to protocol='folder' only")
    if protocol == "classic":
        return _read_cuhk03_classic(root, dataset, kind, raw, images_dir, split)
    return _read_cuhk03_new(root, dataset, kind, raw, images_dir, config)


def _read_cuhk03_classic(root: Path, dataset: str, kind: str, raw: Path | None, images_dir: Path,
                         split: int) -> tuple[list[ImageRecord], list[Skipped]]:
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < _CUHK_NUM_SPLITS:
        raise ValueError(f"{dataset}: classic split must be 0-{_CUHK_NUM_SPLITS - 1}, got {split}")
    info = _ensure_cuhk03_images(root, kind, raw, images_dir)
    test_ids = {(int(c), int(p)) for c, p in info["testsets"][split]}
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for name, rel in _image_files(images_dir, root):
        m = _CUHK_IMAGE_NAME.match(_bare_stem(name))
        if m is None:
            skipped.append((rel, "file name does not match <campair>_<pid:03>_<view>_<slot:02>.png"))
            continue
        pair, pid, view = int(m["pair"]), int(m["pid"]), int(m["view"])
        if (pair, pid) in test_ids:
            split_name = "query" if view == 1 else "gallery"
        else:
            split_name = "train"
        records.append(ImageRecord(rel, 1000 * pair + pid, view - 1, split_name, dataset))
    return records, skipped


def _read_cuhk03_new(root: Path, dataset: str, kind: str, raw: Path | None, images_dir: Path,
                     config: Path) -> tuple[list[ImageRecord], list[Skipped]]:
    if not config.is_file():
        raise DatasetLayoutError(f"CUHK03 new-protocol layout not found under {root}: expected {config.name} "
                                 f"(missing)")
    if not images_dir.is_dir() or (raw is not None and not (images_dir / _CUHK_MARKER).is_file()):
        if raw is None:
            raise DatasetLayoutError(
                f"CUHK03 new-protocol layout under {root}: expected images in {images_dir.name}/ or the raw "
                f"{' or '.join(_CUHK_RAW_MAT)} to extract them from (missing: both)")
        _ensure_cuhk03_images(root, kind, raw, images_dir)
    from scipy.io import loadmat

    try:
        mat = loadmat(str(config))
    except Exception as e:  # noqa: BLE001 - any parse failure is a layout problem of this file
        raise DatasetLayoutError(f"{config}: cannot be read as a MATLAB file ({e})") from e
    need = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist", "camId")
    missing = [k for k in need if k not in mat]
    if missing:
        raise DatasetLayoutError(f"{config}: expected fields {', '.join(need)} (missing: {', '.join(missing)})")
    filelist = [_mat_string(x) for x in np.asarray(mat["filelist"], dtype=object).ravel()]
    labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
    cams = np.asarray(mat["camId"]).ravel().astype(np.int64)
    n = len(filelist)
    if len(labels) != n or len(cams) != n:
        raise DatasetLayoutError(f"{config}: filelist, labels and camId differ in length ({n}, {len(labels)}, "
                                 f"{len(cams)})")
    prefix = _rel(images_dir, root)
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for key, split_name in (("train_idx", "train"), ("query_idx", "query"), ("gallery_idx", "gallery")):
        idx = np.asarray(mat[key]).ravel().astype(np.int64) - 1  # MATLAB 1-based
        bad = idx[(idx < 0) | (idx >= n)]
        if len(bad):
            raise DatasetLayoutError(f"{config}: {key} holds indices outside 1-{n} (e.g. {int(bad[0]) + 1})")
        for i in idx:
            rel = _join(prefix, filelist[i])
            if not os.path.isfile(os.path.join(images_dir, filelist[i])):
                skipped.append((rel, f"listed in {config.name} but not found"))
                continue
            records.append(ImageRecord(rel, int(labels[i]), int(cams[i]) - 1, split_name, dataset))
    return records, skipped


def _mat_string(x: Any) -> str:
    """A string out of a loadmat cell entry (nested object/char arrays)."""
    while isinstance(x, np.ndarray):
        if x.dtype.kind == "U" and x.size == 1:
            return str(x.ravel()[0])
        x = x.ravel()[0]
    return str(x)


def _read_cuhk03_folder(root: Path, dataset: str, kind: str, num_test_ids: int | None,
                        split_file: str | None) -> tuple[list[ImageRecord], list[Skipped]]:
    folder = root / kind
    if not folder.is_dir():
        raise DatasetLayoutError(f"CUHK03 folder layout not found under {root}: expected folder {kind}/ of "
                                 f"PPPP_II.jpg crops (missing: {kind})")
    parsed: list[tuple[str, int, int]] = []
    skipped: list[Skipped] = []
    for name, rel in _image_files(folder, root):
        m = _CUHK_FOLDER_NAME.match(_bare_stem(name))
        if m is None:
            skipped.append((rel, "file name does not match PPPP_II.jpg (identity, image slot 00-09)"))
            continue
        slot = int(m["slot"])
        if slot > 9:
            skipped.append((rel, f"image slot {slot:02d} outside 00-09"))
            continue
        parsed.append((rel, int(m["pid"]), 0 if slot < 5 else 1))
    ids = sorted({pid for _, pid, _ in parsed})
    if len(ids) < 2:
        raise DatasetLayoutError(f"CUHK03 folder layout under {folder}: need images of at least 2 identities to "
                                 f"split into train and test, found {len(ids)}", skipped)
    if split_file is not None:
        test_ids = _read_split_file(Path(split_file), set(ids))
    else:
        k = min(100, len(ids) // 2) if num_test_ids is None else int(num_test_ids)
        if not 0 <= k < len(ids):
            raise ValueError(f"{dataset}: num_test_ids must be in 0-{len(ids) - 1} for the {len(ids)} ids in "
                             f"{folder}, got {k}")
        test_ids = set(ids[len(ids) - k:]) if k else set()
    records = [ImageRecord(rel, pid, cam, ("query" if cam == 0 else "gallery") if pid in test_ids else "train",
                           dataset) for rel, pid, cam in parsed]
    return records, skipped


def _read_split_file(path: Path, ids: set[int]) -> set[int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        train, test = {int(i) for i in data["train"]}, {int(i) for i in data["test"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetLayoutError(f"{path}: expected a JSON object {{\"train\": [pids], \"test\": [pids]}} ({e})") from e
    problems = []
    if train & test:
        problems.append(f"ids in both train and test: {sorted(train & test)[:10]}")
    if (train | test) - ids:
        problems.append(f"ids not in the folder: {sorted((train | test) - ids)[:10]}")
    if ids - (train | test):
        problems.append(f"folder ids in neither list: {sorted(ids - (train | test))[:10]}")
    if problems:
        raise DatasetLayoutError(f"{path}: " + "; ".join(problems))
    return test


# ---- extraction of cuhk-03.mat (HDF5)


def _open_hdf5(path: Path):
    try:
        import h5py
    except ImportError as e:
        raise DatasetLayoutError(
            f"{path} is a MATLAB v7.3 (HDF5) file and reading it needs the h5py package: pip install h5py") from e
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetLayoutError(f"{path}: cannot be opened as a MATLAB v7.3 (HDF5) file ({e})") from e


def _ensure_cuhk03_images(root: Path, kind: str, raw: Path | None, images_dir: Path) -> dict:
    """The extraction marker of `images_dir` (extracting the images from `raw` first when it is missing)."""
    marker = images_dir / _CUHK_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            if info.get("kind") == kind and len(info["testsets"]) == _CUHK_NUM_SPLITS:
                return info
        except (ValueError, KeyError, TypeError):
            pass  # a damaged marker: extract again (existing images are kept)
    if raw is None:
        raise DatasetLayoutError(
            f"CUHK03 classic layout not found under {root}: expected {' or '.join(_CUHK_RAW_MAT)} (missing), "
            f"or images extracted from it in {images_dir.name}/ with its {_CUHK_MARKER} marker")
    with _open_hdf5(raw) as f:
        return extract_cuhk03(f, kind, images_dir, source=str(raw))


def _deref(f: Any, ref: Any) -> np.ndarray:
    """MATLAB arrays come out of HDF5 transposed: undo it."""
    return np.asarray(f[ref][()]).T


def extract_cuhk03(f: Mapping | Any, kind: str, images_dir: Path, source: str = "", progress: bool = True) -> dict:
    """Extract the `kind` ("labeled"/"detected") images of an opened cuhk-03.mat (an h5py.File) into
    `images_dir` as `<campair>_<pid:03>_<view>_<slot:02>.png`, resumably (existing files are kept) and
    atomically (each PNG, then the `.complete` marker holding the 20 test sets). Returns the marker's content."""
    from PIL import Image

    if kind not in ("labeled", "detected"):
        raise ValueError(f"kind must be 'labeled' or 'detected', got {kind!r}")
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    pairs = np.asarray(f[kind][()]).ravel()
    jobs: list[tuple[Any, str]] = []
    for pair_index, pair_ref in enumerate(pairs, 1):
        cells = _deref(f, pair_ref)  # (num ids, 10)
        for pid_index in range(cells.shape[0]):
            for slot in range(cells.shape[1]):
                name = f"{pair_index}_{pid_index + 1:03d}_{1 if slot < 5 else 2}_{slot + 1:02d}.png"
                jobs.append((cells[pid_index, slot], name))
    count = 0
    iterator: Iterable = jobs
    if progress:
        from rich.progress import track

        iterator = track(jobs, description=f"extracting CUHK03 {kind} images", transient=True)
    for ref, name in iterator:
        target = images_dir / name
        if target.is_file():
            count += 1
            continue
        img = _deref(f, ref)  # (H, W, 3) once transposed; empty cells are tiny 1-D/2-D arrays
        if img.ndim != 3 or img.size == 0:
            continue
        with atomic_path(target) as tmp:
            Image.fromarray(np.ascontiguousarray(img).astype(np.uint8)).save(tmp, format="PNG")
        count += 1
    testsets = []
    for ref in np.asarray(f["testsets"][()]).ravel():
        pairs_ids = _deref(f, ref).reshape(-1, 2)  # rows of (campair, pid), 1-based
        testsets.append([[int(c), int(p)] for c, p in pairs_ids])
    if len(testsets) != _CUHK_NUM_SPLITS:
        raise DatasetLayoutError(f"{source or 'cuhk-03.mat'}: expected {_CUHK_NUM_SPLITS} test sets in 'testsets', "
                                 f"found {len(testsets)}")
    info = {"kind": kind, "source": source, "images": count, "testsets": testsets}
    atomic_write_text(images_dir / _CUHK_MARKER, json.dumps(info))
    return info
