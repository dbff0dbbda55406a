"""The Market-scale crop benchmark's stand-in dataset and memory sampling (benchmarks/bench_crop.py)."""
import os
from pathlib import Path

import numpy as np

from benchmarks.bench_crop import MARKET_SPLITS, _children, _rss_kb, make_market_scale, run_market_scale


def test_market_scale_stand_in_keeps_the_split_proportions_and_covers_every_image(tmp_path):
    from posecrop.datasets import read_dataset
    from posecrop.sources.openpose_json import OpenPoseJsonSource
    from posecrop.sources.posegan_csv import PoseGanCsvSource

    root = tmp_path / "Market-1501"
    counts = make_market_scale(root, 200)
    assert sum(counts.values()) == 200 and set(counts) == set(MARKET_SPLITS)
    total = sum(MARKET_SPLITS.values())
    for folder, n in counts.items():   # proportional to Market-1501's 12,936 / 16,364 / 3,368
        assert abs(n - 200 * MARKET_SPLITS[folder] / total) <= 1
        assert len(list((root / folder).glob("*.jpg"))) == n
    records = read_dataset("market", root)
    assert len(records) == 200 and len({Path(r.path).name for r in records}) == 200
    csv = PoseGanCsvSource(sorted((root / "keypoints_posegan").glob("*.csv")))
    assert all(Path(r.path).name in csv for r in records)
    # the CSV carries the synthetic OpenPose joints of the image each name links to (rounded, missing = -1)
    base = tmp_path / "Market-1501-base"
    json_source = OpenPoseJsonSource(base / "keypoints")
    by_inode = {p.stat().st_ino: p for p in base.rglob("*.jpg")}
    checked = 0
    for r in records[:30]:
        linked = by_inode.get((root / r.path).stat().st_ino)
        if linked is None:       # copied (no hard links on this file system)
            continue
        kp, sc = json_source.read(str(linked.relative_to(base)), 64, 128)
        ours, ours_sc = csv.read(Path(r.path).name, 64, 128)
        present = (sc > 0) & np.isfinite(kp).all(-1)
        inside = present & (ours_sc > 0)
        assert (ours_sc[~present] == 0).all()
        np.testing.assert_allclose(ours[inside], np.rint(kp[inside]), atol=1e-6)
        checked += 1
    assert checked >= 20 or checked == 0


def test_rss_sampling_sees_this_process_and_nothing_of_a_gone_one():
    rss, hwm = _rss_kb(os.getpid())
    assert 0 < rss <= hwm
    assert _rss_kb(2**22 + 12345) == (0, 0) and _children(2**22 + 12345) == []


def test_market_scale_run_writes_every_image_and_reports_memory_and_cache_size(tmp_path):
    root = tmp_path / "Market-1501"
    make_market_scale(root, 120)
    r = run_market_scale(root, tmp_path / "cache", workers=1)
    assert r["written"] == 120 and r["failed"] == 0 and r["records"] == 120
    assert r["parent_hwm_kb"] > 0 and r["worker_max_rss_kb"] > 0 and r["peak_total_rss_kb"] >= r["parent_hwm_kb"] / 4
    assert r["cache_bytes"] > 120 * 5 * 1000   # five JPEG crops + the source per image
