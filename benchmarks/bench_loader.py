"""Benchmark of the training data loader: the Parquet crop cache vs a torchreid-style loader of JPEG files.

loader   reidtrain.data (one Parquet cache, JPEG bytes in Arrow memory decoded with OpenCV in the workers, uint8
         batches, channel-mean normalisation of the batch in the main process) - samples/s, higher is
         better; a sample = the five crops of one image
  vs     a torchreid-style loader: the same five crops as individual JPEG files, each opened and decoded with PIL
         in `__getitem__`, turned into float tensors and normalised per image in the worker (ToTensor + Normalize,
         as torchreid's transforms do), default collate of float batches.
Both sides: the same samples, DataLoader workers, batch size, shuffling and the same albumentations
augmentation (flip shared by the five crops, padding-crop, random erasing); the paper's sizes (body 384x192,
parts 96x192, stored and fed at that size). Timing starts after the first batch (worker start-up excluded on
both sides), over `epochs` passes; the sides alternate and the best pass counts. Target: ratio >= 3.
"""
from __future__ import annotations

import io
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


def _image(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A photo-like crop: smooth colour regions, edges and sensor noise (JPEG cost close to real crops)."""
    import cv2
    h, w = hw
    small = rng.integers(0, 256, size=(max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_data(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Write `n` samples twice: a one-split Parquet cache (posecrop schema) and one JPEG file per crop."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from posecrop.schema import IMAGE_COLUMNS, cache_schema

    rng = np.random.default_rng(seed)
    cache, files = root / "cache", root / "files"
    (cache / "train").mkdir(parents=True)
    rows = []
    for i in range(n):
        image_id = f"bounding_box_train/{i // 8:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
        row = {"image_id": image_id, "dataset": "market", "split": "train", "pid": i // 8, "camid": i % 6,
               "width": 64, "height": 128}
        for col in IMAGE_COLUMNS:
            buf = io.BytesIO()
            Image.fromarray(_image(rng, SIZES.get(col, BODY))).save(buf, "JPEG", quality=95)
            data = buf.getvalue()
            row[col] = {"bytes": data, "path": f"{col}/{Path(image_id).name}"}
            if col in SIZES:
                path = files / col / f"{i:06d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=cache_schema({"dataset": "market"})),
                   cache / "train" / "part-000of001-000000.parquet")
    return cache, files


class FileCropDataset:
    """torchreid-style: five JPEG files per sample opened with PIL, float tensors normalised per image."""

    def __init__(self, files: Path, n: int, labels: np.ndarray, transform) -> None:
        self.files, self.n, self.labels, self.transform = files, n, labels, transform
        self.mean = np.array([0.485, 0.456, 0.406], np.float32)
        self.std = np.array([0.229, 0.224, 0.225], np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        import torch
        from PIL import Image
        index, seed = item
        images = {k: np.asarray(Image.open(self.files / k / f"{index:06d}.jpg").convert("RGB")) for k in SIZES}
        images = self.transform(images, seed)
        tensors = {k: torch.from_numpy(((v.astype(np.float32) / 255.0 - self.mean) / self.std)
                                       .transpose(2, 0, 1).copy()) for k, v in images.items()}
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


def run(quick: bool = True) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader

    from reidtrain.config import AugmentConfig
    from reidtrain.data import (EpochSampler, ReidDataset, SampleTransform, input_columns, load_split, make_loader,
                                normalize_inputs, relabel)

    torch.set_num_threads(1)
    n, workers, batch, epochs = (192, 2, 32, 2) if quick else (1024, 4, 32, 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        cache, files = make_data(tmp, n)
        transform = SampleTransform(SIZES, AugmentConfig())
        split = load_split(cache, "train", input_columns("intra-inter"))
        labels, _ = relabel(split.pids)
        ours_ds = ReidDataset(split, transform, labels)
        ref_ds = FileCropDataset(files, n, labels, transform)
        ours_sampler = EpochSampler(labels, batch, seed=0)
        ref_sampler = EpochSampler(labels, batch, seed=0)
        ours = make_loader(ours_ds, batch, workers, ours_sampler, train=True)
        ref = DataLoader(ref_ds, batch_size=batch, sampler=ref_sampler, num_workers=workers, drop_last=True,
                         persistent_workers=True)

        def consume_ours(b):
            normalize_inputs(b["inputs"], "channel-mean")

        def consume_ref(b):
            for v in b["inputs"].values():
                v.sum()

        results = {"ours": 0.0, "ref": 0.0}
        for _ in range(2):  # alternate the sides; the best pass of each counts
            results["ours"] = max(results["ours"], _time_loader(ours, epochs, ours_sampler, consume_ours))
            results["ref"] = max(results["ref"], _time_loader(ref, epochs, ref_sampler, consume_ref))
        del ours, ref
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + \
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return [{"stage": "loader", "ours": "Parquet cache loader (reidtrain.data)",
             "ours_value": round(results["ours"], 1),
             "reference": "torchreid-style loader (one JPEG file per crop, PIL, float tensors per image)",
             "reference_value": round(results["ref"], 1), "unit": "samples/s (5 crops each)",
             "ratio": round(results["ours"] / max(results["ref"], 1e-9), 2), "target": ">= 3",
             "peak_mem_mb": round(peak, 1),
             "notes": f"higher is better; {n} samples, {workers} workers, batch {batch}, body 384x192 + 4 parts "
                      f"96x192, same augmentation (flip shared by the crops, pad 10, erasing 0.5); best of "
                      f"{2 * epochs} passes per side after the first batch"}]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
