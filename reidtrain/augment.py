"""Fused training augmentation of one crop: flip + padding-crop + random erasing in one pass, CHW uint8 out.

The semantics are those of the albumentations pipeline HorizontalFlip -> PadIfNeeded(zero fill) -> RandomCrop ->
Erasing(fill="random") (tests compare the geometric part pixel for pixel with albumentations), but one crop costs
one output allocation and one strided copy instead of four library calls, each allocating and copying a full
image (≈ 15-60 µs of call overhead apiece at these sizes). The output is written straight in the CHW layout the
network reads, so no separate HWC -> CHW copy follows.

Pure functions: the random draws come from the `numpy.random.Generator` passed in, so a sample's augmentation is a
function of its seed alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ERASE_SCALE = (0.02, 0.33)   # erased area as a share of the crop (Zhong et al.; albumentations' default)
ERASE_RATIO = (0.3, 3.3)     # erased width / height


@dataclass(frozen=True)
class CropDraw:
    """The random decisions for one crop: shift of the padding-crop, and the erased box (or None)."""

    dy: int                 # output row r shows source row r + dy (|dy| <= vertical padding)
    dx: int                 # output column c shows (flipped) source column c + dx
    erase: tuple[int, int, int, int] | None = None   # (top, left, height, width)


def draw_shift(rng: np.random.Generator, pad_h: int, pad_w: int) -> tuple[int, int]:
    """Offset of a random crop of the size of the image out of the image zero-padded by (pad_h, pad_w) per side."""
    dy = int(rng.integers(-pad_h, pad_h + 1)) if pad_h else 0
    dx = int(rng.integers(-pad_w, pad_w + 1)) if pad_w else 0
    return dy, dx


def draw_erase_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] = ERASE_SCALE,
                   ratio: tuple[float, float] = ERASE_RATIO) -> tuple[int, int, int, int] | None:
    """A random-erasing box (top, left, h, w) as albumentations' `Erasing` draws it: an area uniform in
    scale x (H W) capped so that some aspect ratio in `ratio` fits, an aspect ratio uniform among those that
    fit, a position uniform over the image. None when no box of that area can fit (tiny crops)."""
    total = height * width
    min_area, max_area = total * scale[0], total * scale[1]
    r_min, r_max = ratio
    max_valid = min(max_area, r_min * height * height, width * width / r_max)
    if max_valid < min_area:
        return None
    area = rng.uniform(min_area, max_valid)
    lo, hi = max(r_min, area / (height * height)), min(r_max, width * width / area)
    if lo > hi:
        return None
    r = rng.uniform(lo, hi)
    h, w = min(height, round(math.sqrt(area / r))), min(width, round(math.sqrt(area * r)))
    if h < 1 or w < 1:
        return None
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def place(img: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W uint8: optionally mirrored, shifted by (dy, dx) with zero fill.

    Equals HorizontalFlip, then PadIfNeeded(zero) by (ph, pw) per side, then the crop at (ph + dy, pw + dx)."""
    h, w = img.shape[:2]
    out = np.empty((img.shape[2], h, w), dtype=img.dtype)
    r0, r1 = max(0, -dy), min(h, h - dy)
    c0, c1 = max(0, -dx), min(w, w - dx)
    if r0 >= r1 or c0 >= c1:
        out.fill(0)
        return out
    src = img[:, ::-1] if flip else img
    out[:, r0:r1, c0:c1] = src[r0 + dy:r1 + dy, c0 + dx:c1 + dx].transpose(2, 0, 1)
    out[:, :r0] = 0
    out[:, r1:] = 0
    out[:, r0:r1, :c0] = 0
    out[:, r0:r1, c1:] = 0
    return out


def erase(chw: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Fill `box` (top, left, h, w) of a C x H x W uint8 image with uniform random values, in place."""
    top, left, h, w = box
    c = chw.shape[0]
    chw[:, top:top + h, left:left + w] = np.frombuffer(rng.bytes(c * h * w), np.uint8).reshape(c, h, w)
    return chw


def augment_crop(img: np.ndarray, flip: bool, draw: CropDraw, rng: np.random.Generator) -> np.ndarray:
    """One crop's whole augmentation: `place`, then `erase` when the draw has a box. Returns C x H x W."""
    out = place(img, flip, draw.dy, draw.dx)
    return erase(out, draw.erase, rng) if draw.erase is not None else out


def to_chw(img: np.ndarray) -> np.ndarray:
    """H x W x C -> contiguous C x H x W (the unaugmented path)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))
