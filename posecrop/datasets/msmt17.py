"""MSMT17 (V1 and V2) from its list files.

msmt17     MSMT17_V1 (`train/`, `test/`) or MSMT17_V2 (`mask_train_v2/`, `mask_test_v2/`) with the list files
           `list_train.txt`, `list_val.txt` (merged into train, as is common; option include_val), `list_query.txt`,
           `list_gallery.txt`; each line is `<pid folder>/<name>.jpg <pid>`, relative to the train (train/val lists)
           or test (query/gallery lists) folder. Names look like `0000_000_01_0303morning_0015_0.jpg`: fields
           `<pid>_<index>_<camera>_<date+time>_...`; the 3rd field is the camera 1-15, camid = camera - 1. The
           pid is the list's second column and must equal the name's first field. Test pids are numbered
           separately from train pids (as in the release). Parent root: a single `MSMT17*` folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..records import SPLITS, ImageRecord
from .common import DatasetLayoutError, Skipped, _bare_stem, _join, _listing, _locate, _rel

_MSMT_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
_MSMT_NUM_CAMERAS = 15


def read_msmt17(root: Path, dataset: str = "msmt17", include_val: bool = True,
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
