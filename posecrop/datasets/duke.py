"""DukeMTMC-reID: the Market-1501 folders with its own file names and 8 cameras.

duke       DukeMTMC-reID: same folders, names `PPPP_cC_fFFFFFFF.jpg`, cameras 1-8 (parent: `DukeMTMC-reID*`).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..records import ImageRecord
from .common import Skipped
from .market import BoxDataset, read_box_dataset

DUKE = BoxDataset("DukeMTMC-reID", "DukeMTMC-reID",
                    re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)_f(?P<frame>\d+)$"),
                    "PPPP_cC_fFFFFFFF.jpg", 8)


def read_duke(root: Path, dataset: str = "duke") -> tuple[list[ImageRecord], list[Skipped]]:
    return read_box_dataset(DUKE, root, dataset)
