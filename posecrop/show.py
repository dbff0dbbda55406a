"""Contact sheet of a crop cache (`python cli.py show CACHE --out sheet.png`).

One row per sampled image: the source image (the `whole` column) on a grey canvas large enough to hold every
region box (boxes may leave the image), with the skeleton, the joints (detected: filled green; repaired: orange
ring; frame fallback: magenta square) and the five boxes R0-R4; then the five crops side by side, labelled, with
the image id, identity, camera (1-based, as c<N> in Market-style file names: camid + 1) and the share of
each box outside the image. A pose the plausibility rules distrusted (the `pose_issue` column) gets a coloured
frame around its source panel and its reason in the text: orange when its distrusted joints were repaired, red
when the frame fallback placed it.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reidkit.atomic import atomic_path

from .keypoints import SKELETON
from .plausibility import parse_issue
from .regions import REGION_NAMES

ROW_HEIGHT = 384
REGION_COLOURS = {"body": (255, 255, 255), "head": (255, 80, 80), "upper_body": (80, 200, 255),
                  "upper_leg": (255, 210, 40), "lower_leg": (170, 110, 255)}
JOINT_COLOURS = {0: (40, 220, 40), 1: (255, 140, 0), 2: (255, 0, 255)}
BACKGROUND = (24, 24, 28)
OUTSIDE = (90, 90, 96)
TEXT = (235, 235, 235)
GAP = 8
ISSUE_COLOURS = {"repaired": (255, 150, 40), "fallback": (255, 60, 60)}  # by the outcome of a pose_issue


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _decode(blob: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(blob))
    img.load()
    return img.convert("RGB")


def annotate_source(whole: Image.Image, keypoints: np.ndarray, joint_source: np.ndarray, boxes: np.ndarray,
                    height: int = ROW_HEIGHT) -> Image.Image:
    """The source image with joints, skeleton and boxes, on a canvas that also holds the parts of the boxes
    outside the image; scaled to `height` pixels."""
    w, h = whole.size
    x0 = min(0.0, float(boxes[:, 0].min()))
    y0 = min(0.0, float(boxes[:, 1].min()))
    x1 = max(float(w), float(boxes[:, 2].max()))
    y1 = max(float(h), float(boxes[:, 3].max()))
    scale = height / (y1 - y0)
    cw = max(1, int(math.ceil((x1 - x0) * scale)))
    canvas = Image.new("RGB", (cw, height), OUTSIDE)
    ox, oy = (0 - x0) * scale, (0 - y0) * scale
    canvas.paste(whole.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR),
                 (round(ox), round(oy)))
    draw = ImageDraw.Draw(canvas)

    def pt(p: np.ndarray) -> tuple[float, float]:
        return (float(p[0]) * scale + ox, float(p[1]) * scale + oy)

    for r, name in enumerate(REGION_NAMES):
        b = boxes[r]
        draw.rectangle([pt(b[:2]), pt(b[2:])], outline=REGION_COLOURS[name], width=2 if r else 3)
    for a, b in SKELETON:
        draw.line([pt(keypoints[a]), pt(keypoints[b])], fill=(200, 200, 200), width=1)
    rad = max(2.5, height / 110)
    for j, p in enumerate(keypoints):
        x, y = pt(p)
        src = int(joint_source[j])
        colour = JOINT_COLOURS.get(src, (255, 255, 255))
        if src == 0:
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=colour, outline=(0, 0, 0))
        elif src == 1:
            draw.ellipse([x - rad - 1, y - rad - 1, x + rad + 1, y + rad + 1], outline=colour, width=2)
        else:
            draw.rectangle([x - rad, y - rad, x + rad, y + rad], outline=colour, width=2)
    return canvas


def _legend(width: int, title: str) -> Image.Image:
    font = _font(14)
    img = Image.new("RGB", (width, 46), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((GAP, 4), title, fill=TEXT, font=font)
    x = GAP
    for src, label in ((0, "detected"), (1, "repaired"), (2, "fallback")):
        c = JOINT_COLOURS[src]
        if src == 0:
            d.ellipse([x, 28, x + 10, 38], fill=c)
        elif src == 1:
            d.ellipse([x, 28, x + 10, 38], outline=c, width=2)
        else:
            d.rectangle([x, 28, x + 10, 38], outline=c, width=2)
        d.text((x + 14, 25), label, fill=TEXT, font=font)
        x += 14 + int(d.textlength(label, font=font)) + 16
    for name in REGION_NAMES:
        d.rectangle([x, 28, x + 10, 38], outline=REGION_COLOURS[name], width=2)
        d.text((x + 14, 25), name, fill=TEXT, font=font)
        x += 14 + int(d.textlength(name, font=font)) + 16
    for outcome, c in ISSUE_COLOURS.items():
        label = f"implausible pose, {outcome}"
        d.rectangle([x, 27, x + 12, 39], outline=c, width=3)
        d.text((x + 16, 25), label, fill=TEXT, font=font)
        x += 16 + int(d.textlength(label, font=font)) + 16
    return img


def render_rows(rows: Sequence[dict], title: str = "") -> Image.Image:
    """The contact sheet for rows holding image_id, pid, camid, keypoints, joint_source, boxes, outside and the
    image columns (`whole` + REGION_NAMES) as {bytes, path}."""
    font = _font(13)
    label_h = 18
    rendered = []
    for row in rows:
        kp = np.asarray(row["keypoints"], dtype=np.float32).reshape(-1, 2)
        src = np.asarray(row["joint_source"], dtype=np.int8)
        boxes = np.asarray(row["boxes"], dtype=np.float32).reshape(-1, 4)
        panels = [annotate_source(_decode(row["whole"]["bytes"]), kp, src, boxes)]
        issue = row.get("pose_issue") or ""
        if issue:
            colour = ISSUE_COLOURS.get(parse_issue(issue)[1], ISSUE_COLOURS["fallback"])
            ImageDraw.Draw(panels[0]).rectangle([0, 0, panels[0].width - 1, panels[0].height - 1], outline=colour,
                                                width=6)
        panels += [_decode(row[name]["bytes"]) for name in REGION_NAMES]
        rendered.append((row, panels))
    width = max((sum(p.width for p in ps) + GAP * (len(ps) + 1) for _, ps in rendered), default=600)
    width = max(width, 900)
    row_h = ROW_HEIGHT + label_h + GAP
    legend = _legend(width, title)
    sheet = Image.new("RGB", (width, legend.height + row_h * len(rendered) + GAP), BACKGROUND)
    sheet.paste(legend, (0, 0))
    draw = ImageDraw.Draw(sheet)
    y = legend.height
    for row, panels in rendered:
        x = GAP
        labels = ["source + R0-R4", *REGION_NAMES]
        for i, (panel, label) in enumerate(zip(panels, labels)):
            draw.text((x, y), label, fill=REGION_COLOURS.get(label, TEXT), font=font)
            sheet.paste(panel, (x, y + label_h))
            x += panel.width + GAP
        outside = np.asarray(row.get("outside", [0] * len(REGION_NAMES)), dtype=np.float32)
        src = np.asarray(row["joint_source"])
        info = [str(row["image_id"]), f"pid {row['pid']}  cam c{int(row['camid']) + 1}",
                f"joints: {int((src == 0).sum())} detected, {int((src == 1).sum())} repaired, "
                f"{int((src == 2).sum())} fallback",
                "outside: " + ", ".join(f"{n} {v:.0%}" for n, v in zip(REGION_NAMES, outside))]
        tx = GAP + panels[0].width + GAP + panels[1].width + GAP
        issue = row.get("pose_issue") or ""
        if issue:
            info.append(f"implausible pose: {issue}")
        for k, line in enumerate(info):
            colour = ISSUE_COLOURS.get(parse_issue(issue)[1], ISSUE_COLOURS["fallback"]) if k == 4 else TEXT
            draw.text((tx, y + label_h + panels[2].height + 10 + 18 * k), line, fill=colour, font=font)
        y += row_h
    return sheet


def _unreadable_part(cache: str | Path, splits: list[str]) -> Path | None:
    """The first part file of `splits` that does not read completely (for the error message)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .cache_reader import part_files

    for split in splits:
        for part in part_files(cache, split):
            try:
                pq.read_table(part)
            except (pa.ArrowException, OSError):
                return part
    return None


