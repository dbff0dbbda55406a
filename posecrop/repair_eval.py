"""How good is canonical-pose repair? Hide joints of complete real poses, repair, compare with the truth.

Joints are hidden the way real poses lose them: each complete pose gets the missing-joint pattern of a
randomly drawn *incomplete* real pose (`empirical`), and, per count c in 1, 3, 6, 10, the pattern of a real
pose that misses exactly c joints (uniformly random joints where no real pose misses c). Counts of 15 and 18
hidden joints exercise the frame fallback. Errors are measured on the hidden joints only, in pixels and as a
fraction of the true body height H (vertical extent of the 18 true joints), plus PCK@0.1H (share of hidden
joints within 0.1 H of the truth). Methods: our canonical bank, the same bank fitted isotropically, and a
mean-pose fill (the bank's mean normalised pose fitted the same way).

The bank should be learned on other poses than the ones evaluated: the default bank comes from the Market-1501
*train* CSV, the evaluation uses the *test* CSV.
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
DEFAULT_COUNTS = (1, 3, 6, 10)
FALLBACK_COUNTS = (15, 18)


class PoseCsvError(ValueError):
    """A pose-gan keypoint CSV is unreadable or malformed; the message names the file (and line)."""


def read_posegan_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a pose-gan / Pose-Transfer keypoint CSV (`name:keypoints_y:keypoints_x`, y list first, -1 = missing).

    Returns image names, keypoints (N, 18, 2) float32 as (x, y) in crop pixels (NaN where missing) and scores
    (N, 18) float32 (1 where present, 0 where missing: the CSV has no confidences). The eyes/ears are already in
    COCO-18 order (REye, LEye, REar, LEar) in these files despite pose-gan's label names (see canonical.py).
    Uses posecrop.sources.posegan_csv when that reader exists.
    """
    try:  # prefer the project's pose-source reader once it exists
        from .sources.posegan_csv import read_posegan_csv as _reader  # type: ignore[attr-defined]
    except ImportError:
        _reader = None
    if _reader is not None:
        return _reader(path)
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PoseCsvError(f"{path}: cannot read ({e.strerror or e})") from e
    if not lines or lines[0].strip().replace(" ", "") != "name:keypoints_y:keypoints_x":
        raise PoseCsvError(f"{path}: expected header 'name:keypoints_y:keypoints_x', got {lines[:1]!r}")
    names, ys, xs = [], [], []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(":")
        try:
            if len(parts) != 3:
                raise ValueError(f"{len(parts)} ':'-separated fields instead of 3")
            y, x = json.loads(parts[1]), json.loads(parts[2])
            if len(y) != NUM_KEYPOINTS or len(x) != NUM_KEYPOINTS:
                raise ValueError(f"{len(y)} y and {len(x)} x values instead of {NUM_KEYPOINTS}")
        except ValueError as e:
            raise PoseCsvError(f"{path}, line {no}: {e}") from e
        names.append(parts[0].strip())
        ys.append(y)
        xs.append(x)
    y = np.asarray(ys, dtype=np.float32).reshape(-1, NUM_KEYPOINTS)
    x = np.asarray(xs, dtype=np.float32).reshape(-1, NUM_KEYPOINTS)
    missing = (x < 0) | (y < 0)
    kps = np.stack([x, y], -1)
    kps[missing] = np.nan
    return names, kps, (~missing).astype(np.float32)


