"""How much pose alignment can change on a dataset: the baseline's fixed strips against the Eq. 1-2 part regions.

    python -m benchmarks.alignment [CACHE ...] [--images FOLDER ...]
        Market-1501 from the pose-gan CSV in ../shared/realdata, each crop cache given, and each image folder
        given (BlazePose run here, e.g. ../shared/realdata/cuhk03_subset/labeled)

The `baseline` of Table 6 cuts the whole image into four equal horizontal strips; the aligned models crop the
four part regions R1-R4 of Eq. 1-2 from the pose. Alignment can only help where the two disagree, i.e. where the
person's parts move within the image from one image to the next. Two pure measures per part, in units of the
image height:

  sd of centre   the standard deviation over the images of the part region's vertical centre (0 = every image
                 has the part at the same height: a fixed strip already is the aligned region)
  strip IoU      the vertical intersection-over-union of the part region with its strip (1/4 of the image each)

`misaligned_box` is the Market-like detector jitter the accuracy benchmark's `--misalign` applies to CUHK01 (whose
hand-cut boxes put every part within ~2 % of the image height of the same place) to test the alignment mechanism
where its premise holds.
"""
from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POSEGAN_CSV = REPO.parent / "shared" / "realdata" / "market1501_samples" / "keypoints_posegan_csv"
MARKET_SIZE = (64, 128)   # width, height of a Market-1501 crop (the pose-gan keypoints' frame)
STRIPS = 4


def strip_agreement(boxes: np.ndarray, heights: np.ndarray) -> dict[str, dict[str, float]]:
    """Per part region (REGION_NAMES[1:]): sd of its vertical centre and mean / 10th percentile of its vertical IoU
    with the fixed strip of the same index, over N images. boxes (N, 5, 4) x1 y1 x2 y2 in source pixels (R0..R4),
    heights (N,) source image heights. Also "body": sd of the top, the bottom and the height of R0."""
    from posecrop.regions import REGION_NAMES

    b = np.asarray(boxes, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)[:, None]
    if b.ndim != 3 or b.shape[1:] != (len(REGION_NAMES), 4) or len(h) != len(b):
        raise ValueError(f"boxes must be (N, {len(REGION_NAMES)}, 4) with N heights, got {b.shape} and {h.shape}")
    y1, y2 = b[..., 1] / h, b[..., 3] / h
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(REGION_NAMES[1:]):
        s1, s2 = i / STRIPS, (i + 1) / STRIPS
        a1, a2 = y1[:, i + 1], y2[:, i + 1]
        inter = np.clip(np.minimum(a2, s2) - np.maximum(a1, s1), 0.0, None)
        iou = inter / ((a2 - a1) + (s2 - s1) - inter)
        out[name] = {"centre_sd": float(((a1 + a2) / 2).std()), "strip_iou": float(iou.mean()),
                     "strip_iou_p10": float(np.percentile(iou, 10))}
    top, bottom = y1[:, 0], y2[:, 0]
    out["body"] = {"top_sd": float(top.std()), "bottom_sd": float(bottom.std()),
                   "height_sd": float((bottom - top).std())}
    return out


def mean_part_centre_sd(agreement: dict[str, dict[str, float]]) -> float:
    return float(np.mean([v["centre_sd"] for k, v in agreement.items() if k != "body"]))


def market_posegan_boxes(csv_dir: Path = POSEGAN_CSV, beta: float = 0.0625) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1-2 boxes of every Market-1501 train + test pose of the pose-gan CSVs (repaired like the crop stage
    repairs them), and the image heights."""
    from posecrop.canonical import repair
    from posecrop.regions import PIXEL_CENTRE, region_boxes
    from posecrop.sources.posegan_csv import PoseGanCsvSource

    src = PoseGanCsvSource(sorted(Path(csv_dir).glob("market-annotation-*.csv")))
    kp, sc = src.keypoints.astype(np.float64), src.scores.astype(np.float64)
    fixed = repair(kp, sc, image_size=MARKET_SIZE).keypoints
    return region_boxes(fixed, beta=beta) + PIXEL_CENTRE, np.full(len(fixed), float(MARKET_SIZE[1]))


def blazepose_boxes(folder: Path, beta: float = 0.0625) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1-2 boxes of every JPEG / PNG under folder from the BlazePose source (repaired as the crop stage repairs
    them), and the image heights: for image folders that have no crop cache (e.g. ../shared/realdata/cuhk03_subset)."""
    from PIL import Image

    from posecrop.canonical import repair
    from posecrop.records import ImageRecord
    from posecrop.regions import PIXEL_CENTRE, region_boxes
    from posecrop.sources.base import PoseBatchItem
    from posecrop.sources.blazepose import BlazePoseSource

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"{folder}: no images")
    source = BlazePoseSource()
    kps, scores, sizes = [], [], []
    for f in files:
        with Image.open(f) as im:
            image = np.asarray(im.convert("RGB"))
        k, s = source.estimate([PoseBatchItem(ImageRecord(str(f), 0, 0, "train", "folder"), image)])
        kps.append(k[0])
        scores.append(s[0])
        sizes.append((image.shape[1], image.shape[0]))
    size = np.asarray(sizes, dtype=np.float64)
    fixed = repair(np.asarray(kps, np.float64), np.asarray(scores, np.float64), image_size=size).keypoints
    return region_boxes(fixed, beta=beta) + PIXEL_CENTRE, size[:, 1]