def contact_sheet(cache: str | Path, out: str | Path, n: int = 8, split: str | None = None, seed: int = 0,
                  implausible: bool = False) -> Path:
    """Write a contact sheet PNG of `n` images sampled (seeded) from `split` (None: all splits) of a cache;
    with `implausible`, only from the rows whose pose the plausibility rules distrusted (`pose_issue`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reidkit.typedconfig import ConfigError

    from .cache_reader import CacheError, cache_settings, open_cache, validate_paths
    from .records import SPLITS
    from .schema import IMAGE_COLUMNS

    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the contact sheet is a PNG image; give a name ending in .png")
    splits = [split] if split else list(SPLITS)
    ds = open_cache(cache, splits)
    has_issue = "pose_issue" in ds.schema.names   # caches written before the column lack it
    if implausible and not has_issue:
        raise CacheError(f"{cache}: written before the pose_issue column: no implausible poses to show")
    try:
        ids = ds.to_table(columns=["image_id"], filter=(pc.field("pose_issue") != "") if implausible else None
                          ).column("image_id").to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise CacheError(f"{_unreadable_part(cache, splits) or cache}: unreadable part file ({e}); move it away "
                         f"(and re-run `crop` to redo its images)") from e
    if not ids:
        raise CacheError(f"{cache}: no {'implausible poses' if implausible else 'rows'} to show")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist())
    wanted = [ids[i] for i in chosen]
    cols = ["image_id", "pid", "camid", "keypoints", "joint_source", "boxes", "outside", *IMAGE_COLUMNS]
    if has_issue:
        cols.append("pose_issue")
    try:
        table = ds.to_table(columns=cols, filter=pc.field("image_id").isin(wanted))
    except (pa.ArrowException, OSError) as e:
        raise CacheError(f"{_unreadable_part(cache, splits) or cache}: unreadable part file ({e}); move it away "
                         f"(and re-run `crop` to redo its images)") from e
    validate_paths(table, where=str(cache))  # a cache from elsewhere: refuse absolute or '..' paths
    rows = sorted(table.to_pylist(), key=lambda r: r["image_id"])
    s = cache_settings(cache)
    what = "implausible poses" if implausible else "images"
    title = (f"{Path(cache).name}: {len(rows)} of {len(ids)} {what}   beta {s.get('beta')}   "
             f"pose {(s.get('pose_source') or {}).get('backend', '?')}   fill {s.get('fill')}")
    sheet = render_rows(rows, title)
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
