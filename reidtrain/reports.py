"""Pictures and the one-page summary of an evaluation run (PNG via matplotlib Agg, no pyplot state).

plot_cmc            CMC curves of several models on one plot, legend with R1 / mAP.
plot_ranked_list    Fig. 6: each row a query and its top-k gallery images, green frame = same identity,
                    red frame = different identity; several models side by side.
plot_attention_maps Fig. 7: the input crops and the intra-attention maps of blocks 2-4 laid over them
                    (channel mean, bilinear upsampling); the four body-part branches fused into one picture.
write_summary       summary.md and summary.html (figures as relative links, inline CSS; opens locally).
results_table       a rich table of CMC ranks and mAP, one row per model (console output of evaluate / run).
Every file is written atomically (reidkit.atomic).
"""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from posecrop.regions import REGION_NAMES
from reidkit.atomic import atomic_path, atomic_write_text

from .metrics import EvalResult

RIGHT_COLOR = "#1a9e3a"     # green frame: same identity as the query
WRONG_COLOR = "#d62728"     # red frame: different identity
QUERY_COLOR = "#1f5fbf"
PART_BRANCHES: tuple[str, ...] = REGION_NAMES[1:]   # head, upper_body, upper_leg, lower_leg (top to bottom)
SUMMARY_RANKS = (1, 5, 10, 20)


# --------------------------------------------------------------------------------------------- helpers

def _save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def to_rgb_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W[, 3|4]) or (3, H, W) array/tensor (uint8 or floats in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"not an image: array of shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _resize(a: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if a.shape[:2] == (h, w):
        return a
    return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))


def _framed(img: np.ndarray, color: str | None, width: int) -> np.ndarray:
    """The image with a solid frame of `width` pixels (drawn in pixels, so frames never overlap)."""
    if color is None or width <= 0:
        return img
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    h, w = img.shape[:2]
    out = np.empty((h + 2 * width, w + 2 * width, 3), dtype=np.uint8)
    out[:] = rgb
    out[width:width + h, width:width + w] = img
    return out


def _image_axes(ax, img: np.ndarray | None, aspect: str = "auto") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if img is None:
        ax.set_facecolor("white")
        return
    ax.imshow(img, aspect=aspect, interpolation="bilinear")


def _cmc_of(value) -> tuple[np.ndarray, float | None]:
    if isinstance(value, EvalResult):
        return np.asarray(value.cmc, dtype=float), value.mAP
    if isinstance(value, Mapping):
        return np.asarray(value["cmc"], dtype=float), value.get("mAP")
    return np.asarray(value, dtype=float), None


# --------------------------------------------------------------------------------------------- CMC

