"""benchmarks/alignment.py: the strip-agreement measure, the Market-like box jitter and the misaligned copy."""
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.alignment import (POSEGAN_CSV, crop_with_edges, mean_part_centre_sd, misaligned_box,
                                  strip_agreement, write_misaligned_copy)
from benchmarks.bench_accuracy import parse_args

CUHK01 = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "cuhk01" / "campus"


def _boxes(part_rows):
    """(N, 5, 4) boxes of a 100-px-high image whose part regions span the given (y1, y2) rows."""
    b = np.zeros((len(part_rows), 5, 4))
    b[..., 2] = 10.0
    b[:, 0, 1], b[:, 0, 3] = 0.0, 100.0
    for n, rows in enumerate(part_rows):
        for i, (y1, y2) in enumerate(rows):
            b[n, i + 1, 1], b[n, i + 1, 3] = y1, y2
    return b, np.full(len(part_rows), 100.0)


def test_parts_on_their_strips_agree_fully_and_do_not_move():
    strips = [(0, 25), (25, 50), (50, 75), (75, 100)]
    a = strip_agreement(*_boxes([strips, strips]))
    for part in ("head", "upper_body", "upper_leg", "lower_leg"):
        assert a[part]["centre_sd"] == 0 and a[part]["strip_iou"] == 1 and a[part]["strip_iou_p10"] == 1
    assert a["body"] == {"top_sd": 0.0, "bottom_sd": 0.0, "height_sd": 0.0}


def test_strip_agreement_by_hand():
    # head 0-50 (IoU with 0-25: 25/50 = 0.5, centre 0.25) and 0-25 (IoU 1, centre 0.125)
    a = strip_agreement(*_boxes([[(0, 50), (25, 50), (50, 75), (75, 100)],
                                 [(0, 25), (25, 50), (50, 75), (80, 105)]]))
    assert math.isclose(a["head"]["strip_iou"], 0.75)
    assert math.isclose(a["head"]["centre_sd"], 0.0625)                     # |0.25 - 0.125| / 2
    assert math.isclose(a["lower_leg"]["strip_iou"], (1 + 20 / 30) / 2)     # 80-105 against 75-100
    assert math.isclose(mean_part_centre_sd(a), (0.0625 + 0 + 0 + 0.025) / 4)
    with pytest.raises(ValueError, match=r"\(N, 5, 4\)"):
        strip_agreement(np.zeros((2, 4, 4)), np.ones(2))


def test_misaligned_box_is_deterministic_zero_is_the_image_and_strength_spreads_it():
    assert misaligned_box("0001001.png", 60, 160, 0.0) == (0.0, 0.0, 60.0, 160.0)
    assert misaligned_box("a.png", 60, 160, 1.0) == misaligned_box("a.png", 60, 160, 1.0)
    assert misaligned_box("a.png", 60, 160, 1.0) != misaligned_box("a.png", 60, 160, 1.0, seed=1)
    boxes = np.array([misaligned_box(f"{i}.png", 60, 160, s) for s in (0.5, 1.0) for i in range(400)])
    heights = (boxes[:, 3] - boxes[:, 1]).reshape(2, 400) / 160
    assert np.allclose((boxes[:, 2] - boxes[:, 0]) / 60, (boxes[:, 3] - boxes[:, 1]) / 160)   # same aspect
    assert 0.74 <= heights.min() and heights.max() <= 1.35                   # exp(+-0.3)
    assert heights[1].std() > 1.8 * heights[0].std()
    with pytest.raises(ValueError, match="strength"):
        misaligned_box("a.png", 60, 160, -1.0)


def test_crop_with_edges_keeps_the_image_for_its_own_box_and_repeats_edges_outside():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(16, 8, 3), dtype=np.uint8)
    assert np.array_equal(crop_with_edges(image, (0, 0, 8, 16), (8, 16)), image)
    wide = crop_with_edges(image, (-8, 0, 8, 16), (16, 16))                  # left half is outside: edge column
    assert np.array_equal(wide[:, :8], np.repeat(image[:, :1], 8, axis=1))
    assert np.array_equal(wide[:, 8:], image)


def test_misaligned_copy_names_a_bad_file_and_resumes(tmp_path):
    src = tmp_path / "campus"
    src.mkdir()
    Image.fromarray(np.full((160, 60, 3), 90, np.uint8)).save(src / "0001001.png")
    out = write_misaligned_copy(src, tmp_path / "copy" / "campus", 1.0)
    assert [p.name for p in out.iterdir()] == ["0001001.png"]
    with Image.open(out / "0001001.png") as im:
        assert im.size == (60, 160)
    (src / "0001002.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="0001002.png"):
        write_misaligned_copy(src, out, 1.0)
    (src / "0001002.png").unlink()
    before = (out / "0001001.png").stat().st_mtime_ns
    write_misaligned_copy(src, out, 1.0)                                    # done files are kept
    assert (out / "0001001.png").stat().st_mtime_ns == before


def test_misalign_option_has_its_own_cache_and_result_files():
    plain, moved = parse_args([]), parse_args(["--misalign", "1"])
    assert moved.misalign == 1.0 and plain.misalign == 0.0
    assert plain.stem == "accuracy" and moved.stem == "accuracy-misaligned"
    assert moved.cache != plain.cache and moved.run_dir("aligned", 0) != plain.run_dir("aligned", 0)
    assert plain.dataset_root() == plain.root


@pytest.mark.skipif(not (CUHK01.is_dir() and POSEGAN_CSV.is_dir()), reason="../shared/realdata not present")
def test_market_parts_move_more_than_cuhk01_would_after_jitter_and_cuhk01_parts_barely_move():
    """On real data: the jitter at strength 1 moves CUHK01's fixed-height person as far as Market's detector boxes
    move their people (the spread of a region's centre), measured on the pose-gan Market poses."""
    from benchmarks.alignment import market_posegan_boxes

    market = mean_part_centre_sd(strip_agreement(*market_posegan_boxes()))
    assert 0.08 < market < 0.16
    # a CUHK01-like person (parts fixed in the image) moved by the jitter's boxes
    names = sorted(p.name for p in CUHK01.iterdir())[:600]
    fixed = np.tile(np.array([[0, 0, 60, 160], [0, 0, 60, 40], [0, 40, 60, 80], [0, 80, 60, 120],
                              [0, 120, 60, 160]], float), (len(names), 1, 1))
    moved = fixed.copy()
    for n, name in enumerate(names):
        x1, y1, x2, y2 = misaligned_box(name, 60, 160, 1.0)
        moved[n, :, [1, 3]] = (fixed[n, :, [1, 3]] - y1) * 160 / (y2 - y1)
    jittered = mean_part_centre_sd(strip_agreement(moved, np.full(len(names), 160.0)))
    assert mean_part_centre_sd(strip_agreement(fixed, np.full(len(names), 160.0))) == 0
    assert 0.6 * market < jittered < 1.4 * market
