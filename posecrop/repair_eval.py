"""How good is joint repair? Hide joints of real poses, repair, compare with the truth.

Joints are hidden the way real poses lose them: each complete held-out pose gets the missing-joint pattern of a
randomly drawn *incomplete* real pose ("all real patterns"), and, per count c of hidden joints that real poses
show (1-14 on Market), the pattern of a real pose that misses exactly c joints. No pose-gan pose misses 15-17
joints, so 15-18 hidden joints (the frame fallback, fewer than 4 reliable) are drawn uniformly at random. Errors
are measured on the hidden joints only, in pixels and as a fraction of the true body height H (vertical extent of
the 18 true joints), plus PCK@0.1H (share of hidden joints within 0.1 H of the truth).

The complete poses are a biased sample: on Market none is seen from the back. So `evaluate_incomplete` adds real
*incomplete* poses (>= 8 joints, their own gaps kept) with 3 more of their joints hidden, overall and split into
back and front views, and the fallback on all real poses with >= 8 joints keeping only 3, 1 or 0 of them.

Methods (`default_methods`): the shape model (the default repair), the canonical bank (the previous one),
(a) the mean of the complete training poses placed by least squares with isotropic scale + translation (the
issue's baseline) and (a') with rotation too (full similarity), (b) k-NN regression (k = 5) over the complete
training poses and their mirror images (each placed on the reliable joints by least-squares scale +
translation; the k with the smallest residual averaged), and the mean pose placed by the frame alone.

The bank should be learned on other poses than the ones evaluated: the default bank comes from the Market-1501
*train* CSV, the evaluation uses the *test* CSV (and the train CSV for (a) and (b)):

    python cli.py canonical eval \
        --posegan-csv ../shared/realdata/market1501_samples/keypoints_posegan_csv/market-annotation-test.csv

Measured with the shipped bank (1,014 complete test poses x 3 draws; mean px of the hidden joints, shape model /
bank / (a) / (a') / (b)): all real patterns 4.18 / 6.12 / 6.12 / 5.43 / 4.47; 1 hidden 2.12 / 3.75 / 4.36 / 3.21 /
2.51; 5 hidden 3.74 / 6.06 / 6.10 / 5.27 / 4.29; 10 hidden 4.92 / 6.56 / 6.57 / 6.11 / 4.97; 14 hidden 6.60 / 8.10
/ 7.50 / 7.97 / 5.79; fallback 3 joints kept 5.82 / 7.80 / 6.36 / 6.33 / 5.83, 1 joint 9.32 / 12.82 / 8.95 / 8.51 /
10.37, none 12.24 / 13.52 / 10.64 (all baselines place the front-view mean by the frame). Incomplete poses +3
hidden: 4.03 / 6.60 / 15.38 / 15.79 / 11.88 (back views 4.27 / 6.69 / 23.39 / 24.54 / 18.79). Real poses keeping
3 / 1 / 0 joints: shape model 7.66 / 11.85 / 15.58, bank 9.29 / 15.52 / 15.44, (a) 16.88 / 18.47 / 17.00.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .canonical import JOINT_DETECTED, CanonicalBank, repair
from .keypoints import NUM_KEYPOINTS

POSEGAN_FRAME = (64.0, 128.0)  # pose-gan CSV coordinates are pixels of a 64 (w) x 128 (h) Market-1501 crop
FALLBACK_COUNTS = (15, 16, 17, 18)


def read_posegan_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image names, keypoints (N, 18, 2) float32 in 64x128 crop pixels (NaN where missing) and scores (N, 18)
    (1 present / 0 missing) of one pose-gan CSV, through the project's reader (posecrop.sources.posegan_csv;
    it raises PoseReadError naming the file for a malformed one)."""
    from .sources.posegan_csv import PoseGanCsvSource

    source = PoseGanCsvSource([path])
    return [str(n) for n in source.names], source.keypoints, source.scores


