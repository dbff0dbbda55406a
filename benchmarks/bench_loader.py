"""Benchmark of the training data loader: the Parquet crop cache vs a torchreid-style loader of JPEG files.

Data: a real crop cache - synthetic 64x128 Market-layout images with OpenPose JSON through `run_crop` (crops
384x192 + 4x 96x192, JPEG q95) - and the same stored crops written out as one JPEG file per crop.

ours         reidtrain.data as `cli.py train` runs it (crops="recrop", the default): the source image (`whole`)
             and the Eq. 1-2 boxes from Arrow memory, decoded and cut straight at the input sizes with the crop
             stage's own function in the workers; fused augmentation (reidtrain.augment) writing CHW uint8;
             uint8 batches; channel-mean normalisation of the batch in the main process.
ours_stored  the same loader with crops="stored": the five stored JPEG crops decoded with OpenCV.
ref          a torchreid-style loader: the five crops as JPEG files, each opened and decoded with PIL in
             `__getitem__`, augmented per image with the library's transforms (albumentations, as torchreid
             composes torchvision's), turned into float tensors normalised per image in the worker (ToTensor +
             Normalize), default collate of float batches.
ref_fused    the reference given our fused augmentation: isolates what the cache and uint8 batches give.
All sides: the same samples, DataLoader workers, batch size, shuffling and augmentation semantics (flip shared by
the five crops, padding-crop, random erasing), the paper's sizes; glibc malloc tuned as `cli.py train` does,
before the workers fork (so for every side). Timing starts after the first batch (worker start-up excluded), over
`epochs` passes; the sides alternate and the best pass counts. samples/s, a sample = the five crops of one
image. Target: ours / ref >= 3.
"""
from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BODY, PART = (384, 192), (96, 192)
SIZES = {"body": BODY, "head": PART, "upper_body": PART, "upper_leg": PART, "lower_leg": PART}


def make_data(root: Path, n: int) -> tuple[Path, Path, int]:
    """A real crop cache and the same crops as files: the synthetic Market-layout dataset (64x128 sources with
    OpenPose JSON, benchmarks.bench_crop.make_dataset) through `run_crop` (crops 384x192 + 4x 96x192, JPEG q95),
    then every stored train crop written as its own JPEG file (the bytes the cache holds) for the reference.
    Returns (cache, files, number of train samples: at least n)."""
    from benchmarks.bench_crop import make_dataset
    from posecrop.cache_reader import read_split
    from posecrop.crop_stage import CropConfig, run_crop

    data, cache, files = root / "market", root / "cache", root / "files"
    make_dataset(data, 3 * n)   # about a third of the images are train images
    run_crop(CropConfig(dataset="market", root=data, out=cache, workers=2, progress=False))
    table = read_split(cache, "train", ["image_id", *SIZES]).sort_by("image_id")
    if table.num_rows < n:
        raise RuntimeError(f"{cache}: only {table.num_rows} train crops, {n} wanted")
    for col in SIZES:
        (files / col).mkdir(parents=True)
        for i, image in enumerate(table.column(col).to_pylist()):
            (files / col / f"{i:06d}.jpg").write_bytes(image["bytes"])
    return cache, files, table.num_rows


