"""Dataset records: what a dataset reader yields for every image."""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "query", "gallery")  # the splits of a dataset and the split folders of a cache


@dataclass(frozen=True)
class ImageRecord:
    """One image of a ReID dataset.

    path: POSIX path relative to the dataset root (unique within a dataset; becomes the cache's image_id).
    pid: the dataset's own identity number (Market distractors are 0, kept in the gallery). Training code
         relabels train pids to 0..q-1 itself; records keep the original ids.
    camid: camera index, 0-based.
    split: one of SPLITS.
    dataset: the dataset's name (market, duke, cuhk03-labeled, ...).
    """

    path: str
    pid: int
    camid: int
    split: str
    dataset: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"{self.path}: split must be one of {SPLITS}, got {self.split!r}")