def read_posegan_csvs(paths: Iterable[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, kps, scores = [], [], []
    for p in paths:
        n, k, s = read_posegan_csv(p)
        names += list(n)
        kps.append(k)
        scores.append(s)
    if not kps:
        raise ValueError("no pose-gan CSV given")
    return names, np.concatenate(kps), np.concatenate(scores)


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


def mean_pose_bank(bank: CanonicalBank) -> CanonicalBank:
    """A one-pose bank holding the bank's mean normalised pose (the mean-pose fill baseline)."""
    return CanonicalBank(bank.mean_pose[None], ("mean",), bank.mean_pose, bank.frame, {"baseline": "mean pose"})


def default_methods(bank: CanonicalBank, min_reliable: int = 4) -> dict[str, Method]:
    mean_bank = mean_pose_bank(bank)
    return {
        "canonical bank (ours)": lambda k, s, f: repair(k, s, bank, min_reliable=min_reliable, image_size=f).keypoints,
        "canonical bank, isotropic": lambda k, s, f: repair(k, s, bank, min_reliable=min_reliable, image_size=f,
                                                             anisotropy=np.inf).keypoints,
        "mean-pose fill": lambda k, s, f: repair(k, s, mean_bank, min_reliable=min_reliable, image_size=f).keypoints,
    }


@dataclass
class EvalSetting:
    name: str
    count: int | None  # None = empirical patterns


def evaluate_repair(truth: np.ndarray, patterns: np.ndarray, methods: dict[str, Method],
                    image_size: Sequence[float] | np.ndarray = POSEGAN_FRAME, repeats: int = 3, seed: int = 0,
                    counts: Sequence[int] = DEFAULT_COUNTS, fallback_counts: Sequence[int] = FALLBACK_COUNTS,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Hide joints of the complete poses `truth` (N, 18, 2), repair with each method, score the hidden joints.

    Returns one row per (setting, method): {"setting", "hidden", "method", "joints", "mean_px", "median_px",
    "mean_rel_h", "pck_0.1h"}. Every method sees the same hidden masks.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim != 3 or truth.shape[1:] != (NUM_KEYPOINTS, 2) or not np.isfinite(truth).all():
        raise ValueError(f"truth must be complete poses (N, 18, 2) without NaN, got shape {truth.shape}")
    settings = [EvalSetting("empirical", None)] + [EvalSetting(f"{c} hidden", c) for c in counts] + \
               [EvalSetting(f"{c} hidden (fallback)", c) for c in fallback_counts]
    rng = np.random.default_rng(seed)
    tiled = np.tile(truth, (repeats, 1, 1))
    frames = np.broadcast_to(np.asarray(image_size, dtype=np.float64), (len(tiled), 2))
    rows = []
    for setting in settings:
        hidden = sample_hidden(len(tiled), patterns, setting.count, rng)
        kps = tiled.copy()
        kps[hidden] = np.nan
        scores = (~hidden).astype(np.float32)
        mean_hidden = float(hidden.sum(1).mean())
        for name, method in methods.items():
            pred = method(kps, scores, frames)
            kept = ~hidden
            if not np.array_equal(pred[kept], kps[kept].astype(np.float32)):
                raise AssertionError(f"method {name!r} moved reliable joints")
            rows.append({"setting": setting.name, "hidden": mean_hidden, "method": name,
                         **joint_errors(pred, tiled, hidden)})
        if progress is not None:
            progress(setting.name)
    return rows


def split_complete(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(complete poses (M, 18, 2), missing patterns of the incomplete ones)."""
    present = (np.asarray(scores) > 0) & np.isfinite(keypoints).all(-1)
    complete = present.all(1)
    return np.asarray(keypoints)[complete], missing_patterns(scores, keypoints)


def summary(rows: list[dict], ours: str = "canonical bank (ours)", baseline: str = "mean-pose fill") -> dict:
    """Per setting: our mean error relative to the baseline's (lower is better) and the PCK gain."""
    out = {}
    by = {(r["setting"], r["method"]): r for r in rows}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        a, b = by.get((setting, ours)), by.get((setting, baseline))
        if a and b:
            out[setting] = {"error_ratio": a["mean_px"] / max(b["mean_px"], 1e-12),
                            "pck_gain": a["pck_0.1h"] - b["pck_0.1h"]}
    return out


def joint_source_counts(joint_source: np.ndarray) -> dict:
    return {"detected": int((joint_source == JOINT_DETECTED).sum()), "repaired": int((joint_source == 1).sum()),
            "fallback": int((joint_source == 2).sum())}
