"""ILSVRC2012 (ImageNet) classification folders for `cli.py pretrain`: the layout reader and the image loader.

Layout (`scan_imagenet(root)`):

    ROOT/train/<wnid>/*.JPEG        one folder per class; the classes are the sorted folder names (1,000 for
                                    ILSVRC2012, or however many folders there are)
    ROOT/val/<wnid>/*.JPEG          validation as class folders (every wnid must be a train class), or
    ROOT/val/*.JPEG                 flat, labelled by the official LOC_val_solution.csv (ImageId,PredictionString;
                                    the first wnid of PredictionString is the label), looked up as --val-labels,
                                    ROOT/LOC_val_solution.csv, ROOT/val/LOC_val_solution.csv, or beside one of
                                    ROOT's ancestors (Kaggle's layout: the csv three levels above ILSVRC/Data/CLS-LOC)

A bad layout is a one-line ImageNetLayoutError naming the file or folder: no train/, no class folders, an empty
class folder, an image loose in train/, a val class folder or csv row naming an unknown wnid, a val image without
a csv row or a csv row without its image, a duplicate row. Files that are not images (by extension; hidden files
are not looked at) are skipped and counted in `ImageNetFolder.skipped` - the command prints them. Images are
decoded only when loaded: an unreadable image stops the run with ImageReadError naming the file.

The file lists are packed (one bytes buffer + offsets, numpy labels), so 1.28 M paths cost ~40 MB, shared by the
forked DataLoader workers without the copy-on-access of Python string lists.

Loading (`ImageNetDataset`): each image is cut and resized in one step from a box chosen on the image's size,
which is read from the header first:
- train, "random-resized-crop" (default): a box of a random share of the image area (scale_min..1) and a random
  aspect ratio (3/4..4/3 **relative to the output's aspect**, log-uniform; torchvision's RandomResizedCrop at a
  square output), resized to the input size, flipped horizontally with p=0.5; "resize-crop": the box of the
  validation transform at a random position (resize by 1/0.875 and random crop), flipped.
- val: the central 87.5 % box of the output's aspect (resize + centre crop).
- Reduced decoding: when the box is at least twice the output size on both axes, a JPEG is decoded at 1/2, 1/4
  or 1/8 of its size in the DCT domain (PIL's draft mode) - faster, and an antialiased pre-shrink - so that the
  bilinear resize that follows shrinks by less than 2x. Otherwise OpenCV decodes at full size. EXIF orientation
  is ignored on both paths (as ILSVRC2012 tools and PIL do), so the header size and the pixels agree.
- Samples are uint8 CHW tensors (normalised on the training device); the random draws come from the sample seed
  the sampler hands out (reidtrain.data.EpochSampler), so an epoch's images are a function of (seed, epoch).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reidkit.errors import ReidError

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VAL_CSV = "LOC_val_solution.csv"
CENTER_FRACTION = 0.875          # validation: central crop of 87.5 % (resize to 1/0.875, centre crop)
ASPECT_RANGE = (3 / 4, 4 / 3)    # random-resized-crop aspect ratios, relative to the output's aspect
REDUCTIONS = (8, 4, 2)           # JPEG DCT scalings tried by the reduced decoding
_DECODE_FLAGS = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")


class ImageNetLayoutError(ReidError, ValueError):
    """The ImageNet folder does not have the ILSVRC2012 layout; the message names the file or folder."""


class ImageReadError(ReidError, ValueError):
    """An image of the ImageNet folder cannot be read or decoded; the message names the file."""


# ---------------------------------------------------------------------------------------------- the file lists
@dataclass
class ImageList:
    """Image paths (relative to `base`, packed) and their class labels."""

    base: Path
    data: np.ndarray        # uint8, the UTF-8 paths one after the other
    offsets: np.ndarray     # int64, len + 1
    labels: np.ndarray      # int64

    @classmethod
    def build(cls, base: Path, paths: Sequence[str], labels: Sequence[int]) -> "ImageList":
        encoded = [p.encode() for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(Path(base), data, offsets, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def relative(self, i: int) -> str:
        return self.data[int(self.offsets[i]): int(self.offsets[i + 1])].tobytes().decode()

    def path(self, i: int) -> Path:
        return self.base / self.relative(i)


@dataclass
class ImageNetFolder:
    root: Path
    classes: list[str]                   # wnids, sorted: label i is classes[i]
    train: ImageList
    val: ImageList | None
    val_source: str                      # "class folders", the csv path, or "none"
    skipped: list[str] = field(default_factory=list)   # non-image files (paths), not part of the dataset

    def fingerprint(self) -> dict:
        """What a resumed run must find unchanged: the classes and the image counts per split."""
        import hashlib
        digest = hashlib.sha256()
        for part in (self.train, self.val):
            if part is not None:
                digest.update(part.data.tobytes())
                digest.update(part.labels.tobytes())
        return {"classes": len(self.classes), "train_images": len(self.train),
                "val_images": len(self.val) if self.val is not None else 0, "sha256": digest.hexdigest()[:16]}


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) of `folder`, hidden entries left out, both sorted."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                (dirs if entry.is_dir() else files).append(entry.name)
    except NotADirectoryError:
        raise ImageNetLayoutError(f"{folder}: not a folder") from None
    return sorted(dirs), sorted(files)


def _class_images(folder: Path, prefix: str, skipped: list[str]) -> list[str]:
    dirs, files = _entries(folder)
    images = [f"{prefix}/{f}" for f in files if _is_image(f)]
    skipped.extend(str(folder / f) for f in files if not _is_image(f))
    skipped.extend(str(folder / d) + "/" for d in dirs)
    if not images:
        raise ImageNetLayoutError(f"{folder}: the class folder holds no images "
                                  f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def find_val_csv(root: Path) -> Path | None:
    """LOC_val_solution.csv in ROOT, ROOT/val or beside one of ROOT's ancestors (Kaggle's layout)."""
    root = Path(root).resolve()
    for folder in (root, root / "val", *root.parents[:3]):
        if (folder / VAL_CSV).is_file():
            return folder / VAL_CSV
    return None


def read_val_csv(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """ImageId -> label from LOC_val_solution.csv (first wnid of PredictionString); errors name the file and
    line."""
    index = {w: i for i, w in enumerate(classes)}
    out: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise ImageNetLayoutError(f"{path}: line 1 must be the header 'ImageId,PredictionString', got "
                                          f"{','.join(header or [])!r}")
            for line, row in enumerate(reader, start=2):
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].split():
                    raise ImageNetLayoutError(f"{path}:{line}: expected 'ImageId,wnid ...', got {','.join(row)!r}")
                image_id, wnid = row[0].strip(), row[1].split()[0]
                if wnid not in index:
                    raise ImageNetLayoutError(f"{path}:{line}: {image_id} is labelled {wnid!r}, which is not a class "
                                              f"folder of train/ ({len(classes)} classes)")
                if image_id in out:
                    raise ImageNetLayoutError(f"{path}:{line}: {image_id} is listed twice")
                out[image_id] = index[wnid]
    except UnicodeDecodeError as e:
        raise ImageNetLayoutError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    if not out:
        raise ImageNetLayoutError(f"{path}: no rows after the header")
    return out


def scan_imagenet(root: Path, val_labels: Path | None = None, need_val: bool = True) -> ImageNetFolder:
    """Read the file lists of an ILSVRC2012-layout folder (see the module docstring); no image is decoded."""
    root = Path(root)
    if not root.is_dir():
        raise ImageNetLayoutError(f"{root}: ImageNet folder not found")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ImageNetLayoutError(f"{root}: no train/ folder (expected the ILSVRC2012 layout train/<wnid>/*.JPEG, "
                                  f"val/)")
    classes, loose = _entries(train_dir)
    if loose and any(_is_image(f) for f in loose):
        first = next(f for f in loose if _is_image(f))
        raise ImageNetLayoutError(f"{train_dir / first}: an image directly in train/; every image must be in its "
                                  f"class folder train/<wnid>/")
    if not classes:
        raise ImageNetLayoutError(f"{train_dir}: no class folders (expected train/<wnid>/*.JPEG)")
    skipped = [str(train_dir / f) for f in loose]
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        images = _class_images(train_dir / wnid, wnid, skipped)
        paths.extend(images)
        labels.extend([label] * len(images))
    train = ImageList.build(train_dir, paths, labels)
    val, source = None, "none"
    if need_val:
        val, source = _scan_val(root, classes, val_labels, skipped)
    return ImageNetFolder(root, classes, train, val, source, skipped)


def _scan_val(root: Path, classes: list[str], val_labels: Path | None,
              skipped: list[str]) -> tuple[ImageList, str]:
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise ImageNetLayoutError(f"{root}: no val/ folder (class folders val/<wnid>/, or flat images with "
                                  f"{VAL_CSV}); pass --no-val to pre-train without validation")
    dirs, files = _entries(val_dir)
    images = [f for f in files if _is_image(f)]
    if dirs and val_labels is None:
        if images:
            raise ImageNetLayoutError(f"{val_dir / images[0]}: an image directly in val/, which also holds class "
                                      f"folders; use one layout")
        index = {w: i for i, w in enumerate(classes)}
        unknown = [d for d in dirs if d not in index]
        if unknown:
            raise ImageNetLayoutError(f"{val_dir / unknown[0]}: val class folder {unknown[0]!r} is not a class "
                                      f"folder of train/")
        paths, labels = [], []
        for wnid in dirs:
            found = _class_images(val_dir / wnid, wnid, skipped)
            paths.extend(found)
            labels.extend([index[wnid]] * len(found))
        skipped.extend(str(val_dir / f) for f in files)
        return ImageList.build(val_dir, paths, labels), "class folders"
    csv_path = Path(val_labels) if val_labels is not None else find_val_csv(root)
    if csv_path is None:
        raise ImageNetLayoutError(f"{val_dir}: flat validation images need {VAL_CSV} (looked in {root}, {val_dir} "
                                  f"and beside ROOT's parents); pass --val-labels")
    if not csv_path.is_file():
        raise ImageNetLayoutError(f"{csv_path}: validation labels file not found")
    table = read_val_csv(csv_path, classes)
    if not images:
        raise ImageNetLayoutError(f"{val_dir}: no validation images (flat val/*.JPEG labelled by {csv_path})")
    paths, labels, seen = [], [], set()
    for name in images:
        stem = os.path.splitext(name)[0]
        if stem not in table:
            raise ImageNetLayoutError(f"{val_dir / name}: no row for {stem!r} in {csv_path}")
        paths.append(name)
        labels.append(table[stem])
        seen.add(stem)
    missing = [k for k in table if k not in seen]
    if missing:
        raise ImageNetLayoutError(f"{csv_path}: {len(missing)} listed image(s) not in {val_dir}, first "
                                  f"{missing[0]!r}")
    skipped.extend(str(val_dir / f) for f in files if not _is_image(f) and f != VAL_CSV)
    skipped.extend(str(val_dir / d) + "/" for d in dirs)   # sub-folders beside a flat, csv-labelled val/
    return ImageList.build(val_dir, paths, labels), str(csv_path)


# ------------------------------------------------------------------------------------- boxes (pure geometry)
Box = tuple[int, int, int, int]   # top, left, height, width in source pixels


def center_box(height: int, width: int, out_h: int, out_w: int, fraction: float = CENTER_FRACTION) -> Box:
    """The central box of the output's aspect covering `fraction` of the largest such box (resize + centre
    crop in one)."""
    aspect = out_w / out_h
    h = min(height, width / aspect) * fraction
    w = h * aspect
    bh, bw = max(1, round(h)), max(1, round(w))
    return (height - bh) // 2, (width - bw) // 2, bh, bw


def random_resized_box(rng: np.random.Generator, height: int, width: int, out_h: int, out_w: int,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = ASPECT_RANGE, tries: int = 10) -> Box:
    """A random box of area share U(scale) and aspect (w/h) log-uniform in ratio x out_w/out_h, inside the
    image; after `tries` misses, the largest centred box whose aspect is in range (torchvision's fallback)."""
    area = height * width
    rel = out_w / out_h
    lo, hi = math.log(ratio[0] * rel), math.log(ratio[1] * rel)
    for _ in range(tries):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(lo, hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0] * rel:
        w, h = width, round(width / (ratio[0] * rel))
    elif aspect > ratio[1] * rel:
        h, w = height, round(height * ratio[1] * rel)
    else:
        h, w = height, width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def random_shifted_box(rng: np.random.Generator, height: int, width: int, out_h: int, out_w: int,
                       fraction: float = CENTER_FRACTION) -> Box:
    """The validation box (`center_box`) at a uniformly random position: resize by 1/fraction + random crop."""
    _, _, h, w = center_box(height, width, out_h, out_w, fraction)
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def reduction(box_h: int, box_w: int, out_h: int, out_w: int) -> int:
    """The largest JPEG DCT scaling 1/k (k in 8, 4, 2) that keeps the box at least the output size; 1 if none."""
    for k in REDUCTIONS:
        if box_h >= k * out_h and box_w >= k * out_w:
            return k
    return 1


def scale_box(box: Box, sy: float, sx: float, shape: tuple[int, int]) -> Box:
    """`box` in a copy of the image scaled by (sy, sx) whose size is `shape` (at least one pixel, inside)."""
    top, left, h, w = box
    t, l_ = min(int(top * sy), shape[0] - 1), min(int(left * sx), shape[1] - 1)
    b = max(t + 1, min(shape[0], round((top + h) * sy)))
    r = max(l_ + 1, min(shape[1], round((left + w) * sx)))
    return t, l_, b - t, r - l_


# ------------------------------------------------------------------------------------------------- decoding
def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read the image ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{path}: empty image file (0 bytes)")
    return data


def _header(data: bytes, path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_region(path: Path, out_h: int, out_w: int, box_of, reduced: bool = True) -> np.ndarray:
    """Decode `path`, cut the box `box_of(height, width)` (source pixels) and resize it to out_h x out_w:
    HxWx3 uint8 RGB. With `reduced`, JPEGs whose box is >= 2x the output are decoded at 1/k size (draft)."""
    data = _read(path)
    head = _header(data, path)
    width, height = head.size
    top, left, bh, bw = box_of(height, width)
    k = reduction(bh, bw, out_h, out_w) if reduced and head.format == "JPEG" else 1
    img = None
    try:
        if k > 1:
            head.draft("RGB", (width // k, height // k))
            img = np.asarray(head if head.mode == "RGB" else head.convert("RGB"))
        else:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
            if img is not None and not _RGB:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except (OSError, ValueError, SyntaxError, cv2.error) as e:
        raise ImageReadError(f"{path}: the image cannot be decoded ({type(e).__name__}: {e})") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise ImageReadError(f"{path}: the image cannot be decoded ({len(data)} bytes)")
    if img.shape[:2] != (height, width):   # reduced decoding: scale the box to the decoded size
        top, left, bh, bw = scale_box((top, left, bh, bw), img.shape[0] / height, img.shape[1] / width,
                                      img.shape[:2])
    region = img[top:top + bh, left:left + bw]
    if region.shape[:2] == (out_h, out_w):
        return region
    return cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def to_chw(img: np.ndarray, flip: bool) -> np.ndarray:
    """HxWx3 -> contiguous 3xHxW, mirrored when `flip`: one copy."""
    src = img[:, ::-1] if flip else img
    return np.ascontiguousarray(src.transpose(2, 0, 1))


AUGMENT_MODES = ("random-resized-crop", "resize-crop")


class ImageNetDataset(Dataset):
    """Samples {"image": uint8 (3, H, W), "label"} of one split. Indexed by (index, seed) for training (the seed
    draws the box and the flip) or by an int (the validation transform)."""

    def __init__(self, images: ImageList, size: tuple[int, int], augment: str = "random-resized-crop",
                 scale_min: float = 0.08, flip: bool = True, reduced: bool = True) -> None:
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {augment!r}")
        self.images, self.size = images, (int(size[0]), int(size[1]))
        self.augment, self.scale_min, self.flip, self.reduced = augment, scale_min, flip, reduced

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int, seed: int | None) -> np.ndarray:
        out_h, out_w = self.size
        path = self.images.path(index)
        if seed is None:
            return to_chw(load_region(path, out_h, out_w, lambda h, w: center_box(h, w, out_h, out_w),
                                      self.reduced), False)
        rng = np.random.default_rng(seed)
        if self.augment == "random-resized-crop":
            def box_of(h, w):
                return random_resized_box(rng, h, w, out_h, out_w, (self.scale_min, 1.0))
        else:
            def box_of(h, w):
                return random_shifted_box(rng, h, w, out_h, out_w)
        img = load_region(path, out_h, out_w, box_of, self.reduced)
        return to_chw(img, self.flip and bool(rng.random() < 0.5))

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), None)
        return {"image": torch.from_numpy(self.load(index, seed)), "label": int(self.images.labels[index])}


class ShardSampler(Sampler):
    """Validation order: every world_size-th sample from `rank` (no padding: the ranks' counts add up to the
    split, so all-reduced top-k counts are exact)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(_: int) -> None:
    from .allocator import keep_freed_memory
    keep_freed_memory()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_image_loader(dataset: ImageNetDataset, batch_size: int, workers: int, sampler: Sampler, train: bool,
                      pin_memory: bool = False) -> DataLoader:
    """uint8 batches; training drops the last incomplete batch when there is at least one full one."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=train and len(sampler) >= batch_size, pin_memory=pin_memory,
                      persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None,
                      generator=torch.Generator().manual_seed(0), prefetch_factor=4 if workers > 0 else None)