def plot_cmc(results: Mapping[str, EvalResult | Sequence[float] | np.ndarray], path: str | os.PathLike,
             title: str = "CMC", max_rank: int | None = None) -> Path:
    """CMC curves (rank-k accuracy in %) of several models on one plot; legend "name (R1 x%, mAP y%)".

    results: name -> EvalResult, a CMC array (fractions), or {"cmc": ..., "mAP": ...}.
    """
    if not results:
        raise ValueError("plot_cmc: no results to plot")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    longest = 1
    for name, value in results.items():
        cmc, m_ap = _cmc_of(value)
        if max_rank is not None:
            cmc = cmc[:max_rank]
        ranks = np.arange(1, len(cmc) + 1)
        longest = max(longest, len(cmc))
        label = f"{name} (R1 {100 * cmc[0]:.2f}%, mAP {'-' if m_ap is None else f'{100 * m_ap:.2f}%'})"
        ax.plot(ranks, 100 * cmc, marker="o", markersize=3.5, linewidth=1.8, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ticks = [1] + list(range(5, longest + 1, 5))
    ax.set_xticks(ticks if longest > 1 else [1])
    ax.set_xlim(0.5, longest + 0.5)
    ax.grid(True, alpha=0.35)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- Fig. 6

def plot_ranked_list(query_images: Sequence[Any],
                     gallery_images: Sequence[Sequence[Any]] | Mapping[str, Sequence[Sequence[Any]]],
                     correct: Any, path: str | os.PathLike, titles: Sequence[str] | None = None,
                     cell_size: tuple[int, int] = (128, 64), frame_width: int = 5) -> Path:
    """Fig. 6: one row per query: the query, then its top-k gallery images (green = right, red = wrong).

    gallery_images: per query the ranked top-k images (None for a missing one); or a mapping
        model name -> such lists, drawn side by side under the model's name (e.g. Baseline vs Intra+Inter).
    correct: (n, k) booleans matching gallery_images (a mapping with the same keys for several models).
    titles: optional label per row (e.g. the dataset), written left of the query.
    cell_size: (height, width) in pixels each image is resized to; frame_width in pixels.
    """
    groups = dict(gallery_images) if isinstance(gallery_images, Mapping) else {"": gallery_images}
    right = dict(correct) if isinstance(correct, Mapping) else {"": correct}
    if set(groups) != set(right):
        raise ValueError(f"correct has models {sorted(right)}, gallery_images has {sorted(groups)}")
    n = len(query_images)
    if n == 0:
        raise ValueError("plot_ranked_list: no queries")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} queries")
    k = max(len(row) for rows in groups.values() for row in rows)
    marks = {}
    for name, rows in groups.items():
        if len(rows) != n:
            raise ValueError(f"model {name!r}: {len(rows)} ranked lists for {n} queries")
        marks[name] = np.zeros((n, k), dtype=bool)
        m = np.asarray(right[name], dtype=bool)
        marks[name][:m.shape[0], :m.shape[1]] = m
    widths = [1.0]
    for _ in groups:
        widths += [0.35] + [1.0] * k
    ch, cw = cell_size
    cell_in = 0.8                                   # inches per image column
    fig = Figure(figsize=(sum(widths) * cell_in, n * cell_in * ch / cw + 0.6))
    grid = fig.add_gridspec(n, len(widths), width_ratios=widths, wspace=0.12, hspace=0.1)
    headers: dict[str, list] = {}
    for i in range(n):
        ax = fig.add_subplot(grid[i, 0])
        _image_axes(ax, _framed(_resize(to_rgb_array(query_images[i]), cell_size), QUERY_COLOR, frame_width))
        if i == 0:
            ax.set_title("query", fontsize=10)
        if titles is not None:
            ax.set_ylabel(titles[i], fontsize=10)
        col = 1
        for name, rows in groups.items():
            col += 1
            for r in range(k):
                ax = fig.add_subplot(grid[i, col + r])
                img = rows[i][r] if r < len(rows[i]) else None
                if img is not None:
                    color = RIGHT_COLOR if marks[name][i, r] else WRONG_COLOR
                    img = _framed(_resize(to_rgb_array(img), cell_size), color, frame_width)
                _image_axes(ax, img)
                if i == 0:
                    ax.set_title(str(r + 1), fontsize=9)
                    headers.setdefault(name, []).append(ax)
            col += k
    for name, axes in headers.items():   # the model's name centred above its ranked lists
        if name:
            a, b = axes[0].get_position(), axes[-1].get_position()
            fig.text((a.x0 + b.x1) / 2, a.y1 + 0.3 / fig.get_figheight(), name, ha="center", va="bottom",
                     fontsize=11, fontweight="bold")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- Fig. 7

