"""CUHK01 (campus): 971 identities, two images per camera, seeded test-identity splits.

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
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..records import ImageRecord
from .common import _MAX_LISTED, IMAGE_EXTENSIONS, DatasetLayoutError, Skipped, _bare_stem, _image_files, _listing

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


def read_cuhk01(root: Path, dataset: str = "cuhk01", num_test_ids: int = 486,
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


def resolve_options(root: Path, dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """The defaults written out: the split is defined by (num_test_ids, split)."""
    defaults = {p.name: p.default for p in inspect.signature(read_cuhk01).parameters.values()
                if p.name not in ("root", "dataset")}
    return {**defaults, **options}