class TorchreidTransform:
    """The reference's augmentation, per image with the library's transforms as torchreid composes torchvision's:
    one HorizontalFlip decision for the five crops (a Compose with the parts as additional targets), then per
    crop PadIfNeeded (zero) -> RandomCrop -> Erasing(fill="random"), each an albumentations call on an HxWx3
    image - the semantics `reidtrain.augment` fuses into one copy per crop."""

    def __init__(self, sizes: dict[str, tuple[int, int]], pad: int = 10, erasing: float = 0.5) -> None:
        import albumentations as A
        import cv2
        keys = list(sizes)
        self.flip = A.Compose([A.HorizontalFlip(p=0.5)], additional_targets={k: "image" for k in keys[1:]},
                              is_check_shapes=False)
        body_h, body_w = sizes["body"]
        self.own = {}
        for key, (h, w) in sizes.items():
            ph, pw = round(pad * h / body_h), round(pad * w / body_w)
            self.own[key] = [A.PadIfNeeded(min_height=h + 2 * ph, min_width=w + 2 * pw,
                                           border_mode=cv2.BORDER_CONSTANT, fill=0),
                             A.RandomCrop(height=h, width=w), A.Erasing(p=erasing, fill="random")]

    def __call__(self, images: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        import random
        rng, py_rng = np.random.default_rng(seed), random.Random(seed)
        keys = list(images)
        self.flip.set_random_state(rng, py_rng)
        res = self.flip(image=images[keys[0]], **{k: images[k] for k in keys[1:]})
        out = {keys[0]: res["image"], **{k: res[k] for k in keys[1:]}}
        for key in keys:
            for transform in self.own[key]:
                transform.set_random_state(rng, py_rng)
                out[key] = transform(image=out[key])["image"]
        return out


class FileCropDataset:
    """torchreid-style: five JPEG files per sample opened with PIL, float tensors normalised per image.

    `transform` gives HxWx3 images (`TorchreidTransform`) or, with `chw=True`, 3xHxW ones (our
    `SampleTransform`, for the strong-reference row)."""

    def __init__(self, files: Path, n: int, labels: np.ndarray, transform, chw: bool = False) -> None:
        self.files, self.n, self.labels, self.transform, self.chw = files, n, labels, transform, chw
        shape = (3, 1, 1) if chw else (1, 1, 3)
        self.mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(shape)
        self.std = np.array([0.229, 0.224, 0.225], np.float32).reshape(shape)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        import torch
        from PIL import Image
        index, seed = item
        images = {k: np.asarray(Image.open(self.files / k / f"{index:06d}.jpg").convert("RGB")) for k in SIZES}
        images = self.transform(images, seed)
        tensors = {}
        for k, v in images.items():
            v = (v.astype(np.float32) / 255.0 - self.mean) / self.std
            tensors[k] = torch.from_numpy(v if self.chw else v.transpose(2, 0, 1).copy())
        return {"inputs": tensors, "label": int(self.labels[index])}


def _time_loader(loader, epochs: int, sampler, consume) -> float:
    """Samples/s of the best of `epochs` passes, timed from the first batch on."""
    best = 0.0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        it = iter(loader)
        consume(next(it))
        t0, count = time.perf_counter(), 0
        for batch in it:
            consume(batch)
            count += len(batch["label"])
        best = max(best, count / max(time.perf_counter() - t0, 1e-9))
    return best


SIDES = {
    "ours": "Parquet cache loader (reidtrain.data, crops='recrop': the five crops cut from the cached source "
            "image and boxes)",
    "ours_stored": "Parquet cache loader (reidtrain.data, crops='stored': the stored JPEG crops decoded)",
    "ref": "torchreid-style loader (one JPEG file per crop, PIL, albumentations per image, float tensors per image)",
    "ref_fused": "the torchreid-style loader given our fused augmentation (reidtrain.augment)",
}
ROWS = (("ours", "ref", ">= 3", ""),
        ("ours_stored", "ref", "", "the same loader decoding the stored crops; "),
        ("ours_stored", "ref_fused", "", "what the cache format and uint8 batches alone give: the same crops and the "
                                         "same augmentation code on both sides; "))


def run(quick: bool = True, sides: tuple[str, ...] = tuple(SIDES)) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader

    from reidtrain.allocator import keep_freed_memory
    from reidtrain.config import AugmentConfig
    from reidtrain.data import (EpochSampler, ReidDataset, SampleTransform, input_columns, load_split, make_loader,
                                normalize_inputs, relabel)

    torch.set_num_threads(1)
    # as `cli.py train` does; set before any worker forks, so the reference's workers inherit it too
    tuned = keep_freed_memory()
    n, workers, batch, epochs = (192, 2, 32, 2) if quick else (1024, 4, 32, 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        cache, files, n = make_data(tmp, n)
        augment = AugmentConfig()
        splits = {mode: load_split(cache, "train", input_columns("intra-inter"), mode) for mode in ("recrop", "stored")}
        labels, _ = relabel(splits["stored"].pids)
        datasets = {
            "ours": ReidDataset(splits["recrop"], SampleTransform(SIZES, augment), labels),
            "ours_stored": ReidDataset(splits["stored"], SampleTransform(SIZES, augment), labels),
            "ref": FileCropDataset(files, n, labels, TorchreidTransform(SIZES, augment.pad, augment.erasing)),
            "ref_fused": FileCropDataset(files, n, labels, SampleTransform(SIZES, augment), chw=True)}
        samplers = {side: EpochSampler(labels, batch, seed=0) for side in sides}
        loaders = {side: (make_loader(datasets[side], batch, workers, samplers[side], train=True)
                          if side.startswith("ours") else
                          DataLoader(datasets[side], batch_size=batch, sampler=samplers[side], num_workers=workers,
                                     drop_last=True, persistent_workers=True))
                   for side in sides}

        def consume_ours(b):
            normalize_inputs(b["inputs"], "channel-mean")

        def consume_ref(b):
            for v in b["inputs"].values():
                v.sum()

        results = dict.fromkeys(sides, 0.0)
        for _ in range(2):  # alternate the sides; the best pass of each counts
            for side in sides:
                consume = consume_ours if side.startswith("ours") else consume_ref
                results[side] = max(results[side], _time_loader(loaders[side], epochs, samplers[side], consume))
        del loaders
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + \
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    setting = (f"{n} samples (synthetic 64x128 Market-layout sources through run_crop), {workers} workers, batch "
               f"{batch}, body 384x192 + 4 parts 96x192, same augmentation (flip shared by the crops, pad 10, "
               f"erasing 0.5); best of {2 * epochs} passes per side after the first batch; glibc malloc thresholds "
               f"raised for all sides: {tuned}; all sides (samples/s): "
               + ", ".join(f"{side} {results[side]:.0f}" for side in sides))
    rows = []
    for ours, ref, target, note in ROWS:
        if ours in sides and ref in sides:
            rows.append({"stage": "loader", "ours": SIDES[ours], "ours_value": round(results[ours], 1),
                         "reference": SIDES[ref], "reference_value": round(results[ref], 1),
                         "unit": "samples/s (5 crops each)",
                         "ratio": round(results[ours] / max(results[ref], 1e-9), 2), "target": target,
                         "peak_mem_mb": round(peak, 1), "notes": f"higher is better; {note}{setting}"})
    return rows


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