def attention_to_heat(att: Any, index: int = 0) -> np.ndarray:
    """(h, w) float map in [0, 1] from an attention map (h, w), (c, h, w) or (batch, c, h, w): channel mean."""
    if hasattr(att, "detach"):
        att = att.detach().float().cpu().numpy()
    a = np.asarray(att, dtype=np.float64)
    if a.ndim == 4:
        a = a[index]
    if a.ndim == 3:
        a = a.mean(axis=0)
    if a.ndim != 2:
        raise ValueError(f"attention map must be (h, w), (c, h, w) or (b, c, h, w), got shape {a.shape}")
    lo, hi = np.nanmin(a), np.nanmax(a)
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay_heat(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The image with a heat map (upsampled bilinearly to the image size) blended over it."""
    h, w = image.shape[:2]
    up = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    colored = colormaps[cmap](np.clip(up, 0.0, 1.0))[:, :, :3] * 255.0
    return ((1.0 - alpha) * image + alpha * colored).round().astype(np.uint8)


def _fused_parts(images: Mapping[str, Any], maps: Mapping[str, Sequence[Any]], size_hw: tuple[int, int],
                 index: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Part crops stacked top to bottom into one body-sized picture, and their maps stacked likewise."""
    h, w = size_hw
    cuts = np.linspace(0, h, len(PART_BRANCHES) + 1).round().astype(int)
    tiles = [_resize(to_rgb_array(images[b]), (cuts[i + 1] - cuts[i], w)) for i, b in enumerate(PART_BRANCHES)]
    n_blocks = min(len(maps[b]) for b in PART_BRANCHES)
    stacked = []
    for blk in range(n_blocks):
        parts = []
        for i, b in enumerate(PART_BRANCHES):
            heat = attention_to_heat(maps[b][blk], index)
            th = cuts[i + 1] - cuts[i]
            parts.append(np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, th), Image.BILINEAR)))
        stacked.append(np.vstack(parts))
    return np.vstack(tiles), stacked