def cache_boxes(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The R0..R4 boxes and source heights of every row of a crop cache (all splits)."""
    from posecrop.cache_reader import part_files, read_split
    from posecrop.records import SPLITS

    boxes, heights = [], []
    for split in SPLITS:
        if not part_files(cache, split):
            continue
        t = read_split(cache, split, ["boxes", "height"]).to_pydict()
        boxes += t["boxes"]
        heights += t["height"]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 5, 4), np.asarray(heights, dtype=np.float64)


def misaligned_box(name: str, width: int, height: int, strength: float, seed: int = 0) -> tuple[float, float, float,
                                                                                                  float]:
    """The source box (x1, y1, x2, y2) a Market-like detector might have cut around a hand-cut person image.

    Deterministic per image name and seed. Zoom z = exp(U(-1, 1) * 0.3 * strength) (the box is z times the
    image, same aspect), centre shifted by N(0, 0.1 * strength) of the image width and height. strength 0 is the
    image itself; strength 1 brings CUHK01's part-centre sd (0.02 of the height) to Market-1501's (0.09-0.14).
    """
    if strength < 0:
        raise ValueError(f"misalignment strength must be >= 0, got {strength}")
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    z = float(np.exp(rng.uniform(-1.0, 1.0) * 0.3 * strength))
    dx, dy = rng.normal(0.0, 0.1 * strength, size=2)
    cx, cy = width * (0.5 + dx), height * (0.5 + dy)
    bw, bh = width * z, height * z
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


def crop_with_edges(image: "np.ndarray", box: tuple[float, float, float, float], out_size: tuple[int, int]
                    ) -> "np.ndarray":
    """Cut box out of an (H, W, 3) uint8 image (edge pixels repeated outside it) and resize to out_size (w, h)."""
    from PIL import Image

    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    pad = int(np.ceil(max(0.0, -x1, -y1, x2 - w, y2 - h))) + 1
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    pil = Image.fromarray(padded)
    return np.asarray(pil.resize(out_size, Image.BILINEAR, box=(x1 + pad, y1 + pad, x2 + pad, y2 + pad)))


def write_misaligned_copy(src_folder: Path, out_folder: Path, strength: float, seed: int = 0) -> Path:
    """Every PNG/JPEG of src_folder, cut by misaligned_box and resized back to its own size, into out_folder (same
    names; atomic per file, existing files kept, so an interrupted copy resumes)."""
    from PIL import Image

    from reidkit.atomic import atomic_write_bytes

    out_folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src_folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"{src_folder}: no images to misalign")
    for p in files:
        target = out_folder / p.name
        if target.exists():
            continue
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise OSError(f"{p}: cannot read the image ({e})") from e
        h, w = arr.shape[:2]
        moved = crop_with_edges(arr, misaligned_box(p.name, w, h, strength, seed), (w, h))
        buf = io.BytesIO()
        Image.fromarray(moved).save(buf, format="PNG" if p.suffix.lower() == ".png" else "JPEG", quality=95)
        atomic_write_bytes(target, buf.getvalue())
    return out_folder


def format_agreement(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per (dataset, part)."""
    lines = ["| images | part | sd of centre (/ height) | strip IoU mean | strip IoU p10 |", "|---|---|---|---|---|"]
    for label, agreement in rows.items():
        for part, v in agreement.items():
            if part == "body":
                continue
            lines.append(f"| {label} | {part} | {v['centre_sd']:.3f} | {v['strip_iou']:.2f} | "
                         f"{v['strip_iou_p10']:.2f} |")
        b = agreement["body"]
        lines.append(f"| {label} | body box top / bottom / height sd | {b['top_sd']:.3f} / {b['bottom_sd']:.3f} / "
                     f"{b['height_sd']:.3f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    folders = []
    while "--images" in argv:
        i = argv.index("--images")
        folders.append(argv[i + 1])
        del argv[i:i + 2]
    rows = {}
    if POSEGAN_CSV.is_dir():
        rows["Market-1501 (pose-gan OpenPose, train + test)"] = strip_agreement(*market_posegan_boxes())
    for cache in argv:
        rows[f"cache {Path(cache).name}"] = strip_agreement(*cache_boxes(Path(cache)))
    for folder in folders:
        rows[f"images {folder} (BlazePose)"] = strip_agreement(*blazepose_boxes(Path(folder)))
    if not rows:
        print(f"[alignment] nothing to measure: no {POSEGAN_CSV} and no cache given", file=sys.stderr)
        return 2
    print(format_agreement(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
