"""Repair of missing / low-confidence joints (paper Sec. 3.2, DESIGN.md section 3): shape model and canonical bank.

`repair` keeps every reliable joint (finite, score >= threshold) as detected and fills the others. The default
method (bank format 2) is the bank's linear-Gaussian *shape model* (posecrop.shape_model): mean pose + 24 principal
directions of aligned training poses; the hidden joints are the conditional mean given the reliable ones, placed
by least-squares isotropic scale + translation, for a whole batch in one (N, 27, 27) batched solve. With fewer
than `min_reliable` reliable joints (source 2 "fallback") the same model is solved with Gaussian priors on the
person's height and centroid in the image frame (medians and spreads measured on the training poses): with no
joint it is the mean pose placed by the frame.

Measured by `python cli.py canonical eval` on the Market-1501 *test* CSV (the bank is learned from the train CSV;
1,014 complete test poses x 3 draws, joints hidden by the real missing patterns of the incomplete test poses;
mean error of the hidden joints, 64x128 crops): shape model 4.18 px, previous canonical-bank fill 6.12, the mean
pose fitted by least squares (scale + shift) 6.12, the same with rotation 5.43, k-NN over the training poses 4.47
(k-NN is slightly better with 12-14 hidden joints: 5.41 vs 5.67 px at 13). Real *incomplete* test poses with 3
more joints hidden (half of them seen from the back, which no complete pose is): 4.03 px vs 6.60 (bank), 15.4
(mean pose, a front view) and 11.9 (k-NN over complete poses). Fallback, 3 / 2 / 1 random joints kept: 5.8 / 7.2
/ 9.3 px vs 7.8 / 10.4 / 12.8 with the bank; with 0-1 joints the front-view mean pose does better on these
front-view test poses (10.6 / 9.0 px vs 12.2 / 9.3). On all real test poses with >= 8 joints (both views) keeping
3 / 1 / 0 of their joints: 7.7 / 11.9 / 15.6 px vs 9.3 / 15.5 / 15.4 (bank) and 16.9 / 18.5 / 17.0 (front-view
mean pose). About 30-50k poses/s on one core (benchmarks/bench_repair.py).

The previous method (`method="bank"`, and the only one for format-1 banks) fits every canonical pose of the
bank to the reliable joints with a closed-form least-squares scale + translation (all N x K fits at once from a
handful of masked sums), picks the canonical pose with the lowest residual and fills the unreliable joints from
it; its fallback places the pose by the image frame (the person fills the frame as detector boxes do; height
fraction and centroid position learned from Market-1501 crops): with 0-1 reliable joints the bank's mean pose,
with 2-3 the best-fitting bank pose under a frame-scale prior, its translation blended from the joints and the
frame.

Per-axis scale (bank method).  The fit lets the horizontal and vertical scales differ a little (ratio within
[1/MAX_ASPECT, MAX_ASPECT], pulled together by the penalty ANISOTROPY_PENALTY * (Axx + Ayy) * (s_x - s_y)^2,
which is scale-free). Reason: re-id crops are detector boxes resized to a fixed shape (Market-1501: every box
becomes 64x128 whatever its aspect), so a person's width-to-height ratio varies from crop to crop; body build and
viewpoint add to it. The penalty keeps poorly constrained fits (e.g. only vertically aligned joints) near
isotropic. Measured on held-out Market poses the difference from an isotropic fit is within noise to slightly
better (mean error of the hidden joints 6.14 vs 6.14 px with real missing patterns, 8.20 vs 8.23 px with 14
hidden), while a free per-axis scale (no penalty) is clearly worse (6.43 px, 9.03 px): the soft version costs
nothing on Market and covers sources whose boxes are resized less uniformly.

The default bank (posecrop/data/canonical_bank.json, format 2: 8 clusters + 6 mirror images = 14 poses and the
shape model) is learned from the pose-gan keypoints of the Market-1501 *training* set (7,166 poses with >= 14
joints incl. the torso) by:

    python cli.py canonical fit \
        --posegan-csv ../shared/realdata/market1501_samples/keypoints_posegan_csv/market-annotation-train.csv \
        --k 8 --seed 0 --out posecrop/data/canonical_bank.json     # shape model: --components 24 --noise 1e-4

and evaluated on the *test* set by `python cli.py canonical eval --posegan-csv
../shared/realdata/market1501_samples/keypoints_posegan_csv/market-annotation-test.csv`.
Market's cameras see few pure side views (shoulders within 4 px of each other in ~6% of the poses, and those
lose joints), so the bank has front, back and three-quarter views rather than profiles.
(The pose-gan CSVs list the eyes/ears in OpenPose's COCO-18 order REye, LEye, REar, LEar, whatever pose-gan's
label names say: index 14 lies on the side of the right shoulder in >99% of the poses.)

Learning a bank (fit_bank, the k-means of canonical poses, mirror images): posecrop.canonical_fit.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from reidkit.atomic import atomic_write_text
from reidkit.errors import ReidError

from .keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS
from .shape_model import ShapeModel

JOINT_DETECTED, JOINT_REPAIRED, JOINT_FALLBACK = 0, 1, 2
DEFAULT_BANK_PATH = Path(__file__).resolve().parent / "data" / "canonical_bank.json"
BANK_FORMAT_VERSION = 2       # 2 adds the shape model; version-1 files (no shape model) still load
READABLE_FORMAT_VERSIONS = (1, 2)
REPAIR_METHODS = ("auto", "shape", "bank")
DEFAULT_K = 8  # clusters; with their mirror images the bank holds up to 2k poses
MARKET_FRAME = (64.0, 128.0)  # (width, height) of a Market-1501 crop: the frame assumed when image_size is None

MAX_ASPECT = 1.5            # bound on the ratio of horizontal to vertical scale of a fit
ANISOTROPY_PENALTY = 1.0    # lambda = ANISOTROPY_PENALTY * (Axx + Ayy): soft pull towards equal scales
SCALE_PRIOR = 1e-6          # vanishing pull of the scale towards the frame scale: decides only degenerate fits
FALLBACK_SCALE_PRIOR = 0.1  # pull towards the frame scale when only 1-3 joints are reliable
FALLBACK_FRAME_WEIGHT = 0.5  # weight (in joints) of the frame placement against the reliable joints' translation

_TORSO = [KEYPOINT_INDEX[n] for n in ("neck", "r_shoulder", "l_shoulder", "r_hip", "l_hip")]


class BankFormatError(ReidError, ValueError):
    """A canonical bank file is unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class FramePrior:
    """Where a person sits in a detector box: the fitted pose's height as a fraction of the frame height and
    the pose centroid as fractions of (width, height)."""

    height_fraction: float = 0.8
    center: tuple[float, float] = (0.5, 0.5)

    def place(self, image_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale (N,) and centroid (N, 2) in pixels for frames (N, 2) of (width, height)."""
        size = np.asarray(image_size, dtype=np.float64)
        return self.height_fraction * size[:, 1], np.asarray(self.center) * size


def _rounded(a: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), 6) + 0.0  # + 0.0 turns -0.0 into 0.0 (stable hashes)


@dataclass(frozen=True, eq=False)
class CanonicalBank:
    """K canonical poses (K, 18, 2) in normalised coordinates, their names, the mean pose (18, 2) used by the
    fallback and the frame prior, and (format 2) the linear-Gaussian `shape_model` that `repair` uses by default.
    `sha256` identifies the bank's content (not its provenance `meta`); a bank without a shape model has the
    content, and so the hash, of a format-1 file."""

    poses: np.ndarray
    names: tuple[str, ...]
    mean_pose: np.ndarray
    frame: FramePrior = field(default_factory=FramePrior)
    meta: dict = field(default_factory=dict)
    shape_model: ShapeModel | None = None

    def __post_init__(self) -> None:
        poses = _rounded(self.poses)
        mean = _rounded(self.mean_pose)
        if poses.ndim != 3 or poses.shape[1:] != (NUM_KEYPOINTS, 2) or len(poses) == 0:
            raise ValueError(f"canonical poses must have shape (K, 18, 2) with K >= 1, got {poses.shape}")
        if mean.shape != (NUM_KEYPOINTS, 2):
            raise ValueError(f"mean pose must have shape (18, 2), got {mean.shape}")
        if len(self.names) != len(poses):
            raise ValueError(f"{len(self.names)} names for {len(poses)} canonical poses")
        if not (np.isfinite(poses).all() and np.isfinite(mean).all()):
            raise ValueError("canonical poses must be finite")
        frame = FramePrior(round(float(self.frame.height_fraction), 6),
                           tuple(round(float(c), 6) for c in self.frame.center))
        if not (len(frame.center) == 2 and np.isfinite(frame.center).all() and 0 < frame.height_fraction < 10):
            raise ValueError(f"frame prior needs a positive height fraction and a 2-d centre, got {frame}")
        if self.shape_model is not None and not isinstance(self.shape_model, ShapeModel):
            raise ValueError(f"shape_model must be a ShapeModel or None, got {type(self.shape_model).__name__}")
        poses.flags.writeable = False   # the sha256 identifies this content: keep it from changing
        mean.flags.writeable = False
        object.__setattr__(self, "poses", poses)
        object.__setattr__(self, "mean_pose", mean)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "frame", frame)

    def __len__(self) -> int:
        return len(self.poses)

    def content(self) -> dict:
        """The JSON-able content that defines the bank (what `sha256` hashes)."""
        doc = {
            "format_version": 1 if self.shape_model is None else BANK_FORMAT_VERSION,
            "joint_names": list(KEYPOINT_NAMES),
            "names": list(self.names),
            "poses": self.poses.tolist(),
            "mean_pose": self.mean_pose.tolist(),
            "frame": {"height_fraction": self.frame.height_fraction, "center": list(self.frame.center)},
        }
        if self.shape_model is not None:
            doc["shape_model"] = self.shape_model.content()
        return doc

    @functools.cached_property
    def sha256(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_json(self) -> str:
        """Pretty JSON with one joint pair per item and one pose per line (small, diff-able)."""
        doc = {**self.content(), "sha256": self.sha256, "meta": self.meta}
        if self.shape_model is not None:
            doc["shape_model_meta"] = self.shape_model.meta
        lines = ["{"]
        items = sorted(doc.items())
        for i, (key, value) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            if key == "poses":
                rows = [json.dumps(p, separators=(",", ":")) for p in value]
                lines.append(' "poses": [\n  ' + ",\n  ".join(rows) + f"\n ]{comma}")
            elif key == "shape_model":
                parts = []
                for sub in sorted(value):
                    v = value[sub]
                    if sub == "components":
                        rows = [json.dumps(c, separators=(",", ":")) for c in v]
                        parts.append('  "components": [\n   ' + ",\n   ".join(rows) + "\n  ]")
                    else:
                        parts.append(f"  {json.dumps(sub)}: {json.dumps(v, separators=(',', ':'))}")
                lines.append(' "shape_model": {\n' + ",\n".join(parts) + f"\n }}{comma}")
            elif key in ("mean_pose", "joint_names", "names"):
                lines.append(f" {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{comma}")
            else:
                text = json.dumps(value, indent=1, sort_keys=True).replace("\n", "\n ")
                lines.append(f" {json.dumps(key)}: {text}{comma}")
        return "\n".join(lines) + "\n}\n"

    def save(self, path: str | Path) -> Path:
        """Write the bank as JSON (atomically, readable by all like any package data file)."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644)
        return path

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "CanonicalBank":
        try:
            doc = json.loads(text)
            if doc.get("format_version") not in READABLE_FORMAT_VERSIONS:
                raise BankFormatError(f"{source}: unsupported canonical bank format_version "
                                      f"{doc.get('format_version')!r}")
            if list(doc.get("joint_names", KEYPOINT_NAMES)) != list(KEYPOINT_NAMES):
                raise BankFormatError(f"{source}: joint order differs from COCO-18 {KEYPOINT_NAMES}")
            frame = doc.get("frame") or {}
            shape = None
            if doc["format_version"] >= 2:
                if not isinstance(doc.get("shape_model"), dict):
                    raise BankFormatError(f"{source}: format_version 2 bank without a shape_model")
                shape = ShapeModel.from_content(doc["shape_model"], doc.get("shape_model_meta"))
            bank = cls(
                poses=np.asarray(doc["poses"], dtype=np.float64),
                names=tuple(doc["names"]),
                mean_pose=np.asarray(doc["mean_pose"], dtype=np.float64),
                frame=FramePrior(float(frame.get("height_fraction", FramePrior.height_fraction)),
                                 tuple(frame.get("center", FramePrior.center))),
                meta=dict(doc.get("meta") or {}),
                shape_model=shape,
            )
        except BankFormatError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise BankFormatError(f"{source}: not a canonical pose bank ({type(e).__name__}: {e})") from e
        stored = doc.get("sha256")
        if stored is not None and stored != bank.sha256:
            raise BankFormatError(f"{source}: sha256 mismatch (file says {stored}, content is {bank.sha256}); "
                                  "the file was edited or damaged")
        return bank


def load_bank(path: str | Path | None = None) -> CanonicalBank:
    """Load a canonical bank from JSON; `None` loads the default shipped with the package. Raises
    BankFormatError naming the file when it is missing, unreadable, malformed or edited (sha256 mismatch)."""
    p = Path(path).resolve() if path is not None else DEFAULT_BANK_PATH
    try:
        st = p.stat()
    except OSError as e:
        raise BankFormatError(f"{p}: cannot read canonical bank ({e.strerror or e})") from e
    return _load_bank_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load_bank_cached(path: str, mtime_ns: int, size: int) -> CanonicalBank:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BankFormatError(f"{p}: cannot read canonical bank ({e})") from e
    return CanonicalBank.from_json(text, source=str(p))


# ----------------------------------------------------------------------------------------------- fitting


@dataclass
class _Fit:
    """Least-squares placement of K canonical poses onto N poses: X ~ s * C + t per axis."""

    scale: np.ndarray     # (N, K, 2)
    shift: np.ndarray     # (N, K, 2)
    rss: np.ndarray       # (N, K) residual sum of squares over the reliable joints (pixels^2)


@dataclass
class PoseMoments:
    """Masked sums of N poses that the fits need (computed once, reused for every canonical pose)."""

    weights: np.ndarray   # (N, 18)
    count: np.ndarray     # (N,) number of weighted joints
    mean: np.ndarray      # (N, 2) weighted mean of the joints
    spread: np.ndarray    # (N, 2) weighted sum of squared deviations from the mean, per axis
    weighted: np.ndarray  # (N, 18, 2) w * X (0 where unweighted)

    @classmethod
    def of(cls, points: np.ndarray, weights: np.ndarray) -> "PoseMoments":
        w = np.asarray(weights, dtype=np.float64)
        X = np.where(w[..., None] > 0, np.asarray(points, dtype=np.float64), 0.0)
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
        n = w.sum(1)
        wX = w[..., None] * X
        mean = wX.sum(1) / np.maximum(n, 1e-12)[:, None]
        spread = np.maximum((wX * X).sum(1) - n[:, None] * mean**2, 0.0)
        return cls(w, n, mean, spread, wX)


def fit_canonical(canon: np.ndarray, points: np.ndarray | PoseMoments, weights: np.ndarray | None,
                  prior_scale: np.ndarray, prior_strength: float = SCALE_PRIOR,
                  anisotropy: float = ANISOTROPY_PENALTY, max_aspect: float = MAX_ASPECT) -> _Fit:
    """Closed-form fit of every canonical pose (K, 18, 2) to every pose (N, 18, 2) over its weighted joints (N, 18).

    Minimises sum_j w_j |s * C_j + t - X_j|^2 + lambda (s_x - s_y)^2 + rho sum_d (s_d - s0)^2 over per-axis scale s
    and translation t, where lambda = anisotropy * (Axx + Ayy) (scale-free, `inf` = isotropic) and
    rho = prior_strength * n * R^2 (R^2 = mean squared joint radius of the canonical poses), so a fit with no
    spread in its joints (1 joint, all joints at one point) takes the prior scale s0 (N,) instead of failing.
    Then s_y >= 1e-3 s0 (never mirrored or flipped) and s_x / s_y within [1/max_aspect, max_aspect].
    Unweighted joints may hold NaN. Poses without any weighted joint get s = s0, t = 0 and rss = 0.
    `points` may be precomputed `PoseMoments` (then `weights` is ignored).
    """
    C = np.asarray(canon, dtype=np.float64)
    m = points if isinstance(points, PoseMoments) else PoseMoments.of(points, weights)
    w, n = m.weights, m.count
    s0 = np.asarray(prior_scale, dtype=np.float64)[:, None]              # (N, 1)
    n_safe = np.maximum(n, 1e-12)[:, None, None]
    # masked sums as matrix products (BLAS): (N, 18) @ (18, K) per axis
    mC = np.stack([w @ C[..., d].T for d in range(2)], -1) / n_safe                          # (N, K, 2)
    A = np.stack([w @ (C[..., d] ** 2).T for d in range(2)], -1) - n[:, None, None] * mC**2  # (N, K, 2)
    B = np.stack([m.weighted[..., d] @ C[..., d].T for d in range(2)], -1) - n[:, None, None] * mC * m.mean[:, None, :]
    A = np.maximum(A, 0.0)
    radius2 = float(np.mean(np.sum((C - C.mean(1, keepdims=True)) ** 2, -1)))
    rho = (prior_strength * radius2 * n)[:, None]                       # (N, 1)
    ax, ay, bx, by = A[..., 0], A[..., 1], B[..., 0] + rho * s0, B[..., 1] + rho * s0
    if np.isinf(anisotropy):
        sx = sy = (bx + by) / np.maximum(ax + ay + 2 * rho, 1e-300)
    else:
        lam = anisotropy * (ax + ay)
        det = np.maximum((ax + lam + rho) * (ay + lam + rho) - lam**2, 1e-300)
        sx = (bx * (ay + lam + rho) + lam * by) / det
        sy = (by * (ax + lam + rho) + lam * bx) / det
    # keep the pose upright and its aspect plausible (a negative scale would mirror or flip the canonical pose)
    sy = np.maximum(sy, 1e-3 * s0)
    sx = np.clip(sx, sy / max_aspect, sy * max_aspect)
    scale = np.stack([sx, sy], -1)
    scale = np.where((n > 0)[:, None, None], scale, s0[..., None])
    shift = m.mean[:, None, :] - scale * mC
    rss = (m.spread[:, None, :] - 2 * scale * B + scale**2 * A).sum(-1)
    rss = np.where(n[:, None] > 0, np.maximum(rss, 0.0), 0.0)
    return _Fit(scale, shift, rss)


# ------------------------------------------------------------------------------------------------ repair


@dataclass
class RepairResult:
    """keypoints (N, 18, 2) float32, all finite; joint_source (N, 18) int8: 0 detected, 1 repaired, 2 fallback;
    canonical_index (N,) the bank pose used (-1 = the bank's mean pose, used by the fallback with 0-1 joints);
    residual (N,) RMS distance of the reliable joints from the fitted canonical pose, as a fraction of the fitted
    body height (0 with fewer than 2 reliable joints)."""

    keypoints: np.ndarray
    joint_source: np.ndarray
    canonical_index: np.ndarray
    residual: np.ndarray

    @property
    def num_repaired(self) -> int:
        return int((self.joint_source == JOINT_REPAIRED).sum())

    @property
    def num_fallback(self) -> int:
        return int((self.joint_source == JOINT_FALLBACK).sum())


def reliable_mask(keypoints: np.ndarray, scores: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """(N, 18) bool: finite coordinates and a score of at least `threshold` (and above 0)."""
    kp = np.asarray(keypoints)
    sc = np.asarray(scores, dtype=np.float64)
    return np.isfinite(kp).all(-1) & np.isfinite(sc) & (sc >= threshold) & (sc > 0)


def _check_poses(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must have shape (N, 18, 2), got {kp.shape}")
    if sc.shape != kp.shape[:2]:
        raise ValueError(f"scores must have shape {kp.shape[:2]}, got {sc.shape}")
    return kp, sc


def _frames(image_size: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray:
    if image_size is None:
        return np.broadcast_to(np.asarray(MARKET_FRAME, dtype=np.float64), (n, 2)).copy()
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape == (2,):
        size = np.broadcast_to(size, (n, 2)).copy()
    if size.shape != (n, 2):
        raise ValueError(f"image_size must have shape ({n}, 2) or (2,) as (width, height), got {size.shape}")
    if not (np.isfinite(size).all() and (size > 0).all()):
        raise ValueError("image_size must hold positive finite (width, height) values")
    return size


def repair(keypoints: np.ndarray, scores: np.ndarray, bank: CanonicalBank | None = None, threshold: float = 0.1,
           min_reliable: int = 4, image_size: np.ndarray | Sequence[float] | None = None, method: str = "auto",
           fallback: str | None = None, anisotropy: float = ANISOTROPY_PENALTY,
           fallback_prior: float = FALLBACK_SCALE_PRIOR, fallback_bank: bool = True,
           fallback_frame_weight: float = FALLBACK_FRAME_WEIGHT) -> RepairResult:
    """Fill missing / low-confidence joints of N poses (N, 18, 2) (module docstring).

    Reliable joints (finite, score >= threshold) are returned unchanged (source 0). Poses with at least
    `min_reliable` of them get their other joints from the model (source 1); the others (source 2) are placed
    with the help of the image frame (`image_size` (N, 2) or (2,) as width, height; None = a Market-1501 crop,
    64x128). `method`: "shape" = the bank's linear-Gaussian shape model (conditional mean of the hidden joints,
    least-squares placement), "bank" = the best-fitting canonical pose, "auto" (default) = "shape" when the bank
    has a shape model (format 2), else "bank". `fallback` (default: the same as the method): "shape" = the shape
    model with Gaussian priors on the person's scale and position in the frame; "bank" = the mean pose for 0-1
    reliable joints, the best bank pose under a frame-scale prior for 2-3 (`fallback_bank`), translated towards
    the reliable joints (`fallback_frame_weight`: the frame's weight in joints). `anisotropy` (bank method) = inf
    gives an isotropic fit. The output never holds NaN or inf. canonical_index is -1 for shape-model fills.
    """
    if method not in REPAIR_METHODS:
        raise ValueError(f"unknown repair method {method!r}; known: {REPAIR_METHODS}")
    kp, sc = _check_poses(keypoints, scores)
    bank = load_bank() if bank is None else bank
    shape = getattr(bank, "shape_model", None)
    if method == "auto":
        method = "shape" if shape is not None else "bank"
    fallback = method if fallback is None else fallback
    if fallback not in ("shape", "bank"):
        raise ValueError(f"unknown fallback {fallback!r}; known: ('shape', 'bank')")
    if "shape" in (method, fallback) and shape is None:
        raise ValueError("repair method 'shape' needs a bank with a shape model (format 2; `canonical fit` "
                         "learns one)")
    N = len(kp)
    frames = _frames(image_size, N)
    rel = reliable_mask(kp, sc, threshold)
    w = rel.astype(np.float64)
    n_rel = rel.sum(1)
    frame_scale, frame_center = bank.frame.place(frames)

    out = np.empty((N, NUM_KEYPOINTS, 2), dtype=np.float64)
    source = np.zeros((N, NUM_KEYPOINTS), dtype=np.int8)
    index = np.full(N, -1, dtype=np.int64)
    residual = np.zeros(N, dtype=np.float64)

    main = n_rel >= max(int(min_reliable), 1)
    fb = ~main
    by_shape = (main & (method == "shape")) | (fb & (fallback == "shape"))
    if by_shape.any():
        s0, c0 = shape.place_in(frames[by_shape])
        pose, theta = shape.fill(kp[by_shape], w[by_shape], s0, c0, frame_prior=fb[by_shape])
        out[by_shape] = pose
        diff = pose - np.where(rel[by_shape][..., None], kp[by_shape], pose)     # 0 at the unreliable joints
        sq = (diff**2).sum((1, 2))
        nb = n_rel[by_shape]
        residual[by_shape] = np.where(nb >= 2, np.sqrt(sq / np.maximum(nb, 1)) / theta[:, 0], 0.0)
    main = main & (method == "bank")
    fb = fb & (fallback == "bank")
    if main.any():
        fit = fit_canonical(bank.poses, kp[main], w[main], frame_scale[main], anisotropy=anisotropy)
        best = np.argmin(fit.rss, axis=1)
        rows = np.arange(len(best))
        s, t = fit.scale[rows, best], fit.shift[rows, best]                      # (M, 2)
        out[main] = bank.poses[best] * s[:, None, :] + t[:, None, :]
        index[main] = best
        residual[main] = np.sqrt(fit.rss[rows, best] / np.maximum(n_rel[main], 1)) / s[:, 1]
    if fb.any():
        nf = n_rel[fb]
        # candidates: the mean pose for 0-1 reliable joints, the whole bank (orientation can be told) for 2+
        use_bank = (nf >= 2) & fallback_bank
        mean_fit = fit_canonical(bank.mean_pose[None], kp[fb], w[fb], frame_scale[fb],
                                 prior_strength=fallback_prior, anisotropy=np.inf)
        s, t, rss = mean_fit.scale[:, 0], mean_fit.shift[:, 0], mean_fit.rss[:, 0]
        canon = np.broadcast_to(bank.mean_pose, (int(fb.sum()), NUM_KEYPOINTS, 2)).copy()
        idx = np.full(int(fb.sum()), -1, dtype=np.int64)
        if use_bank.any():
            sub = np.flatnonzero(fb)[use_bank]
            fit = fit_canonical(bank.poses, kp[sub], w[sub], frame_scale[sub], prior_strength=fallback_prior,
                                anisotropy=np.inf)
            best = np.argmin(fit.rss, axis=1)
            rows = np.arange(len(best))
            s[use_bank], t[use_bank], rss[use_bank] = fit.scale[rows, best], fit.shift[rows, best], fit.rss[rows, best]
            canon[use_bank], idx[use_bank] = bank.poses[best], best
        # the frame places the pose (canonical poses have their centroid at the origin); with few joints the
        # translation is a weighted blend of the frame placement and the joints' own (weight: joints count 1)
        s = np.where((nf == 0)[:, None], frame_scale[fb][:, None], s)
        t_frame = frame_center[fb] - s * canon.mean(1)
        t = (nf[:, None] * t + fallback_frame_weight * t_frame) / np.maximum(nf[:, None] + fallback_frame_weight, 1e-12)
        t = np.where((nf == 0)[:, None], t_frame, t)
        out[fb] = canon * s[:, None, :] + t[:, None, :]
        index[fb] = idx
        residual[fb] = np.where(nf >= 2, np.sqrt(rss / np.maximum(nf, 1)) / s[:, 1], 0.0)

    fill_main = n_rel >= max(int(min_reliable), 1)
    source[fill_main[:, None] & ~rel] = JOINT_REPAIRED
    source[~fill_main[:, None] & ~rel] = JOINT_FALLBACK
    out[rel] = kp[rel]
    # guard against overflow from absurd inputs (coordinates ~1e300): never hand out NaN/inf
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = np.broadcast_to(frame_center[:, None, :], out.shape)[bad]
    residual = np.nan_to_num(residual, nan=0.0, posinf=0.0, neginf=0.0)
    return RepairResult(out.astype(np.float32), source, index, residual)
