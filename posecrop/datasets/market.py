"""Market-1501 (and the folder layout DukeMTMC-reID shares with it: BoxDataset, read_box_dataset).

market     Market-1501. `bounding_box_train` -> train, `query` -> query, `bounding_box_test` -> gallery.
           Names `PPPP_cCsS_FFFFFF_BB.jpg` (person, camera 1-6, sequence, frame, box). Junk (pid -1) is dropped,
           distractors (pid 0000) are kept. camid = C - 1. `root` is the folder holding the three folders or a
           parent holding exactly one `Market-1501*` folder. `gt_bbox`/`gt_query` and non-image files are ignored.
           The release names 18 bounding_box_test files `*.jpg.jpg` (e.g. 1488_c5s3_071737_01.jpg.jpg): they are
           read like the others (the pose-gan CSV lists them under the same double-extension names).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..records import ImageRecord
from .common import EXCLUDED, IMAGE_EXTENSIONS, DatasetLayoutError, Skipped, _bare_stem, _image_files, _listing, _locate


@dataclass(frozen=True)
class BoxDataset:
    title: str
    prefix: str
    pattern: re.Pattern
    name_format: str
    num_cameras: int


_MARKET = BoxDataset("Market-1501", "Market-1501",
                      re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)s(?P<seq>\d+)_(?P<frame>\d+)_(?P<box>\d+)$"),
                      "PPPP_cCsS_FFFFFF_BB.jpg", 6)
BOX_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def read_box_dataset(spec: BoxDataset, root: Path, dataset: str) -> tuple[list[ImageRecord], list[Skipped]]:
    base = _locate(root, list(BOX_FOLDERS.values()), spec.prefix, spec.title)
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    for split, folder in BOX_FOLDERS.items():
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


def read_market(root: Path, dataset: str = "market") -> tuple[list[ImageRecord], list[Skipped]]:
    return read_box_dataset(_MARKET, root, dataset)
