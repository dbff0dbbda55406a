"""The fused augmentation (reidtrain.augment) against albumentations' own transforms, the batch normalisation
against its plain formula, and the allocator setting."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from reidtrain.augment import CropDraw, augment_crop, draw_erase_box, draw_shift, place
from reidtrain.config import AugmentConfig
from reidtrain.data import SampleTransform, normalize_batch, normalize_inputs

ROOT = Path(__file__).resolve().parents[1]


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w,ph,pw", [(64, 32, 4, 2), (16, 32, 1, 5), (9, 7, 3, 3)])
def test_place_equals_albumentations_flip_pad_crop(h, w, ph, pw):
    img = _photo(h, w)
    for flip in (False, True):
        for dy in sorted({-ph, -1, 0, 1, ph}):
            for dx in sorted({-pw, -1, 0, 1, pw}):
                steps = [A.HorizontalFlip(p=1.0)] if flip else []
                steps += [A.PadIfNeeded(min_height=h + 2 * ph, min_width=w + 2 * pw,
                                        border_mode=cv2.BORDER_CONSTANT, fill=0),
                          A.Crop(x_min=pw + dx, y_min=ph + dy, x_max=pw + dx + w, y_max=ph + dy + h)]
                expected = A.Compose(steps)(image=img)["image"]
                got = place(img, flip, dy, dx)
                assert got.shape == (3, h, w) and got.flags.c_contiguous
                np.testing.assert_array_equal(got, expected.transpose(2, 0, 1), err_msg=f"{flip} {dy} {dx}")


def test_shift_draws_cover_the_padding_uniformly():
    rng = np.random.default_rng(0)
    draws = np.array([draw_shift(rng, 2, 10) for _ in range(20000)])
    assert draws[:, 0].min() == -2 and draws[:, 0].max() == 2 and draws[:, 1].min() == -10 and draws[:, 1].max() == 10
    counts = np.bincount(draws[:, 1] + 10)
    assert counts.min() > 0.8 * counts.mean()   # 21 offsets, about equally often (RandomCrop of the padded crop)
    assert draw_shift(rng, 0, 0) == (0, 0)


@pytest.mark.parametrize("h,w", [(384, 192), (96, 192), (16, 32)])
def test_erase_boxes_follow_albumentations_erasing(h, w):
    """Same box law as albumentations' Erasing: compare the erased-area and aspect distributions of both."""
    rng = np.random.default_rng(1)
    ours = [draw_erase_box(rng, h, w) for _ in range(3000)]
    assert all(b is not None for b in ours)
    ours_area = np.array([bh * bw / (h * w) for _, _, bh, bw in ours])
    ours_aspect = np.array([bw / bh for _, _, bh, bw in ours])
    for top, left, bh, bw in ours:
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
    erasing = A.Erasing(p=1.0, fill=0)
    erasing.set_random_state(np.random.default_rng(2), __import__("random").Random(2))
    white = np.full((h, w, 3), 255, np.uint8)
    theirs = []
    for _ in range(3000):
        out = erasing(image=white)["image"]
        ys, xs = np.nonzero(out[..., 0] == 0)
        theirs.append(((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) / (h * w),
                       (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)) if len(ys) else (0.0, 1.0))
    theirs = np.array(theirs)
    assert abs(ours_area.mean() - theirs[:, 0].mean()) < 0.01
    assert abs(np.median(ours_aspect) - np.median(theirs[:, 1])) < 0.15
    assert 0.015 < ours_area.min() and ours_area.max() < 0.36


def test_erase_box_none_when_nothing_fits_and_erase_touches_only_the_box():
    assert draw_erase_box(np.random.default_rng(0), 1, 1) is None
    img = _photo(20, 10)
    plain = place(img, False, 0, 0)
    out = augment_crop(img, False, CropDraw(0, 0, (3, 2, 5, 4)), np.random.default_rng(0))
    changed = np.any(out != plain, axis=0)
    assert changed[3:8, 2:6].mean() > 0.9 and not changed[:3].any() and not changed[8:].any()
    assert not changed[:, :2].any() and not changed[:, 6:].any()


def test_sample_transform_is_a_function_of_the_seed_with_bounded_shifts():
    sizes = {"body": (64, 32), "head": (16, 32)}
    imgs = {"body": _photo(64, 32, 1), "head": _photo(16, 32, 2)}
    plain = SampleTransform(sizes)(imgs, None)
    shifted = SampleTransform(sizes, AugmentConfig(flip=False, pad=4, erasing=0.0))
    seen = set()
    for seed in range(30):
        out = shifted(imgs, seed)
        # the body is some shift of the plain body by at most 4 px (pad 4 in body pixels)
        match = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if np.array_equal(out["body"], place(imgs["body"], False, dy, dx))]
        assert len(match) == 1
        seen.add(match[0])
        assert out["head"].shape == plain["head"].shape == (3, 16, 32)
    assert len(seen) > 10
    full = SampleTransform(sizes, AugmentConfig(color_jitter=0.5))
    a, b = full(imgs, 7), full(imgs, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_normalisation_equals_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    inputs = {"body": torch.randint(0, 256, (3, 3, 16, 8), generator=g, dtype=torch.uint8),
              "head": torch.randint(0, 256, (3, 3, 4, 8), generator=g, dtype=torch.uint8)}
    before = {k: v.clone() for k, v in inputs.items()}
    out = normalize_inputs(inputs)
    mean = (before["body"].double() / 255).mean(dim=(2, 3), keepdim=True)
    for k in inputs:
        torch.testing.assert_close(out[k].double(), before[k].double() / 255 - mean, atol=1e-6, rtol=0)
        assert torch.equal(inputs[k], before[k])   # the caller's batch is untouched
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize_batch(before["head"], "imagenet"), (before["head"] / 255 - m) / std)
    floats = before["head"].float()
    normalize_batch(floats, "channel-mean")
    assert torch.equal(floats, before["head"].float())   # float input: not modified in place either


def _run(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**full, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_batch_buffers_are_reused_without_page_faults():
    code = """
        import resource, torch
        from reidtrain.allocator import keep_freed_memory
        x = torch.zeros(64, 3, 384, 192, dtype=torch.uint8)   # a batch of 64: 57 MB as floats
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                y = x.float().mul_(2.0)
                del y
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults()
        untuned = faults()
        tuned = keep_freed_memory()
        faults()
        print(tuned, keep_freed_memory(), untuned, faults())
    """
    tuned, again, untuned, after = _run(code).split()
    assert tuned == again == "True"
    # above glibc's 32 MB adaptive limit every float batch is a fresh mmap: ~14,000 page faults each time
    assert int(untuned) > 5 * 10000
    assert int(after) < 500                 # now served from the kept heap
    # a user who tuned malloc themselves keeps their setting
    assert _run("from reidtrain.allocator import keep_freed_memory; print(keep_freed_memory())",
                MALLOC_TRIM_THRESHOLD_="0") == "False"
