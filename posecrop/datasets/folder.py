"""The generic layout: root/{train,query,gallery}/<pid>/<image>.

folder     generic: `root/{train,query,gallery}/<pid>/<image>` (.jpg/.jpeg/.png). pid = the folder name (an
           integer >= 0); camera from a `c<N>` token in the file name (1-based, camid = N - 1), else camid 0.
           Either `train`, or `query` and `gallery`, or all three must exist.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..records import SPLITS, ImageRecord
from .common import IMAGE_EXTENSIONS, DatasetLayoutError, Skipped, _bare_stem, _image_files

_CAMERA_TOKEN = re.compile(r"(?<![A-Za-z0-9])c(\d+)")


def read_folder(root: Path, dataset: str = "folder") -> tuple[list[ImageRecord], list[Skipped]]:
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
