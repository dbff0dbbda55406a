"""Dataset readers: turn a ReID dataset folder into `ImageRecord`s with the official split conventions.

`read_dataset(name, root, **options)` returns the records; `scan_dataset(name, root, **options)` also returns the
files it could not use as `(path, reason)` pairs, so the crop stage can report them and go on. With
`strict=True` (the default of `read_dataset`) unusable files raise one `DatasetLayoutError` listing them.

Every `ImageRecord.path` is relative to the `root` that was passed in (so `Path(root) / record.path` opens the
image), POSIX-style, even when `root` is a parent folder holding the dataset folder.

Datasets and their conventions
------------------------------
market     Market-1501. `bounding_box_train` -> train, `query` -> query, `bounding_box_test` -> gallery.
           Names `PPPP_cCsS_FFFFFF_BB.jpg` (person, camera 1-6, sequence, frame, box). Junk (pid -1) is dropped,
           distractors (pid 0000) are kept. camid = C - 1. `root` is the folder holding the three folders or a
           parent holding exactly one `Market-1501*` folder. `gt_bbox`/`gt_query` and non-image files are ignored.
           The release names 18 bounding_box_test files `*.jpg.jpg` (e.g. 1488_c5s3_071737_01.jpg.jpg): they are
           read like the others (the pose-gan CSV lists them under the same double-extension names).
duke       DukeMTMC-reID: same folders, names `PPPP_cC_fFFFFFFF.jpg`, cameras 1-8 (parent: `DukeMTMC-reID*`).
msmt17     MSMT17_V1 (`train/`, `test/`) or MSMT17_V2 (`mask_train_v2/`, `mask_test_v2/`) with the list files
           `list_train.txt`, `list_val.txt` (merged into train, as is common; option include_val), `list_query.txt`,
           `list_gallery.txt`; each line is `<pid folder>/<name>.jpg <pid>`, relative to the train (train/val lists)
           or test (query/gallery lists) folder. Names look like `0000_000_01_0303morning_0015_0.jpg`: fields
           `<pid>_<index>_<camera>_<date+time>_...`; the 3rd field is the camera 1-15, camid = camera - 1. The
           pid is the list's second column and must equal the name's first field. Test pids are numbered
           separately from train pids (as in the release). Parent root: a single `MSMT17*` folder.
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
cuhk01     CUHK01 (campus): `root/campus/PPPPIII.png` (or a flat folder of them, or a parent holding a single
           `CUHK01*` folder with campus/), PPPP = identity (0001-0971), III = image 001-004: 001-002 camera A
           (camid 0), 003-004 camera B (camid 1). Identities are numbered 1..N and each must have all four
           images: a missing image (or identity) is a DatasetLayoutError naming the identities and files, also
           with strict=False (a split of incomplete identities would not be the published protocol). Options
           `num_test_ids` (default 486: the 485/486 protocol; 100: the 871/100 protocol) and `split` (default
           0): the test ids are the first `num_test_ids` of `np.random.default_rng(split).permutation(ids)`
           (ids sorted ascending first), the others train. Other names (and a second file for one image) are
           skipped files, reported like every reader's.
           Train = all four images of the train ids; query = the camera-A images of the test ids, gallery =
           their camera-B images (both images of each view: single-shot or multi-shot is the evaluation's
           choice, reidtrain.metrics.evaluate_single_shot / evaluate_market).
folder     generic: `root/{train,query,gallery}/<pid>/<image>` (.jpg/.jpeg/.png). pid = the folder name (an
           integer >= 0); camera from a `c<N>` token in the file name (1-based, camid = N - 1), else camid 0.
           Either `train`, or `query` and `gallery`, or all three must exist.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from reidkit.atomic import atomic_path, atomic_write_text
from reidkit.errors import ReidError
from reidkit.typedconfig import ConfigError

from .records import ImageRecord
from .schema import SPLITS

DATASET_NAMES: tuple[str, ...] = ("market", "duke", "cuhk03-labeled", "cuhk03-detected", "msmt17", "cuhk01",
                                   "folder")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
CUHK03_PROTOCOLS: tuple[str, ...] = ("auto", "classic", "new", "folder")

Skipped = tuple[str, str]  # (path relative to root, reason)
_MAX_LISTED = 10


class DatasetLayoutError(ReidError, ValueError):
    """A dataset folder does not have the expected layout, or holds files whose names cannot be parsed.

    `skipped` lists the unusable files as (path, reason) when that is the problem."""

    def __init__(self, message: str, skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(message)
        self.skipped: list[Skipped] = list(skipped)


# --------------------------------------------------------------------------------------------------- public API


EXCLUDED = "excluded by the protocol: "   # reason prefix of files the protocol leaves out (Market junk, pid -1)


def scan_dataset(name: str, root: str | os.PathLike, **options: Any) -> tuple[list[ImageRecord], list[Skipped]]:
    """Read a dataset; return (records, skipped) where skipped lists (path, reason) of files that were not used
    (unparseable names, listed-but-missing files). Junk images (Market pid -1) are dropped by protocol, not listed
    (scan_dataset_all lists them too)."""
    records, skipped, _ = scan_dataset_all(name, root, **options)
    return records, skipped


def scan_dataset_all(name: str, root: str | os.PathLike, **options: Any
                     ) -> tuple[list[ImageRecord], list[Skipped], list[Skipped]]:
    """scan_dataset plus the files the protocol excludes, as (path, reason): (records, skipped, excluded)."""
    reader = _READERS.get(name)
    if reader is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "dataset")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(accepted) or 'none'}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{name} dataset root {root} does not exist or is not a folder")
    records, listed = reader(root, dataset=name, **options)
    order = {s: i for i, s in enumerate(SPLITS)}
    records.sort(key=lambda r: (order[r.split], r.path))
    skipped = sorted(s for s in listed if not s[1].startswith(EXCLUDED))
    return records, skipped, sorted(s for s in listed if s[1].startswith(EXCLUDED))


def resolve_dataset_options(name: str, root: str | os.PathLike, options: dict[str, Any]) -> dict[str, Any]:
    """The options as the reader will apply them, "auto" choices made (CUHK03 protocol="auto" -> the protocol
    this folder's files select), so that a cache records - and a resumed run compares - what was actually read."""
    resolved = dict(options)
    if name == "cuhk01":  # the defaults written out: the split is defined by (num_test_ids, split)
        resolved = {**dataset_options(name), **resolved}
    if name.startswith("cuhk03") and resolved.get("protocol", "auto") == "auto" and Path(root).is_dir():
        resolved["protocol"] = _cuhk03_protocol(Path(root), _cuhk_kind(name))
    return resolved


def read_dataset(name: str, root: str | os.PathLike, *, strict: bool = True, **options: Any) -> list[ImageRecord]:
    """Read a dataset into ImageRecords (train, then query, then gallery; sorted by path within a split).

    strict=True: unparseable or missing files raise one DatasetLayoutError listing them (with `.skipped`);
    strict=False: they are left out (use `scan_dataset` to get them)."""
    records, skipped = scan_dataset(name, root, **options)
    if skipped and strict:
        raise DatasetLayoutError(
            f"{name} dataset under {root}: {len(skipped)} file(s) could not be used:\n"
            + _listing(skipped)
            + "\n(read with strict=False, or use scan_dataset, to skip them)",
            skipped,
        )
    return records


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset reader accepts, with their defaults."""
    reader = _READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return {p.name: p.default for p in inspect.signature(reader).parameters.values() if p.name not in ("root", "dataset")}


# --------------------------------------------------------------------------------------------------- helpers


def _listing(skipped: list[Skipped]) -> str:
    lines = [f"  {path}: {reason}" for path, reason in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - _MAX_LISTED} more")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _join(prefix: str, name: str) -> str:
    return name if prefix in ("", ".") else f"{prefix}/{name}"


def _image_files(folder: Path, root: Path) -> list[tuple[str, str]]:
    """(name, path relative to root) of the image files directly inside `folder`, sorted by name. Hidden files
    (atomic-write temporaries among them) and other extensions are ignored; broken symbolic links are kept (so
    that reading them fails and is reported). Strings, not Paths: Market has 36k."""
    prefix = _rel(folder, root)
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if not e.name.startswith(".")
                       and (e.is_file() or (e.is_symlink() and not e.is_dir()))
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [(name, _join(prefix, name)) for name in names]


def _bare_stem(name: str) -> str:
    """The file name without its image extension(s): Market-1501 ships 18 `*.jpg.jpg` gallery files."""
    stem, ext = os.path.splitext(name)
    while ext.lower() in IMAGE_EXTENSIONS:
        name = stem
        stem, ext = os.path.splitext(name)
    return name


def _locate(root: Path, required: list[str], prefix: str, title: str, what: str = "folders") -> Path:
    """The folder holding all `required` entries: `root` itself, or the single `prefix*` folder inside it."""
    missing = [r for r in required if not (root / r).exists()]
    if not missing:
        return root
    candidates = sorted(c for c in root.iterdir() if c.is_dir() and c.name.lower().startswith(prefix.lower()))
    if len(candidates) == 1:
        inner = candidates[0]
        inner_missing = [r for r in required if not (inner / r).exists()]
        if not inner_missing:
            return inner
        raise DatasetLayoutError(
            f"{title} layout not found under {inner}: expected {what} {', '.join(required)} "
            f"(missing: {', '.join(inner_missing)})")
    if len(candidates) > 1:
        raise DatasetLayoutError(
            f"{title} layout is ambiguous under {root}: several {prefix}* folders "
            f"({', '.join(c.name for c in candidates)}); pass one of them as the root")
    raise DatasetLayoutError(
        f"{title} layout not found under {root}: expected {what} {', '.join(required)} "
        f"(missing: {', '.join(missing)}), or a single {prefix}* folder holding them")


# --------------------------------------------------------------------------------------------------- Market / Duke


@dataclass(frozen=True)
class _BoxDataset:
    title: str
    prefix: str
    pattern: re.Pattern
    name_format: str
    num_cameras: int


_MARKET = _BoxDataset("Market-1501", "Market-1501",
                      re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)s(?P<seq>\d+)_(?P<frame>\d+)_(?P<box>\d+)$"),
                      "PPPP_cCsS_FFFFFF_BB.jpg", 6)
_DUKE = _BoxDataset("DukeMTMC-reID", "DukeMTMC-reID",
                    re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)_f(?P<frame>\d+)$"),
                    "PPPP_cC_fFFFFFFF.jpg", 8)
_BOX_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _read_box_dataset(spec: _BoxDataset, root: Path, dataset: str) -> tuple[list[ImageRecord], list[Skipped]]:
    base = _locate(root, list(_BOX_FOLDERS.values()), spec.prefix, spec.title)
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for split, folder in _BOX_FOLDERS.items():
        files = _image_files(base / folder, root)
        if not files:
            raise DatasetLayoutError(f"{spec.title} layout under {base}: folder {folder} holds no images "
                                     f"({', '.join(IMAGE_EXTENSIONS)})")
        before = len(skipped)
        for name, rel in files:
            m = spec.pattern.match(_bare_stem(name))
            if m is None:
                skipped.append((rel, f"file name does not match {spec.name_format}"))
                continue
            pid, cam = int(m["pid"]), int(m["cam"])
            if not 1 <= cam <= spec.num_cameras:
                skipped.append((rel, f"camera c{cam} outside c1-c{spec.num_cameras}"))
                continue
            if pid == -1:  # junk boxes: excluded by the protocol (counted, see scan_dataset_all)
                skipped.append((rel, EXCLUDED + "junk image (pid -1)"))
                continue
            records.append(ImageRecord(rel, pid, cam - 1, split, dataset))
        if sum(not r.startswith(EXCLUDED) for _, r in skipped[before:]) == len(files):  # nothing usable: a broken
            # split (or the wrong --dataset)
            raise DatasetLayoutError(
                f"{spec.title} layout under {base}: none of the {len(files)} images in folder {folder} can be "
                f"used (expected names like {spec.name_format}; is this another dataset?):\n"
                + _listing(skipped[before:]), skipped[before:])
    return records, skipped


def _read_market(root: Path, dataset: str = "market") -> tuple[list[ImageRecord], list[Skipped]]:
    return _read_box_dataset(_MARKET, root, dataset)


def _read_duke(root: Path, dataset: str = "duke") -> tuple[list[ImageRecord], list[Skipped]]:
    return _read_box_dataset(_DUKE, root, dataset)


# --------------------------------------------------------------------------------------------------- MSMT17

_MSMT_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
_MSMT_NUM_CAMERAS = 15


def _read_msmt17(root: Path, dataset: str = "msmt17", include_val: bool = True,
                 check_files: bool = True) -> tuple[list[ImageRecord], list[Skipped]]:
    base = _locate(root, list(_MSMT_LISTS), "MSMT17", "MSMT17", what="list files")
    dirs = next((d for d in _MSMT_VERSIONS.values() if all((base / x).is_dir() for x in d)), None)
    if dirs is None:
        expected = " or ".join(f"{a}/ and {b}/ ({v})" for v, (a, b) in _MSMT_VERSIONS.items())
        raise DatasetLayoutError(f"MSMT17 layout under {base}: expected image folders {expected}")
    train_dir, test_dir = base / dirs[0], base / dirs[1]
    lists = [("list_train.txt", "train", train_dir), ("list_val.txt", "train", train_dir),
             ("list_query.txt", "query", test_dir), ("list_gallery.txt", "gallery", test_dir)]
    if not include_val:
        lists.pop(1)
    elif not (base / "list_val.txt").is_file():
        lists.pop(1)  # list_val.txt is optional: some copies drop it
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for list_name, split, image_dir in lists:
        list_path = base / list_name
        prefix = _rel(image_dir, root)
        for lineno, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{_rel(list_path, root)}:{lineno}"
            if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
                skipped.append((where, f"expected '<relative path> <pid>', got {line.strip()!r}"))
                continue
            rel = _join(prefix, parts[0])
            pid = int(parts[1])
            fields = _bare_stem(os.path.basename(parts[0])).split("_")
            if len(fields) < 3 or not fields[0].isdigit() or not fields[2].isdigit():
                skipped.append((rel, "file name does not match <pid>_<index>_<camera>_..., e.g. "
                                     "0000_000_01_0303morning_0015_0.jpg"))
                continue
            if int(fields[0]) != pid:
                skipped.append((rel, f"{list_name} gives pid {pid} but the file name starts with {fields[0]}"))
                continue
            cam = int(fields[2])
            if not 1 <= cam <= _MSMT_NUM_CAMERAS:
                skipped.append((rel, f"camera {cam} outside 1-{_MSMT_NUM_CAMERAS}"))
                continue
            if check_files and not os.path.isfile(os.path.join(image_dir, parts[0])):
                skipped.append((rel, f"listed in {list_name} but not found"))
                continue
            records.append(ImageRecord(rel, pid, cam - 1, split, dataset))
    for split in SPLITS:
        if not any(r.split == split for r in records):
            raise DatasetLayoutError(f"MSMT17 layout under {base}: no usable {split} images "
                                     f"({len(skipped)} listed file(s) unusable)" + (
                                         ":\n" + _listing(skipped) if skipped else ""), skipped)
    return records, skipped


# --------------------------------------------------------------------------------------------------- CUHK03

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


def _read_cuhk03(root: Path, dataset: str, protocol: str = "auto", split: int = 0, num_test_ids: int | None = None,
                 split_file: str | None = None) -> tuple[list[ImageRecord], list[Skipped]]:
    kind = _cuhk_kind(dataset)
    if protocol not in CUHK03_PROTOCOLS:
        raise ValueError(f"{dataset}: protocol must be one of {CUHK03_PROTOCOLS}, got {protocol!r}")
    raw = _find_raw_mat(root)
    images_dir = root / f"images_{kind}"
    marker = images_dir / _CUHK_MARKER
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


# --------------------------------------------------------------------------------------------------- CUHK01

_CUHK01_NAME = re.compile(r"^(?P<pid>\d{4})(?P<image>\d{3})$")
_CUHK01_IMAGES = (1, 2, 3, 4)           # 1-2: camera A, 3-4: camera B
_CUHK01_FORMAT = "PPPPIII.png (identity 0001-9999, image 001-004)"


def _cuhk01_folder(root: Path) -> Path:
    """The folder holding the PPPPIII images: root/campus, root itself (flat), or CUHK01*/campus inside root."""
    if (root / "campus").is_dir():
        return root / "campus"
    if _image_files(root, root):
        return root
    candidates = sorted(c for c in root.iterdir() if c.is_dir() and c.name.lower().startswith("cuhk01"))
    if len(candidates) == 1 and (candidates[0] / "campus").is_dir():
        return candidates[0] / "campus"
    raise DatasetLayoutError(f"CUHK01 layout not found under {root}: expected a folder campus/ of PPPPIII.png "
                             f"images, the images themselves, or a single CUHK01* folder holding campus/")


def cuhk01_test_ids(ids: Iterable[int], num_test_ids: int, split: int) -> set[int]:
    """The test identities of CUHK01 split `split`: the first `num_test_ids` of
    np.random.default_rng(split).permutation(sorted ids)."""
    ordered = np.array(sorted(ids), dtype=np.int64)
    return {int(i) for i in np.random.default_rng(split).permutation(ordered)[:num_test_ids]}


def _read_cuhk01(root: Path, dataset: str = "cuhk01", num_test_ids: int = 486,
                 split: int = 0) -> tuple[list[ImageRecord], list[Skipped]]:
    for key, value in (("num_test_ids", num_test_ids), ("split", split)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{dataset}: {key} must be an integer >= 0, got {value!r}")
    folder = _cuhk01_folder(root)
    files = _image_files(folder, root)
    if not files:
        raise DatasetLayoutError(f"CUHK01 layout under {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    skipped: list[Skipped] = []
    images: dict[int, dict[int, str]] = {}
    for name, rel in files:
        m = _CUHK01_NAME.match(_bare_stem(name))
        if m is None:
            skipped.append((rel, f"file name does not match {_CUHK01_FORMAT}"))
            continue
        pid, image = int(m["pid"]), int(m["image"])
        if pid < 1 or image not in _CUHK01_IMAGES:
            skipped.append((rel, f"identity {m['pid']} / image {m['image']} outside 0001-9999 / 001-004"))
            continue
        seen = images.setdefault(pid, {})
        if image in seen:
            skipped.append((rel, f"a second file for identity {pid:04d} image {image:03d} (also {seen[image]})"))
            continue
        seen[image] = rel
    if not images:
        raise DatasetLayoutError(f"CUHK01 layout under {folder}: none of the {len(files)} images can be used "
                                 f"(expected names like {_CUHK01_FORMAT}; is this another dataset?):\n"
                                 + _listing(skipped), skipped)
    # identities are numbered 1..N: a number in that range without images is an identity missing entirely
    incomplete = [(pid, [i for i in _CUHK01_IMAGES if i not in images.get(pid, {})])
                  for pid in range(1, max(images) + 1) if len(images.get(pid, {})) < len(_CUHK01_IMAGES)]
    if incomplete:
        lines = [f"  identity {pid:04d}: missing " + ", ".join(f"{pid:04d}{i:03d}" for i in miss)
                 for pid, miss in incomplete[:_MAX_LISTED]]
        if len(incomplete) > _MAX_LISTED:
            lines.append(f"  ... and {len(incomplete) - _MAX_LISTED} more")
        raise DatasetLayoutError(f"CUHK01 layout under {folder}: {len(incomplete)} of the identities 0001-"
                                 f"{max(images):04d} lack some of their 4 images (001-002 camera A, 003-004 "
                                 f"camera B):\n" + "\n".join(lines), skipped)
    if not 1 <= num_test_ids < len(images):
        raise ValueError(f"{dataset}: num_test_ids must be in 1-{len(images) - 1} for the {len(images)} identities "
                         f"in {folder}, got {num_test_ids}")
    test_ids = cuhk01_test_ids(images, int(num_test_ids), int(split))
    records: list[ImageRecord] = []
    for pid, got in images.items():
        for image, rel in got.items():
            camid = 0 if image <= 2 else 1
            split_name = ("query" if camid == 0 else "gallery") if pid in test_ids else "train"
            records.append(ImageRecord(rel, pid, camid, split_name, dataset))
    return records, skipped


# --------------------------------------------------------------------------------------------------- generic folder

_CAMERA_TOKEN = re.compile(r"(?<![A-Za-z0-9])c(\d+)")


def _read_folder(root: Path, dataset: str = "folder") -> tuple[list[ImageRecord], list[Skipped]]:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present or ("query" in present) != ("gallery" in present):
        missing = [s for s in SPLITS if s not in present]
        raise DatasetLayoutError(
            f"folder dataset layout not found under {root}: expected folders train/<pid>/, query/<pid>/ and "
            f"gallery/<pid>/ (train alone, query with gallery, or all three; missing: {', '.join(missing)})")
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for split in present:
        split_dir = root / split
        with os.scandir(split_dir) as it:
            entries = sorted((e.name, e.is_dir()) for e in it if not e.name.startswith("."))
        for name, is_dir in entries:
            if not is_dir:
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    skipped.append((f"{split}/{name}", "image not inside a <pid> folder"))
                continue
            if not name.isdigit():
                for _, rel in _image_files(split_dir / name, root):
                    skipped.append((rel, f"pid folder {name!r} is not an integer >= 0"))
                continue
            for file_name, rel in _image_files(split_dir / name, root):
                m = _CAMERA_TOKEN.search(_bare_stem(file_name))
                if m is not None and int(m[1]) < 1:
                    skipped.append((rel, f"camera token c{m[1]} is not 1-based"))
                    continue
                records.append(ImageRecord(rel, int(name), int(m[1]) - 1 if m else 0, split, dataset))
    if not records and not skipped:
        raise DatasetLayoutError(f"folder dataset under {root}: no images found in {', '.join(present)}")
    return records, skipped


_READERS: dict[str, Callable[..., tuple[list[ImageRecord], list[Skipped]]]] = {
    "market": _read_market,
    "duke": _read_duke,
    "cuhk03-labeled": _read_cuhk03,
    "cuhk03-detected": _read_cuhk03,
    "msmt17": _read_msmt17,
    "cuhk01": _read_cuhk01,
    "folder": _read_folder,
}
assert tuple(_READERS) == DATASET_NAMES