def read_posegan_csvs(paths: Iterable[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`read_posegan_csv` over several files, concatenated."""
    names, kps, scores = [], [], []
    for p in paths:
        n, k, s = read_posegan_csv(p)
        names += list(n)
        kps.append(k)
        scores.append(s)
    if not kps:
        raise ValueError("no pose-gan CSV given")
    return names, np.concatenate(kps), np.concatenate(scores)


def read_openpose_folder(folder: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every person of every `*_keypoints.json` below `folder` (OpenPose COCO-18 or BODY_25, current or legacy
    key) as COCO-18 keypoints (P, 18, 2) and confidences (P, 18); names are `<file>#<person>`. Image sizes are not
    known here, so no frame prior can be learned from these (fit_bank keeps the default one)."""
    from .keypoints import mark_missing
    from .sources.base import PoseReadError
    from .sources.openpose_json import parse_people

    folder = Path(folder)
    if not folder.is_dir():
        raise PoseReadError(f"{folder}: not a folder of OpenPose *_keypoints.json files")
    files = sorted(folder.rglob("*_keypoints.json"))
    if not files:
        raise PoseReadError(f"{folder}: no *_keypoints.json file found (recursively)")
    names, kps, scores = [], [], []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PoseReadError(f"{f}: unreadable OpenPose JSON ({e})") from e
        k, c = parse_people(data, str(f))
        k, c = mark_missing(k, c)
        names += [f"{f.relative_to(folder)}#{i}" for i in range(len(k))]
        kps.append(k)
        scores.append(c)
    return names, np.concatenate(kps), np.concatenate(scores)


def read_cache_poses(cache_dir: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The detected joints of a posecrop crop cache (every CACHE/<split>/part-*.parquet): image ids, keypoints
    (N, 18, 2) with repaired / fallback joints set missing, scores (N, 18) and image sizes (N, 2) as (width, height).
    A cache written with one bank can so teach the next."""
    import pyarrow.parquet as pq

    from reidkit.atomic import is_temporary

    cache_dir = Path(cache_dir)
    parts = sorted(p for p in cache_dir.glob("*/part-*.parquet") if not is_temporary(p))
    if not parts:
        raise FileNotFoundError(f"{cache_dir}: no <split>/part-*.parquet files: not a posecrop crop cache")
    names, kps, scores, sizes = [], [], [], []
    columns = ["image_id", "keypoints", "scores", "joint_source", "width", "height"]
    for part in parts:
        try:
            table = pq.read_table(part, columns=columns)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types; name the file
            raise ValueError(f"{part}: cannot read the pose columns {columns} ({e})") from e
        n = table.num_rows
        k = np.asarray(table.column("keypoints").combine_chunks().flatten().flatten(), np.float32)
        k = k.reshape(n, NUM_KEYPOINTS, 2)
        c = np.asarray(table.column("scores").combine_chunks().flatten(), np.float32).reshape(n, NUM_KEYPOINTS)
        src = np.asarray(table.column("joint_source").combine_chunks().flatten(), np.int8).reshape(n, NUM_KEYPOINTS)
        detected = src == JOINT_DETECTED
        k[~detected] = np.nan
        c = np.where(detected, c, 0.0).astype(np.float32)
        names += [str(v) for v in table.column("image_id").to_pylist()]
        kps.append(k)
        scores.append(c)
        sizes.append(np.stack([np.asarray(table.column("width"), np.float64),
                               np.asarray(table.column("height"), np.float64)], -1))
    return names, np.concatenate(kps), np.concatenate(scores), np.concatenate(sizes)


# --------------------------------------------------------------------------------------------- hiding


def missing_patterns(scores: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
    """(M, 18) bool missing-joint masks of the incomplete poses that still have at least one joint."""
    missing = ~(np.asarray(scores) > 0)
    if keypoints is not None:
        missing |= ~np.isfinite(keypoints).all(-1)
    count = missing.sum(1)
    return missing[(count > 0) & (count < NUM_KEYPOINTS)]


def sample_hidden(n: int, patterns: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    """(n, 18) bool masks: real patterns (all of them if count is None, else those with exactly `count` joints),
    or `count` uniformly random joints when no real pattern has that count."""
    if count is None:
        pool = patterns
    else:
        pool = patterns[patterns.sum(1) == count]
    if len(pool):
        return pool[rng.integers(len(pool), size=n)].copy()
    hidden = np.zeros((n, NUM_KEYPOINTS), bool)
    order = np.argsort(rng.random((n, NUM_KEYPOINTS)), axis=1)[:, :count]
    np.put_along_axis(hidden, order, True, axis=1)
    return hidden


# -------------------------------------------------------------------------------------------- metrics


def body_height(truth: np.ndarray) -> np.ndarray:
    """(N,) vertical extent of the (complete) true poses."""
    return truth[..., 1].max(-1) - truth[..., 1].min(-1)


def joint_errors(pred: np.ndarray, truth: np.ndarray, hidden: np.ndarray) -> dict:
    """Error statistics over the hidden joints: mean px, mean / H, PCK@0.1H, median px."""
    err = np.linalg.norm(pred.astype(np.float64) - truth, axis=-1)           # (N, 18)
    rel = err / np.maximum(body_height(truth), 1e-9)[:, None]
    e, r = err[hidden], rel[hidden]
    return {"joints": int(hidden.sum()), "mean_px": float(e.mean()), "median_px": float(np.median(e)),
            "mean_rel_h": float(r.mean()), "pck_0.1h": float((r <= 0.1).mean())}


Method = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

NEW = "shape model (new default)"
PREVIOUS = "canonical bank (previous)"
LS_MEAN = "(a) mean pose, LS scale+shift"
LS_SIMILARITY = "(a') mean pose, LS similarity"
KNN = "(b) k-NN over train poses"
FRAME_ONLY = "mean pose placed by the frame"
DEFAULT_KNN = 5


def _keep_reliable(pred: np.ndarray, kps: np.ndarray, scores: np.ndarray) -> np.ndarray:
    rel = np.isfinite(kps).all(-1) & (np.asarray(scores) > 0)
    out = np.asarray(pred, dtype=np.float32).copy()
    out[rel] = kps[rel]
    return out


def knn_fill(train: np.ndarray, kps: np.ndarray, scores: np.ndarray, k: int = DEFAULT_KNN,
             prior_scale: np.ndarray | None = None, weak: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """Nearest-neighbour regression: every normalised training pose (K, 18, 2) is placed on the reliable joints of
    each pose by least-squares scale + translation; the `k` with the smallest residual (in body heights^2) are
    averaged, placed, as the pose (N, 18, 2). `prior_scale` (N,) pixels per body height decides fits with no
    spread; rows in `weak` (N,) bool (too few joints) are pulled towards it like the bank's fallback."""
    from .canonical import FALLBACK_SCALE_PRIOR, SCALE_PRIOR, fit_canonical

    kps = np.asarray(kps, dtype=np.float64)
    w = (np.isfinite(kps).all(-1) & (np.asarray(scores) > 0)).astype(np.float64)
    N = len(kps)
    s0 = np.full(N, 100.0) if prior_scale is None else np.asarray(prior_scale, dtype=np.float64)
    weak = np.zeros(N, bool) if weak is None else np.asarray(weak, bool)
    out = np.empty((N, NUM_KEYPOINTS, 2))
    k = max(1, min(int(k), len(train)))
    for lo in range(0, N, chunk):
        sl = slice(lo, min(N, lo + chunk))
        for strength, rows in ((SCALE_PRIOR, ~weak[sl]), (FALLBACK_SCALE_PRIOR, weak[sl])):
            idx = np.flatnonzero(rows) + lo
            if not len(idx):
                continue
            fit = fit_canonical(train, kps[idx], w[idx], s0[idx], prior_strength=strength, anisotropy=np.inf)
            dist = fit.rss / np.maximum(fit.scale[..., 1] ** 2, 1e-12)
            nb = np.argpartition(dist, k - 1, axis=1)[:, :k]                                  # (M, k)
            r = np.arange(len(idx))[:, None]
            placed = train[nb] * fit.scale[r, nb][:, :, None, :] + fit.shift[r, nb][:, :, None, :]
            out[idx] = placed.mean(1)
    return out


def training_poses(keypoints: np.ndarray, scores: np.ndarray, mirror: bool = True) -> np.ndarray:
    """The complete training poses, normalised (centroid 0, height 1), with their mirror images: k-NN's memory."""
    from .canonical_fit import _normalise, mirror_poses

    present = (np.asarray(scores) > 0) & np.isfinite(keypoints).all(-1)
    P = _normalise(np.asarray(keypoints, dtype=np.float64)[present.all(1)])
    if mirror:
        P = np.concatenate([P, _normalise(mirror_poses(P)[0])])
    return P


def default_methods(bank: CanonicalBank, min_reliable: int = 4, train: np.ndarray | None = None,
                    knn: int = DEFAULT_KNN) -> dict[str, Method]:
    """The compared repairs, each (keypoints, scores, frames) -> keypoints with the reliable joints kept:
    the shape model (if the bank has one), the canonical bank, (a) the mean pose placed by least squares
    (isotropic scale + translation) and (a') with rotation (full similarity), (b) k-NN regression over `train`
    (normalised complete training poses; skipped when None) and the mean pose placed by the frame alone. The mean
    pose of (a), (a') and the frame placement is the mean of the aligned complete training poses (`train`; the
    pose the issue's baseline places, best for complete test poses), without `train` the shape model's mean (the
    mean of all aligned training poses, front and back views: narrower shoulders). Baselines (a), (a'), (b) fit
    the joints alone whatever their number (only a vanishing pull to the frame scale decides fits without spread;
    k-NN uses the bank's fallback pull below `min_reliable` joints)."""
    from .shape_model import fit_template, learn_shape_model

    shape = bank.shape_model
    mean = shape.mean if shape is not None else bank.mean_pose
    if train is not None:
        mean = learn_shape_model(train, components=0, mirror=False).mean
    place = shape.place_in if shape is not None else bank.frame.place
    methods: dict[str, Method] = {}
    if shape is not None:
        methods[NEW] = lambda k, s, f: repair(k, s, bank, min_reliable=min_reliable, image_size=f,
                                              method="shape").keypoints
    methods[PREVIOUS] = lambda k, s, f: repair(k, s, bank, min_reliable=min_reliable, image_size=f,
                                               method="bank").keypoints

    def ls(rotation: bool) -> Method:
        def run(k, s, f):
            w = (np.isfinite(k).all(-1) & (s > 0)).astype(np.float64)
            s0, c0 = place(f)
            return _keep_reliable(fit_template(mean, k, w, s0, c0, rotation=rotation), k, s)
        return run

    methods[LS_MEAN] = ls(False)
    methods[LS_SIMILARITY] = ls(True)
    if train is not None:
        def knn_method(k, s, f):
            s0, c0 = place(f)
            n = (np.isfinite(k).all(-1) & (s > 0)).sum(1)
            pred = knn_fill(train, k, s, knn, s0, n < min_reliable)
            none = n == 0            # no joint to find neighbours by: the mean pose placed by the frame
            pred[none] = mean[None] * s0[none, None, None] + c0[none, None, :]
            return _keep_reliable(pred, k, s)
        methods[f"{KNN} (k={knn})"] = knn_method

    def frame_only(k, s, f):
        s0, c0 = place(f)
        return _keep_reliable(mean[None] * s0[:, None, None] + c0[:, None, :], k, s)
    methods[FRAME_ONLY] = frame_only
    return methods


@dataclass
class EvalSetting:
    name: str
    count: int | None  # None = empirical patterns


def evaluate_repair(truth: np.ndarray, patterns: np.ndarray, methods: dict[str, Method],
                    image_size: Sequence[float] | np.ndarray = POSEGAN_FRAME, repeats: int = 3, seed: int = 0,
                    counts: Sequence[int] | None = None, fallback_counts: Sequence[int] = FALLBACK_COUNTS,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Hide joints of the complete poses `truth` (N, 18, 2), repair with each method, score the hidden joints.

    Settings: every real missing pattern ("all real patterns"), then per count in `counts` (None: every count
    that some real pattern has) the real patterns with exactly that many hidden joints, then `fallback_counts`
    (random joints where no real pattern has that count). Returns one row per (setting, method): {"setting",
    "count" (None for all patterns), "hidden" (mean hidden joints), "patterns" (real / random), "method",
    "joints", "mean_px", "median_px", "mean_rel_h", "pck_0.1h"}. Every method sees the same hidden masks.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim != 3 or truth.shape[1:] != (NUM_KEYPOINTS, 2) or not np.isfinite(truth).all():
        raise ValueError(f"truth must be complete poses (N, 18, 2) without NaN, got shape {truth.shape}")
    if counts is None:
        counts = [int(c) for c in np.unique(patterns.sum(1))]
    settings = [EvalSetting("all real patterns", None)] + [EvalSetting(f"{c} hidden", c) for c in counts] + \
               [EvalSetting(f"{c} hidden (fallback)", c) for c in fallback_counts]
    rng = np.random.default_rng(seed)
    tiled = np.tile(truth, (repeats, 1, 1))
    frames = np.broadcast_to(np.asarray(image_size, dtype=np.float64), (len(tiled), 2))
    rows = []
    for setting in settings:
        hidden = sample_hidden(len(tiled), patterns, setting.count, rng)
        count = setting.count
        real = count is None or bool((patterns.sum(1) == count).any())
        kps = tiled.copy()
        kps[hidden] = np.nan
        scores = (~hidden).astype(np.float32)
        mean_hidden = float(hidden.sum(1).mean())
        for name, method in methods.items():
            pred = method(kps, scores, frames)
            kept = ~hidden
            if not np.array_equal(pred[kept], kps[kept].astype(np.float32)):
                raise AssertionError(f"method {name!r} moved reliable joints")
            rows.append({"setting": setting.name, "count": count, "hidden": mean_hidden,
                         "patterns": "real" if real else "random", "method": name,
                         **joint_errors(pred, tiled, hidden)})
        if progress is not None:
            progress(setting.name)
    return rows


def evaluate_incomplete(keypoints: np.ndarray, scores: np.ndarray, methods: dict[str, Method],
                        image_size: Sequence[float] | np.ndarray = POSEGAN_FRAME, extra: int = 3,
                        min_present: int = 8, seed: int = 0, max_poses: int | None = None, keep: int | None = None,
                        views: bool = True) -> list[dict]:
    """The view the complete poses cannot give: real *incomplete* poses (>= `min_present` joints, their own
    missing joints stay missing) lose `extra` more of their present joints at random (or, with `keep`, all but
    `keep` of them: the frame fallback on real poses); each method repairs, the newly hidden joints are scored
    (H: vertical extent of the present joints). In pose-gan's Market-1501 CSVs no complete pose is seen from the
    back, while about half of these are; rows are given for all of them and (`views`) split by view (back: right
    shoulder right of the left one in the image, both present; front: the other way round)."""
    kps = np.asarray(keypoints, dtype=np.float64)
    present = (np.asarray(scores) > 0) & np.isfinite(kps).all(-1)
    n = present.sum(1)
    pick = np.flatnonzero((n >= min_present) & (n < NUM_KEYPOINTS if keep is None else True))
    rng = np.random.default_rng(seed)
    if max_poses is not None and len(pick) > max_poses:
        pick = np.sort(rng.choice(pick, max_poses, replace=False))
    if len(pick) == 0:
        return []
    truth, present = kps[pick], present[pick]
    order = np.argsort(np.where(present, rng.random(present.shape), 2.0), axis=1)
    hidden = np.zeros_like(present)
    if keep is None:
        np.put_along_axis(hidden, order[:, :extra], True, axis=1)
        hidden &= present
        label_of = f"incomplete, +{extra} hidden"
    else:
        kept = np.zeros_like(present)
        np.put_along_axis(kept, order[:, :keep], True, axis=1)
        hidden = present & ~kept
        label_of = f"real poses, {keep} kept (fallback)"
    shown = present & ~hidden
    inputs = np.where(shown[..., None], truth, np.nan)
    frames = np.broadcast_to(np.asarray(image_size, dtype=np.float64), (len(truth), 2))
    r_sh, l_sh = 2, 5
    both = present[:, r_sh] & present[:, l_sh]
    back = both & (truth[:, r_sh, 0] > truth[:, l_sh, 0])
    front = both & (truth[:, r_sh, 0] < truth[:, l_sh, 0])
    masked = np.where(present[..., None], truth, np.nan)
    height = np.nanmax(masked[..., 1], 1) - np.nanmin(masked[..., 1], 1)
    rows = []
    for name, method in methods.items():
        pred = method(inputs, shown.astype(np.float32), frames)
        if not np.array_equal(pred[shown], inputs[shown].astype(np.float32)):
            raise AssertionError(f"method {name!r} moved reliable joints")
        err = np.linalg.norm(pred.astype(np.float64) - np.nan_to_num(truth), axis=-1)
        rel = err / np.maximum(height, 1e-9)[:, None]
        splits = ((("all", np.ones(len(truth), bool)),)
                  + ((("back views", back), ("front views", front)) if views else ()))
        for label, rows_of in splits:
            m = hidden & rows_of[:, None]
            if not m.any():
                continue
            e, r = err[m], rel[m]
            rows.append({"setting": f"{label_of}: {label}", "count": None, "poses": int(rows_of.sum()),
                         "method": name, "joints": int(m.sum()), "mean_px": float(e.mean()),
                         "median_px": float(np.median(e)), "mean_rel_h": float(r.mean()),
                         "pck_0.1h": float((r <= 0.1).mean())})
    return rows


def split_complete(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(complete poses (M, 18, 2), missing patterns of the incomplete ones)."""
    present = (np.asarray(scores) > 0) & np.isfinite(keypoints).all(-1)
    complete = present.all(1)
    return np.asarray(keypoints)[complete], missing_patterns(scores, keypoints)


def summary(rows: list[dict], ours: str = NEW, baseline: str = LS_MEAN) -> dict:
    """Per setting: our mean error relative to the baseline's (lower is better) and the PCK gain."""
    out = {}
    by = {(r["setting"], r["method"]): r for r in rows}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        a, b = by.get((setting, ours)), by.get((setting, baseline))
        if a and b:
            out[setting] = {"error_ratio": a["mean_px"] / max(b["mean_px"], 1e-12),
                            "pck_gain": a["pck_0.1h"] - b["pck_0.1h"]}
    return out


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG: mean error of the hidden joints (pixels) against their number, one line per method; the fallback
    counts (random joints) are shaded; the 'all real patterns' figure is written in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reidkit.atomic import atomic_write_bytes

    rows = report["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    fallback = [r["count"] for r in rows if r["count"] is not None and r["patterns"] == "random"]
    if fallback:
        ax.axvspan(min(fallback) - 0.5, max(fallback) + 0.5, color="0.92", zorder=0)
        ax.text(min(fallback) - 0.4, 0.98, "fallback\n(random joints)", transform=ax.get_xaxis_transform(),
                va="top", fontsize=8, color="0.35")
    for i, m in enumerate(methods):
        pts = sorted((r["count"], r["mean_px"]) for r in rows if r["method"] == m and r["count"] is not None)
        total = next((r["mean_px"] for r in rows if r["method"] == m and r["count"] is None), float("nan"))
        style = dict(lw=2.6, color="C3") if m == NEW else dict(lw=1.4, color=f"C{[0, 1, 2, 4, 5, 6, 7][i % 7]}")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, label=f"{m}: {total:.2f} px overall",
                **style)
    ax.set_xlabel("hidden joints (real missing patterns with that count; shaded: random joints)")
    ax.set_ylabel("mean error of the hidden joints (px, 64x128 crop)")
    ax.set_title(f"Joint repair on {report['data']['complete_used']} held-out complete poses "
                 f"x {report['settings']['repeats']} draws")
    counts = sorted({r["count"] for r in rows if r["count"] is not None})
    ax.set_xticks(counts)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    inc = [r for r in report.get("incomplete_rows", [])
           if r["setting"].startswith("incomplete") and r["setting"].endswith(("all", "back views"))]
    if inc:
        lines = ["real incomplete poses, 3 more joints hidden (px):"]
        for setting in dict.fromkeys(r["setting"] for r in inc):
            cells = {r["method"]: r["mean_px"] for r in inc if r["setting"] == setting}
            lines.append(f"{setting.split(': ')[-1]}: " + ", ".join(f"{m.split(' ')[0]} {cells[m]:.1f}"
                                                                   for m in methods if m in cells))
        ax.text(0.99, 0.03, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5,
                bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def evaluation_report(bank: CanonicalBank, keypoints: np.ndarray, scores: np.ndarray,
                      image_size: Sequence[float] = POSEGAN_FRAME, repeats: int = 3, seed: int = 0,
                      max_poses: int | None = None, min_reliable: int = 4, counts: Sequence[int] | None = None,
                      fallback_counts: Sequence[int] = FALLBACK_COUNTS, train: np.ndarray | None = None,
                      knn: int = DEFAULT_KNN, progress: Callable[[str], None] | None = None) -> dict:
    """The whole measurement on held-out poses (keypoints (N, 18, 2), scores (N, 18), all in one frame size):
    complete poses are the truth, the incomplete ones give the missing patterns; `train` (normalised training
    poses, `training_poses`) enables the k-NN baseline. JSON-able."""
    truth, patterns = split_complete(keypoints, scores)
    if len(truth) == 0:
        raise ValueError("no complete pose among the evaluation poses: nothing to compare with")
    if len(patterns) == 0:
        raise ValueError("no incomplete pose among the evaluation poses: no real missing-joint pattern to sample")
    if max_poses is not None and len(truth) > max_poses:
        pick = np.random.default_rng(seed).choice(len(truth), max_poses, replace=False)
        truth = truth[np.sort(pick)]
    methods = default_methods(bank, min_reliable, train, knn)
    rows = evaluate_repair(truth, patterns, methods, image_size=image_size, repeats=repeats, seed=seed,
                           counts=counts, fallback_counts=fallback_counts, progress=progress)
    incomplete = evaluate_incomplete(keypoints, scores, methods, image_size=image_size, seed=seed,
                                     max_poses=max_poses)
    for keep in (3, 1, 0):
        incomplete += evaluate_incomplete(keypoints, scores, methods, image_size=image_size, seed=seed,
                                          max_poses=max_poses, keep=keep, views=False)
    if progress is not None:
        progress("incomplete poses")
    return {
        "bank": {"sha256": bank.sha256, "poses": len(bank), "names": list(bank.names), "meta": bank.meta},
        "data": {"poses": int(len(keypoints)), "complete_used": int(len(truth)), "missing_patterns": int(len(patterns)),
                 "frame": [float(v) for v in image_size]},
        "settings": {"repeats": repeats, "seed": seed, "min_reliable": min_reliable,
                     "counts": None if counts is None else list(counts), "fallback_counts": list(fallback_counts),
                     "knn": knn if train is not None else None,
                     "knn_memory": None if train is None else int(len(train))},
        "metrics": {"mean_px": "mean distance of the hidden joints from the truth, pixels",
                    "median_px": "median of the same", "mean_rel_h": "mean distance / true body height H "
                    "(vertical extent of the 18 true joints)", "pck_0.1h": "share of hidden joints within 0.1 H"},
        "rows": rows,
        "incomplete_rows": incomplete,
        "summary": summary(rows + incomplete),
    }