def plot_attention_maps(image: Any, maps: Mapping[str, Sequence[Any]], path: str | os.PathLike,
                        fuse_parts: bool = True, alpha: float = 0.5, index: int = 0,
                        first_block: int = 2, size_hw: tuple[int, int] = (384, 192)) -> Path:
    """Fig. 7: per row an input crop and its attention maps of blocks 2-4 laid over it.

    image: the whole-body crop, or a mapping branch -> crop (body, head, upper_body, upper_leg, lower_leg).
    maps: branch -> the attention maps of blocks 2..4 (as `model.attention_maps()` returns them); each (h, w),
        (c, h, w) or (batch, c, h, w) (then `index` picks the sample). Channel mean, min-max normalised.
    fuse_parts: with all four part branches present (and their crops), draw them as one row: the part crops
        stacked into a body-sized picture with their maps stacked alike (as in the paper's figure).
    """
    maps = {b: list(m) for b, m in maps.items() if len(m)}
    if not maps:
        raise ValueError("plot_attention_maps: no attention maps (the model variant has no intra-attention?)")
    images = dict(image) if isinstance(image, Mapping) else {b: image for b in maps}
    missing = [b for b in maps if b not in images]
    if missing:
        raise ValueError(f"no input crop for branches {missing}")
    rows: list[tuple[str, np.ndarray, list[np.ndarray]]] = []
    fuse = fuse_parts and all(b in maps and b in images for b in PART_BRANCHES)
    for b in maps:
        if fuse and b in PART_BRANCHES:
            continue
        img = to_rgb_array(images[b])
        rows.append((b.replace("_", " "), img, [attention_to_heat(m, index) for m in maps[b]]))
    if fuse:
        img, heats = _fused_parts(images, maps, size_hw, index)
        rows.append(("body parts (fused)", img, heats))
    n_cols = 1 + max(len(h) for _, _, h in rows)
    ratios = [img.shape[0] / img.shape[1] for _, img, _ in rows]     # rows as tall as their crops
    col_in = 1.3
    fig = Figure(figsize=(col_in * n_cols + 0.4, col_in * sum(ratios) * 1.04 + 0.25 * len(rows)))
    grid = fig.add_gridspec(len(rows), n_cols, height_ratios=ratios)
    for r, (label, img, heats) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        _image_axes(ax, img, "equal")
        ax.set_ylabel(label.replace(" ", "\n", 1) if len(label) > 10 else label, fontsize=9, rotation=0,
                      ha="right", va="center", labelpad=6)
        if r == 0:
            ax.set_title("input", fontsize=9)
        for c, heat in enumerate(heats):
            ax = fig.add_subplot(grid[r, c + 1])
            _image_axes(ax, overlay_heat(img, heat, alpha), "equal")
            if r == 0:
                ax.set_title(f"block {first_block + c}", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- summary

def _metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """name -> {R1.., mAP, ...} in percent, from EvalResults, summary dicts or one flat dict."""
    def one(v) -> dict:
        if isinstance(v, EvalResult):
            return v.summary(SUMMARY_RANKS)
        return dict(v)
    if metrics and all(not isinstance(v, (Mapping, EvalResult)) for v in metrics.values()):
        return [("run", dict(metrics))]
    return [(str(k), one(v)) for k, v in metrics.items()]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _table(rows: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    preferred = [f"R{k}" for k in SUMMARY_RANKS] + ["mAP", "mINP"]
    keys: list[str] = []
    for _, d in rows:
        for k in d:
            if k not in keys:
                keys.append(k)
    cols = [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]
    return cols, [[name] + [_fmt(d.get(c)) for c in cols] for name, d in rows]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_summary(run_dir: str | os.PathLike, metrics: Mapping[str, Any], figures: Sequence[str | os.PathLike],
                  config: Mapping[str, Any], title: str = "Evaluation summary", inline_images: bool = False) -> Path:
    """Write RUN_DIR/summary.md and RUN_DIR/summary.html (one page: metrics table, figures, config).

    metrics: model name -> EvalResult or {"R1": %, ..., "mAP": %}, or one flat {"R1": ..} dict.
    figures: PNG paths, linked relative to run_dir (inline_images=True embeds them in the HTML instead).
    Returns the markdown path; the HTML lies next to it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cols, body = _table(_metric_rows(metrics))
    figs = [Path(f) for f in figures]
    for f in figs:
        if not f.is_file():
            raise FileNotFoundError(f"summary figure not found: {f}")
    rel = [Path(os.path.relpath(f.resolve(), run_dir.resolve())).as_posix() for f in figs]
    config_text = json.dumps(config, indent=2, sort_keys=True, default=str)
    note = ("CMC rank-k accuracy, mAP and mINP (fast-reid's mean inverse negative penalty) in percent, single "
            "query; '-' = not reported by the protocol.")

    md = [f"# {title}", "", note, "", "| model | " + " | ".join(cols) + " |",
          "|---|" + "---|" * len(cols)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    md += ["", "## Figures", ""]
    md += [f"![{Path(r).stem}]({r})" + "\n" for r in rel]
    md += ["## Configuration", "", "```json", config_text, "```", ""]
    md_path = run_dir / "summary.md"
    atomic_write_text(md_path, "\n".join(md))

    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in ["model", *cols])
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
    imgs = "".join(
        f'<figure><img src="{esc(_data_uri(f) if inline_images else r)}" alt="{esc(Path(r).stem)}">'
        f"<figcaption>{esc(Path(r).name)}</figcaption></figure>" for f, r in zip(figs, rel))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.8em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f0f0f0; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(note)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>
<h2>Figures</h2>
{imgs}
<h2>Configuration</h2>
<pre>{esc(config_text)}</pre>
</body></html>
"""
    atomic_write_text(run_dir / "summary.html", page)
    return md_path


# --------------------------------------------------------------------------------------------- results table

RESULT_COLUMNS = ("R1", "R5", "R10", "R20", "mAP", "mINP")


def results_table(title: str, results: Mapping[str, Mapping[str, Any]]):
    """A rich Table: one row per model, CMC ranks and mAP in percent (side by side)."""
    from rich.table import Table

    table = Table(title=f"{title}: CMC / mAP (%)")
    table.add_column("model")
    for c in RESULT_COLUMNS:
        table.add_column(c, justify="right")
    table.add_column("protocol")
    table.add_column("epochs", justify="right")
    for model, m in results.items():
        table.add_row(model, *["-" if m.get(c) is None else f"{m[c]:.2f}" for c in RESULT_COLUMNS],
                      str(m.get("protocol", "")), str(m.get("epoch", "")))
    return table
