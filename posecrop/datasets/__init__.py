"""Dataset readers: turn a ReID dataset folder into `ImageRecord`s with the official split conventions.

`read_dataset(name, root, **options)` returns the records; `scan_dataset(name, root, **options)` also returns the
files it could not use as `(path, reason)` pairs, so the crop stage can report them and go on. With
`strict=True` (the default of `read_dataset`) unusable files raise one `DatasetLayoutError` listing them.

Every `ImageRecord.path` is relative to the `root` that was passed in (so `Path(root) / record.path` opens the
image), POSIX-style, even when `root` is a parent folder holding the dataset folder.

One module per dataset (its docstring states the layout and the protocol), registered below with
`register_dataset(name, reader)`; `dataset_names()` lists them (the CLI's --dataset choices). Adding a dataset:
a module with its reader (see posecrop.datasets.registry for the reader's signature) and one registration here.

    market          Market-1501                                 posecrop.datasets.market
    duke            DukeMTMC-reID                               posecrop.datasets.duke
    cuhk03-labeled  CUHK03, labeled / detected boxes;           posecrop.datasets.cuhk03
    cuhk03-detected   classic, new (767/700) or folder protocol
    msmt17          MSMT17 V1 / V2                              posecrop.datasets.msmt17
    cuhk01          CUHK01 (campus)                             posecrop.datasets.cuhk01
    folder          root/{train,query,gallery}/<pid>/<image>    posecrop.datasets.folder
"""
from __future__ import annotations

from . import cuhk01, cuhk03, duke, folder, market, msmt17
from .common import EXCLUDED, IMAGE_EXTENSIONS, DatasetLayoutError, Skipped
from .registry import (dataset_names, dataset_options, read_dataset, register_dataset, resolve_dataset_options,
                       scan_dataset, scan_dataset_all)

register_dataset("market", market.read_market)
register_dataset("duke", duke.read_duke)
register_dataset("cuhk03-labeled", cuhk03.read_cuhk03, resolve=cuhk03.resolve_options)
register_dataset("cuhk03-detected", cuhk03.read_cuhk03, resolve=cuhk03.resolve_options)
register_dataset("msmt17", msmt17.read_msmt17)
register_dataset("cuhk01", cuhk01.read_cuhk01, resolve=cuhk01.resolve_options)
register_dataset("folder", folder.read_folder)

__all__ = ["EXCLUDED", "IMAGE_EXTENSIONS", "DatasetLayoutError", "Skipped", "dataset_names", "dataset_options",
           "read_dataset", "register_dataset", "resolve_dataset_options", "scan_dataset", "scan_dataset_all"]
