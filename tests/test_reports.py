"""Report pictures and the summary page (reidtrain.reports)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidtrain.metrics import evaluate_market, top_k_gallery
from reidtrain.reports import (RIGHT_COLOR, WRONG_COLOR, attention_to_heat, overlay_heat, plot_attention_maps,
                               plot_cmc, plot_ranked_list, to_rgb_array, write_summary)


def rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


def png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def share_of(img: np.ndarray, hex_color: str, tol: int = 40) -> float:
    return float((np.abs(img.astype(int) - rgb(hex_color)).sum(axis=2) < tol).mean())


def person(seed: int, h: int = 64, w: int = 32) -> np.ndarray:
    """A tiny synthetic 'pedestrian': a grey background, a bluish torso and dark legs (no frame colours)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    img[h // 6:h // 2, w // 4:3 * w // 4] = [rng.integers(0, 120), rng.integers(0, 120), rng.integers(150, 255)]
    img[h // 2:, w // 3:2 * w // 3] = rng.integers(20, 90)
    return img


def small_results():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((12, 8)), rng.standard_normal((40, 8))
    qp, gp = rng.integers(0, 4, 12), rng.integers(0, 4, 40)
    qc, gc = np.zeros(12, int), np.ones(40, int)
    good = evaluate_market(qf, gf + 0, qp, gp, qc, gc, max_rank=10)
    ideal = np.where(qp[:, None] == gp[None, :], 0.0, 1.0) + 0.01 * rng.random((12, 40))
    best = evaluate_market(None, None, qp, gp, qc, gc, distmat=ideal, max_rank=10)
    return {"baseline": good, "intra-inter": best}


def test_plot_cmc_from_results_and_arrays(tmp_path):
    res = small_results()
    p = plot_cmc(res, tmp_path / "cmc.png", title="Market-1501")
    img = png(p)
    assert img.shape[0] > 200 and img.shape[1] > 300
    p2 = plot_cmc({"a": np.linspace(0.5, 1.0, 20), "b": {"cmc": [0.2, 0.6, 0.9], "mAP": 0.4}}, tmp_path / "c2.png")
    assert png(p2).size > 0
    with pytest.raises(ValueError):
        plot_cmc({}, tmp_path / "none.png")


def test_plot_ranked_list_frames_right_green_and_wrong_red(tmp_path):
    queries = [person(i) for i in range(3)]
    gallery = [[person(10 * i + r) for r in range(5)] for i in range(3)]
    all_right = plot_ranked_list(queries, gallery, np.ones((3, 5), bool), tmp_path / "right.png")
    img = png(all_right)
    assert share_of(img, RIGHT_COLOR) > 0.005 and share_of(img, WRONG_COLOR) == 0.0
    mixed = np.zeros((3, 5), bool)
    mixed[:, 0] = True
    both = {"Baseline": gallery, "Intra+Inter": [list(reversed(g)) for g in gallery]}
    p = plot_ranked_list(queries, both, {"Baseline": mixed, "Intra+Inter": ~mixed}, tmp_path / "fig6.png",
                         titles=["Market-1501", "DukeMTMC-reID", "CUHK03"])
    img2 = png(p)
    assert share_of(img2, RIGHT_COLOR) > 0.005 and share_of(img2, WRONG_COLOR) > 0.005
    assert img2.shape[1] > img.shape[1]          # two models side by side are wider
    with pytest.raises(ValueError, match="models"):
        plot_ranked_list(queries, both, {"Baseline": mixed}, tmp_path / "bad.png")


def test_ranked_list_of_real_market_crops(tmp_path, realdata):
    crops = sorted((realdata / "market1501_samples" / "crops").glob("*.jpg"))
    if len(crops) < 8:
        pytest.skip("not enough Market crops")
    pids = np.array([int(p.name[:4]) for p in crops])
    cams = np.array([int(p.name.split("_")[1][1]) for p in crops])
    images = [Image.open(p) for p in crops]
    # distance from real pixels: mean colour histogram difference of tiny thumbnails
    thumbs = np.stack([np.asarray(im.convert("RGB").resize((8, 16)), np.float32).ravel() / 255 for im in images])
    q = [i for i in range(len(crops)) if (pids == pids[i]).sum() > 1][:3]
    d = ((thumbs[q, None, :] - thumbs[None, :, :]) ** 2).sum(-1)
    idx, ok = top_k_gallery(d, pids[q], pids, cams[q], cams, k=5)
    gallery = [[images[j] if j >= 0 else None for j in row] for row in idx]
    img = png(plot_ranked_list([images[i] for i in q], gallery, ok, tmp_path / "market.png"))
    assert share_of(img, WRONG_COLOR) > 0.0      # thumbnails are a weak model: some red frames


def test_attention_heat_is_channel_mean_normalised():
    att = torch.zeros(1, 4, 6, 3)
    att[0, :, 0, 0] = 2.0
    att[0, 0, 5, 2] = 4.0
    heat = attention_to_heat(att)
    assert heat.shape == (6, 3) and heat.min() == 0.0 and heat.max() == 1.0
    assert heat[0, 0] == 1.0 and heat[5, 2] == pytest.approx(0.5)
    assert attention_to_heat(np.ones((3, 3))).max() == 0.0
    with pytest.raises(ValueError):
        attention_to_heat(np.zeros(5))


def test_overlay_puts_the_hot_spot_where_the_map_is_high():
    img = np.full((40, 20, 3), 128, np.uint8)
    heat = np.zeros((4, 2))
    heat[0, 0] = 1.0
    out = overlay_heat(img, heat, alpha=0.6)
    assert out.shape == img.shape
    assert out[2, 2, 0] > out[2, 2, 2] and out[38, 18, 2] > out[38, 18, 0]   # red top-left, blue elsewhere


def test_plot_attention_maps_whole_body_and_fused_parts(tmp_path):
    g = torch.Generator().manual_seed(0)
    body = person(1, 96, 48)
    crops = {"body": body, "head": body[:24], "upper_body": body[16:56], "upper_leg": body[48:76],
             "lower_leg": body[68:]}
    maps = {b: [torch.rand(1, 8, 24 // s, 12 // s, generator=g) for s in (1, 2, 2)] for b in crops}
    fused = png(plot_attention_maps(crops, maps, tmp_path / "fig7.png"))
    rows = png(plot_attention_maps(crops, maps, tmp_path / "rows.png", fuse_parts=False))
    assert rows.shape[0] > fused.shape[0]               # five rows (body + 4 parts) instead of two
    single = png(plot_attention_maps(body, {"body": maps["body"]}, tmp_path / "body.png"))
    assert single.shape[0] < fused.shape[0]
    with pytest.raises(ValueError, match="no attention maps"):
        plot_attention_maps(body, {"body": []}, tmp_path / "none.png")


def test_to_rgb_array_accepts_the_usual_image_forms():
    a = person(2)
    assert to_rgb_array(Image.fromarray(a)).shape == a.shape
    assert np.array_equal(to_rgb_array(torch.from_numpy(a).permute(2, 0, 1)), a)
    assert to_rgb_array(a[:, :, 0]).shape == a.shape
    assert to_rgb_array(a.astype(np.float32) / 255).dtype == np.uint8
    with pytest.raises(ValueError):
        to_rgb_array(np.zeros((3, 4, 5, 6)))


def test_write_summary_markdown_and_html(tmp_path):
    res = small_results()
    figs = tmp_path / "figs"
    cmc = plot_cmc(res, figs / "cmc.png")
    run = tmp_path / "run"
    md = write_summary(run, {**res, "paper (Table 3)": {"R1": 94.99, "R5": 98.25, "mAP": 86.47}},
                       [cmc], {"model": "intra-inter", "beta": 0.0625, "train": {"lr": 0.01}})
    text = md.read_text()
    r1 = res["intra-inter"].summary()["R1"]
    assert f"{r1:.2f}" in text and "94.99" in text and "86.47" in text
    m_inp = res["intra-inter"].summary()["mINP"]
    assert "| mAP | mINP |" in text and f"{m_inp:.2f}" in text
    assert "](../figs/cmc.png)" in text and '"lr": 0.01' in text
    page = (run / "summary.html").read_text()
    assert '<img src="../figs/cmc.png"' in page and "<table>" in page and "94.99" in page
    assert re.search(r"<td>baseline</td>", page)
    inline = write_summary(run, {"R1": 50.0, "mAP": None}, [cmc], {}, inline_images=True)
    page = (run / "summary.html").read_text()
    assert "data:image/png;base64," in page and "<td>-</td>" in page and inline == md
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_summary(run, {"R1": 1.0}, [tmp_path / "missing.png"], {})
