"""Learning a canonical bank (`python cli.py canonical fit`): training poses -> k-means clusters under the bank's
own least-squares fit (with their mirror images) + the shape model (posecrop.shape_model) + the frame prior,
written as the bank file that posecrop.canonical reads and repairs with.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .canonical import (_TORSO, ANISOTROPY_PENALTY, DEFAULT_K, CanonicalBank, FramePrior, PoseMoments, _check_poses,
                        _Fit, _frames, fit_canonical, reliable_mask)
from .keypoints import FLIP_PERMUTATION, KEYPOINT_INDEX, NUM_KEYPOINTS
from .shape_model import DEFAULT_COMPONENTS, DEFAULT_NOISE, learn_shape_model_incomplete


def _normalise(poses: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Centroid of the (masked) joints to the origin, vertical extent to 1."""
    P = np.asarray(poses, dtype=np.float64)
    m = np.ones(P.shape[:-1], bool) if mask is None else mask
    Pm = np.where(m[..., None], P, np.nan)
    c = np.nanmean(Pm, axis=-2, keepdims=True)
    h = np.nanmax(Pm[..., 1], -1) - np.nanmin(Pm[..., 1], -1)
    return (P - c) / np.maximum(h, 1e-9)[..., None, None]


def mirror_poses(poses: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Left/right mirror of poses centred on x = 0: x -> -x and left/right joints swapped."""
    perm = list(FLIP_PERMUTATION)
    flipped = poses[..., perm, :].copy()
    flipped[..., 0] *= -1
    return flipped, (None if mask is None else mask[..., perm])


def _fit_distance(centres: np.ndarray, P: PoseMoments, anisotropy: float) -> tuple[np.ndarray, _Fit]:
    fit = fit_canonical(centres, P, None, np.ones(len(P.count)), anisotropy=anisotropy)
    dist = fit.rss / np.maximum(fit.scale[..., 0] * fit.scale[..., 1], 1e-12)   # canonical units^2
    return dist, fit


def _kmeans(P: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator, iterations: int,
            anisotropy: float, tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray, float]:
    """Masked k-means of normalised poses under scale + translation alignment (k-means++ seeding from the
    complete poses); stops when fewer than `tolerance` of the poses change cluster.
    Returns centres (k, 18, 2), labels (N,), total distance."""
    moments = PoseMoments.of(P, w)
    complete = np.flatnonzero(w.min(1) > 0)
    seeds = PoseMoments.of(P[complete], w[complete])
    chosen = [complete[rng.integers(len(complete))]]
    for _ in range(1, k):
        d, _ = _fit_distance(_normalise(P[chosen]), seeds, anisotropy)
        d = d.min(1)
        p = d / d.sum() if d.sum() > 0 else None
        chosen.append(complete[rng.choice(len(complete), p=p)])
    C = _normalise(P[chosen])
    labels = np.full(len(P), -1)
    for _ in range(iterations):
        dist, fit = _fit_distance(C, moments, anisotropy)
        new = dist.argmin(1)
        changed = np.mean(new != labels)
        labels = new
        if changed < tolerance:
            break
        rows = np.arange(len(P))
        s, t = fit.scale[rows, labels], fit.shift[rows, labels]
        Q = (P - t[:, None, :]) / s[:, None, :]            # each pose in its centre's frame
        for c in range(k):
            members = labels == c
            if not members.any():  # empty cluster: re-seed with the complete pose that fits worst
                worst = complete[np.argmax(dist[complete, labels[complete]])]
                C[c] = _normalise(P[worst])
                continue
            wc = w[members]
            total = wc.sum(0)
            mean = (wc[..., None] * Q[members]).sum(0) / np.maximum(total, 1e-12)[:, None]
            C[c] = np.where(total[:, None] > 0, mean, C[c])
        C = _normalise(C)
    dist, _ = _fit_distance(C, moments, anisotropy)
    labels = dist.argmin(1)
    return C, labels, float(dist.min(1).sum())


def describe_pose(pose: np.ndarray) -> str:
    """A short name for a normalised canonical pose, directions in image terms:
    view `front` / `back` (left shoulder on the image right / left), `-quarter` for three-quarter views
    (narrower shoulders) or `side` (shoulders overlap); `-head-left` / `-head-right` where the nose is clearly
    off the neck; legs `apart` / `straight` / `together` (ankles wider than / like / narrower than the hips)
    or `crossed` (ankles on the other side than the hips: a stride seen from the side)."""
    J = KEYPOINT_INDEX
    shoulders = pose[J["l_shoulder"], 0] - pose[J["r_shoulder"], 0]
    side = "front" if shoulders > 0 else "back"
    view = side if abs(shoulders) > 0.21 else (f"{side}-quarter" if abs(shoulders) > 0.07 else "side")
    nose = pose[J["nose"], 0] - pose[J["neck"], 0]
    head = ("-head-left" if nose < 0 else "-head-right") if abs(nose) > 0.04 else ""
    hips = pose[J["l_hip"], 0] - pose[J["r_hip"], 0]
    ankles = pose[J["l_ankle"], 0] - pose[J["r_ankle"], 0]
    ratio = ankles / hips if abs(hips) > 0.03 else 1.0
    legs = "crossed" if ratio < -0.2 else "together" if ratio < 0.5 else "straight" if ratio < 1.3 else "apart"
    return f"{view}{head}-{legs}"


def select_training_poses(keypoints: np.ndarray, scores: np.ndarray, threshold: float = 0.1,
                          min_joints: int = 14) -> np.ndarray:
    """(N,) bool: poses confident and complete enough to learn canonical poses from: at least `min_joints`
    reliable joints, including the torso (neck, shoulders, hips)."""
    rel = reliable_mask(keypoints, scores, threshold)
    return (rel.sum(1) >= min_joints) & rel[:, _TORSO].all(1)


def pose_distance(a: np.ndarray, b: np.ndarray, anisotropy: float = ANISOTROPY_PENALTY) -> np.ndarray:
    """(len(a), len(b)) RMS joint distance between normalised poses after fitting each b onto each a
    (scale + translation), in units of body height."""
    moments = PoseMoments.of(a, np.ones(a.shape[:2]))
    d, _ = _fit_distance(b, moments, anisotropy)
    return np.sqrt(d / NUM_KEYPOINTS)


def fit_bank(keypoints: np.ndarray, scores: np.ndarray, k: int = DEFAULT_K, threshold: float = 0.1, seed: int = 0,
             min_joints: int = 14, mirror: bool = True, image_size: np.ndarray | Sequence[float] | None = None,
             iterations: int = 60, restarts: int = 3, anisotropy: float = ANISOTROPY_PENALTY,
             duplicate_distance: float = 0.02, meta: dict | None = None,
             progress: Callable[[str], None] | None = None, components: int | None = DEFAULT_COMPONENTS,
             noise: float = DEFAULT_NOISE) -> CanonicalBank:
    """Learn canonical poses from the confident, (nearly) complete poses among (N, 18, 2) / (N, 18).

    Poses with at least `min_joints` reliable joints (torso included) are normalised (translation + scale) and
    clustered into `k` canonical poses by masked k-means whose distance is the residual of the same scale +
    translation fit `repair` uses (missing joints simply do not count; seeds from complete poses, best of
    `restarts`). With `mirror`, the left/right mirror image of every canonical pose joins the bank unless it
    is within `duplicate_distance` (RMS, in body heights) of a pose already there: a side or three-quarter view
    facing left implies its twin facing right, a symmetric front view is its own mirror. (Mirroring the
    training poses instead would split the k clusters between twins; Market-1501's cameras see people
    walk in preferred directions, and clustering the poses as they are, then adding the mirrors, measured
    better: see `canonical eval`.) The bank holds between k and 2k poses, largest clusters first, then mirrors.
    The mean pose is the k = 1 solution, made left/right symmetric. With `image_size` (the frames the poses were
    detected in, (N, 2) or (2,)) the frame prior (height fraction, centroid position) is measured as medians
    over the training poses. `progress` is called after each k-means restart.
    The shape model (posecrop.shape_model, `components` principal directions, noise variance `noise`; None = no
    shape model, a format-1 bank) is learned from the *complete* confident poses and their mirror images; its
    frame prior (with spreads) is measured like the bank's.
    """
    kp, sc = _check_poses(keypoints, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep = select_training_poses(kp, sc, threshold, min_joints)
    rel = reliable_mask(kp, sc, threshold)[keep]
    P = _normalise(np.where(rel[..., None], kp[keep], np.nan), rel)
    P = np.where(rel[..., None], P, 0.0)
    n_complete = int(rel.all(1).sum())
    if n_complete < k:
        raise ValueError(f"fit_bank needs at least k={k} complete confident poses to seed k-means, "
                         f"got {n_complete} (of {len(kp)} poses, {int(keep.sum())} with >= {min_joints} joints)")
    w = rel.astype(np.float64)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, restarts)):
        run = _kmeans(P, w, k, rng, iterations, anisotropy)
        if best is None or run[2] < best[2]:
            best = run
        if progress is not None:
            progress("k-means restart")
    centres, labels, _ = best
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    centres, sizes = centres[order], sizes[order]
    origin = [f"cluster of {int(n)} poses" for n in sizes]
    if mirror:
        flipped, _ = mirror_poses(centres)
        for i, f in enumerate(flipped):
            if pose_distance(f[None], centres)[0].min() > duplicate_distance:
                centres = np.concatenate([centres, f[None]])
                origin.append(f"mirror of pose {i}")
    mean, _, _ = _kmeans(P, w, 1, np.random.default_rng(seed), iterations, anisotropy)
    mean = mean[0]
    flipped, _ = mirror_poses(mean)
    mean = _normalise((mean + flipped) / 2)   # a mean pose has no preferred side

    names, seen = [], {}
    for c in centres:
        base = describe_pose(c)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")

    frame = FramePrior()
    if image_size is not None:
        frames = _frames(image_size, len(kp))[keep]
        fit = fit_canonical(mean[None], kp[keep], rel.astype(np.float64), frames[:, 1], anisotropy=np.inf)
        s, t = fit.scale[:, 0, 1], fit.shift[:, 0]
        frame = FramePrior(float(np.median(s / frames[:, 1])), tuple(float(v) for v in np.median(t / frames, 0)))
    info = {"num_input_poses": int(len(kp)), "num_training_poses": int(keep.sum()), "num_complete": n_complete,
            "k": int(k), "mirror": bool(mirror), "threshold": float(threshold), "min_joints": int(min_joints),
            "seed": int(seed), "origin": origin, **(meta or {})}
    shape = None
    if components is not None:
        shape = learn_shape_model_incomplete(kp[keep], rel, components=components, noise=noise,
                                             meta={"learned_from": f"{int(keep.sum())} poses of {len(kp)} "
                                                   f"(>= {min_joints} joints, torso included)"})
        if image_size is not None:
            shape = shape.with_frame(_frames(image_size, len(kp))[keep], kp[keep], rel.astype(np.float64))
    return CanonicalBank(centres, tuple(names), mean, frame, info, shape)
