"""Benchmark of the ImageNet pre-training loader (reidtrain.imagenet): decode + augmentation, images/s per CPU core,
against a PIL / torchvision-style reference measured in the same run.

Data: a generated ILSVRC2012-layout folder (train/<wnid>/*.JPEG, JPEG q90) of ImageNet-like images - 500x375, the
most common ILSVRC2012 size, with smooth shading, texture and shapes so the files are of ImageNet's size (~100 kB)
- and a few large 1600x1200 images (ILSVRC2012 has some; they are where reduced decoding matters).

ours          reidtrain.imagenet.ImageNetDataset as `cli.py pretrain` runs it: header read first, the
              random-resized-crop box drawn on the image size, JPEGs decoded at 1/2-1/8 size when the box is >= 2x the
              output (PIL draft mode), else OpenCV; one bilinear resize of the box; flip fused into the HWC -> CHW
              copy; uint8 batches (normalised later on the training device).
ours_full     the same without reduced decoding (every image decoded at full size): what draft mode gives.
ref           a torchvision-style pipeline written here: PIL open -> convert("RGB") -> RandomResizedCrop (its
              get_params: 10 tries, log-uniform aspect, fallback centre crop; PIL bilinear resize of the box) ->
              random horizontal flip -> to tensor (float / 255, CHW) -> normalise (ImageNet mean / std), float
              batches. (PIL's resize with a box: crop and resize in one call, a little faster than torchvision's
              crop-then-resize.)
All sides: one process, one thread (torch and OpenCV), a DataLoader without workers (so collate counts), the same
files in the same order, the same output size, scale (0.08, 1) and aspect (3/4, 4/3) relative to the output. The
sides alternate pass by pass, the best pass counts. images/s per core = images / CPU-seconds of the process (robust to
a shared machine); a loader with W workers on W free cores delivers about W x this.
"""
from __future__ import annotations

import math
import random
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

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like RGB picture: smooth colour fields, mid-frequency texture, luminance grain, a few shapes with
    edges; at 500x375 and q90 about 100 kB, as ILSVRC2012 files of that size."""
    import cv2
    low = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.normal(0, 25, (height // 3, width // 3, 3)).astype(np.float32), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    fine = rng.normal(0, 16, (height, width, 1)).astype(np.float32)   # luminance grain, as in photos
    img = np.clip(low.astype(np.float32) + mid + fine, 0, 255).astype(np.uint8)
    for _ in range(6):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(img, centre, int(rng.integers(10, height // 3)), colour, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(img, centre, (centre[0] + int(rng.integers(10, width // 3)),
                                        centre[1] + int(rng.integers(10, height // 3))), colour, -1)
    return img


def make_folder(root: Path, n: int, size: tuple[int, int], classes: int = 4, seed: int = 0) -> Path:
    """ROOT/train/<wnid>/*.JPEG with n images of `size` (width, height), q90."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imagenet_like(rng, *size)).save(folder / f"img_{i:05d}.JPEG", quality=90)
    return root


class ReferenceDataset:
    """torchvision-style: PIL open, RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize."""

    def __init__(self, paths: list[Path], size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        import torch
        self.paths, self.size, self.scale = paths, size, scale
        rel = size[1] / size[0]
        self.log_ratio = (math.log(ratio[0] * rel), math.log(ratio[1] * rel))
        self.ratio = (ratio[0] * rel, ratio[1] * rel)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def get_params(self, rnd: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rnd.uniform(*self.scale)
            aspect = math.exp(rnd.uniform(*self.log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __getitem__(self, item):
        import torch
        from PIL import Image
        index, seed = item
        rnd = random.Random(seed)
        with Image.open(self.paths[index]) as im:
            img = im.convert("RGB")
        top, left, h, w = self.get_params(rnd, *img.size)
        out_h, out_w = self.size
        img = img.resize((out_w, out_h), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rnd.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {"image": (x - self.mean) / self.std, "label": 0}


class _Order:
    """(index, seed) pairs, the same for every side."""

    def __init__(self, n: int) -> None:
        self.items = [(i, 1000 + i) for i in range(n)]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _rate(dataset, order, batch: int) -> float:
    """Images per CPU-second of this process over one pass (CPU time, not wall time: on a machine shared with
    other jobs the wall clock measures the neighbours too; with one thread and no workers, the process's CPU time
    is the one core's work)."""
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=0)
    t0, count = time.process_time(), 0
    for b in loader:
        count += len(b["label"])
    return count / max(time.process_time() - t0, 1e-9)


SIDES = {
    "ours": "reidtrain.imagenet loader (header -> box -> reduced JPEG decoding where the box allows -> one resize -> "
            "flip in the CHW copy; uint8)",
    "ours_full": "the same loader without reduced decoding",
    "ref": "torchvision-style (PIL open -> RandomResizedCrop -> flip -> to tensor -> normalise; float)",
}


def run(quick: bool = True) -> list[dict]:
    import cv2
    import torch

    from reidtrain.imagenet import ImageNetDataset, scan_imagenet

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    n, n_large, passes, batch = (96, 16, 4, 32) if quick else (512, 64, 6, 32)
    tmp = Path(tempfile.mkdtemp(prefix="bench_imagenet_"))
    rows: list[dict] = []
    try:
        sets = {"500x375": make_folder(tmp / "typical", n, (500, 375)),
                "1600x1200": make_folder(tmp / "large", n_large, (1600, 1200), seed=1)}
        sizes = {"500x375": [(224, 224), (384, 192)], "1600x1200": [(224, 224)]}
        kb = {name: np.mean([p.stat().st_size for p in (root / "train").rglob("*.JPEG")]) / 1024
              for name, root in sets.items()}
        for name, root in sets.items():
            images = scan_imagenet(root, need_val=False).train
            paths = [images.path(i) for i in range(len(images))]
            order = _Order(len(images))
            for size in sizes[name]:
                sides = {"ours": ImageNetDataset(images, size, reduced=True),
                         "ours_full": ImageNetDataset(images, size, reduced=False),
                         "ref": ReferenceDataset(paths, size)}
                rate = dict.fromkeys(sides, 0.0)
                for _ in range(passes):   # alternate the sides pass by pass, keep the best
                    for side, ds in sides.items():
                        rate[side] = max(rate[side], _rate(ds, order, batch))
                setting = (f"{len(images)} generated {name} JPEGs (q90, mean {kb[name]:.0f} kB) -> "
                           f"{size[0]}x{size[1]}; "
                           f"one core (process CPU time), DataLoader without workers, batch {batch}, files in the page "
                           f"cache, best of {passes} alternating passes; "
                           f"all sides (img/s): " + ", ".join(f"{k} {v:.0f}" for k, v in rate.items()))
                pairs = [("ours", "ref", "")]
                if name != "500x375":   # a 500x375 image never has a box of 2x the output: no reduction applies
                    pairs.append(("ours", "ours_full", "reduced decoding (PIL draft) on vs off; "))
                for ours, ref, note in pairs:
                    rows.append({"stage": "imagenet_loader", "ours": SIDES[ours], "ours_value": round(rate[ours], 1),
                                 "reference": SIDES[ref], "reference_value": round(rate[ref], 1),
                                 "unit": f"images/s per core ({name} -> {size[0]}x{size[1]})",
                                 "ratio": round(rate[ours] / max(rate[ref], 1e-9), 2), "target": "",
                                 "notes": f"higher is better; {note}{setting}"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for r in rows:
        r["peak_mem_mb"] = round(peak, 1)
    return rows


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more images")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
