"""Plausibility of detected poses: which joints of a pose must not be trusted although the estimator scored them.

A pose estimator can return a confident skeleton that no pedestrian crop can hold: upside down (BlazePose on
CUHK01: head joints at y ~ 228, ankles at y ~ 115, every score > 0.8), the head below the hips, a skeleton much
larger or smaller than the image, all joints on one spot, or a single joint far outside the image. Eq. 1-2 then
gives a body height H <= 0 or boxes that miss the person. `check_poses` finds such poses, vectorised over a batch,
and says per pose which joints to treat as unreliable (on top of the low-score ones) and why; the crop stage then
repairs those joints from the canonical poses, or places the whole pose by the image frame (the frame fallback)
when too few trusted joints remain. No image is dropped for its pose.

Only *reliable* joints (finite, score >= threshold) are judged. The rules, in the order they are applied (each
one sees the joints the earlier rules left trusted), and what they distrust:

  too_large         the face-to-ankle span (mean y of the face joints to mean y of the ankles) is more than
                    MAX_SPAN image heights, or the torso (shoulder level to hip level) longer than MAX_TORSO of
                    it: every joint. Judged first, on every reliable joint: a giant's joints would otherwise look
                    like single joints outside the image.
  outside_image     a joint farther than OUTSIDE_MARGIN (fraction of the image side) outside the image:
                    that joint only; when more than MAX_OUTSIDE_SHARE of the trusted joints are outside, the
                    skeleton is misplaced as a whole: every joint.
  upside_down       the body's vertical order (face, shoulders, hips, knees, ankles: the mean y of each level) is
                    inverted for most pairs of levels present (ORDER_TOLERANCE of the image height decides a tie):
                    every joint (a flipped skeleton has no trustworthy part).
  head_below_hips   a face joint (nose, eyes, ears) below the hips (by more than ORDER_TOLERANCE): those face joints
                    when the shoulders are present and above the hips (the torso is upright, only the head is
                    wrong), else every joint.
  legs_above_neck   a knee or ankle above the shoulders (by more than ORDER_TOLERANCE; an upright torso is
                    required): that joint.
  height            Eq. 1-2's body height H from the trusted head (P1) and lower-leg (P4) joints is <= 0:
                    every joint.
  too_small         the torso is shorter than MIN_TORSO of the image height, or the face-to-ankle span is less
                    than MIN_BODY_SPAN of it: every joint.
  collapsed         at least COLLAPSED_MIN_JOINTS trusted joints all lie within COLLAPSED_EXTENT of the image
                    height (width and height of their box): every joint.

The thresholds are fields of `PlausibilityRules` (one documented place); `DEFAULT_RULES` is what the crop stage
uses. Measured on real poses (thresholds chosen so that real good poses pass):
  * pose-gan Market-1501 CSVs (OpenPose, 64 x 128 crops, 32,668 poses, 28,804 with a joint): 0 poses flagged
    (tighter size limits, min_torso 0.08 / min_body_span 0.25, would flag 1; 0.1 / 0.3 would flag 11). Flipping
    the same poses upside down flags 99.3 % of those with a joint (the rest have a single joint: no order).
  * BlazePose (mediapipe 0.10.21, model_complexity 1, on the 60 x 160 images as they are) on the 3,884 CUHK01
    images: 43 poses flagged (1.1 %): upside_down 30, too_small 9 (skeletons shrunk onto the head),
    outside_image 2, head_below_hips 2, legs_above_neck 1; 41 distrusted as a whole (frame fallback), 2 with
    single joints distrusted and repaired. All 15 poses whose Eq. 1-2 height is H <= 0 after the repair without
    these rules are among them (the crop stage used to drop those images). Known miss: a skeleton shrunk into
    the lower half of the image with a plausible-looking torso (0624003.png: torso 0.09 of the height) passes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from .regions import RegionSpec

RULES: tuple[str, ...] = ("too_large", "outside_image", "upside_down", "head_below_hips", "legs_above_neck", "height",
                          "too_small", "collapsed")

_J = KEYPOINT_INDEX
FACE = [_J[n] for n in ("nose", "r_eye", "l_eye", "r_ear", "l_ear")]
SHOULDERS = [_J[n] for n in ("neck", "r_shoulder", "l_shoulder")]
HIPS = [_J[n] for n in ("r_hip", "l_hip")]
KNEES = [_J[n] for n in ("r_knee", "l_knee")]
ANKLES = [_J[n] for n in ("r_ankle", "l_ankle")]
LEVELS = (FACE, SHOULDERS, HIPS, KNEES, ANKLES)   # top to bottom in an upright pedestrian


@dataclass(frozen=True)
class PlausibilityRules:
    """Thresholds of the plausibility rules (module docstring); lengths are fractions of the image side."""

    outside_margin: float = 0.25       # a joint this far (fraction of width / height) outside the image is wild
    max_outside_share: float = 0.5     # more of the trusted joints outside: the whole skeleton is misplaced
    order_tolerance: float = 0.02      # levels closer than this (fraction of the height) count as level, not inverted
    max_span: float = 1.6              # face level to ankle level more than this many image heights: too large
    max_torso: float = 0.8             # torso (shoulder level to hip level) longer than this fraction of the height
    min_torso: float = 0.06            # ... shorter than this: too small
    min_body_span: float = 0.2         # face level to ankle level shorter than this fraction of the height: too small
    collapsed_extent: float = 0.04     # all trusted joints within this fraction of the height (both sides): collapsed
    collapsed_min_joints: int = 4      # ... judged only with at least this many trusted joints
    enabled: tuple[str, ...] = RULES   # the rules that apply (all by default)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.enabled) - set(RULES))
        if unknown:
            raise ValueError(f"unknown plausibility rule(s) {unknown}; rules are {RULES}")
        object.__setattr__(self, "enabled", tuple(self.enabled))

    def as_dict(self) -> dict:
        return {**asdict(self), "enabled": list(self.enabled)}


DEFAULT_RULES = PlausibilityRules()


@dataclass
class PlausibilityResult:
    """unreliable (N, 18) bool: joints the rules distrust (reliable by score, implausible by geometry);
    whole (N,) bool: the rules distrust the pose as a whole; reasons (N,) the fired rules joined by ',' in RULES
    order ('' for a plausible pose); fired (N, len(RULES)) bool per rule."""

    unreliable: np.ndarray
    whole: np.ndarray
    fired: np.ndarray
    reasons: list[str]

    @property
    def implausible(self) -> np.ndarray:
        return self.fired.any(1)

    def counts(self) -> dict[str, int]:
        """Poses flagged by each rule (a pose may be flagged by several)."""
        return {rule: int(n) for rule, n in zip(RULES, self.fired.sum(0))}


def _level_y(y: np.ndarray, ok: np.ndarray, joints: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean y (N,) of the trusted joints of one level and whether the level has any."""
    m = ok[:, joints]
    n = m.sum(1)
    mean = np.where(m, y[:, joints], 0.0).sum(1) / np.maximum(n, 1)
    return mean, n > 0


def _frames(image_size: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape == (2,):
        size = np.broadcast_to(size, (n, 2))
    if size.shape != (n, 2) or not (np.isfinite(size).all() and (size > 0).all()):
        raise ValueError(f"image_size must be (width, height) > 0 of shape (2,) or ({n}, 2), got {size.shape}")
    return size


def check_poses(keypoints: np.ndarray, scores: np.ndarray, image_size: np.ndarray | Sequence[float],
                threshold: float = 0.1, rules: PlausibilityRules = DEFAULT_RULES,
                spec: RegionSpec | None = None) -> PlausibilityResult:
    """Judge N poses (N, 18, 2) with scores (N, 18) in images of `image_size` ((N, 2) or (2,) as width, height).

    Joints with a score below `threshold` (or non-finite) are not judged: the repair treats them as unreliable
    anyway. `spec` gives the head (P1) and lower-leg (P4) joints of the Eq. 1-2 height (default regions).
    Pure and vectorised; see the module docstring for the rules."""
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 2) or sc.shape != kp.shape[:2]:
        raise ValueError(f"expected keypoints (N, 18, 2) and scores (N, 18), got {kp.shape} and {sc.shape}")
    N = len(kp)
    size = _frames(image_size, N)
    w, h = size[:, 0:1], size[:, 1:2]                                   # (N, 1)
    x, y = kp[..., 0], kp[..., 1]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(kp).all(-1) & np.isfinite(sc) & (sc >= threshold) & (sc > 0)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    fired = np.zeros((N, len(RULES)), dtype=bool)
    bad = np.zeros((N, NUM_KEYPOINTS), dtype=bool)    # distrusted joints
    whole = np.zeros(N, dtype=bool)

    def fire(rule: str, poses: np.ndarray, joints: np.ndarray | None = None) -> None:
        nonlocal whole
        if rule not in rules.enabled:
            return
        fired[:, RULES.index(rule)] |= poses
        if joints is None:
            whole |= poses
        else:
            bad[:] |= joints & poses[:, None]

    def trusted() -> np.ndarray:
        return ok & ~bad & ~whole[:, None]

    # too_large, first (its joints would otherwise look like wild joints outside the image): the torso and the
    # face-to-ankle span against the image height, from the level means (robust to a single wild joint)
    (y_sh, has_sh), (y_hip, has_hip) = _level_y(y, ok, SHOULDERS), _level_y(y, ok, HIPS)
    (y_face, has_face), (y_ank, has_ank) = _level_y(y, ok, FACE), _level_y(y, ok, ANKLES)
    torso = np.where(has_sh & has_hip, np.abs(y_hip - y_sh), np.nan) / h[:, 0]
    body = np.where(has_face & has_ank, np.abs(y_ank - y_face), np.nan) / h[:, 0]
    with np.errstate(invalid="ignore"):
        fire("too_large", (torso > rules.max_torso) | (body > rules.max_span))

    # outside_image: single wild joints, or a skeleton mostly outside the image
    t = trusted()
    mx, my = rules.outside_margin * w, rules.outside_margin * h
    outside = t & ((x < -mx) | (x > w + mx) | (y < -my) | (y > h + my))
    mostly = outside.sum(1) > rules.max_outside_share * np.maximum(t.sum(1), 1)
    fire("outside_image", outside.any(1) & ~mostly, outside)
    fire("outside_image", mostly)

    # upside_down: the vertical order of the levels, pair by pair
    t = trusted()
    levels = [_level_y(y, t, j) for j in LEVELS]
    tol = rules.order_tolerance * h[:, 0]
    inverted = np.zeros(N, dtype=np.int64)
    upright = np.zeros(N, dtype=np.int64)
    for i in range(len(LEVELS)):
        for k in range(i + 1, len(LEVELS)):
            both = levels[i][1] & levels[k][1]
            d = levels[k][0] - levels[i][0]           # > 0: level k below level i, as it should be
            inverted += both & (d < -tol)
            upright += both & (d > tol)
    fire("upside_down", inverted > upright)

    # head_below_hips / legs_above_neck: a part on the wrong side of an upright torso
    t = trusted()
    (y_sh, has_sh), (y_hip, has_hip) = _level_y(y, t, SHOULDERS), _level_y(y, t, HIPS)
    torso_up = has_sh & has_hip & (y_hip - y_sh > tol)
    face = np.zeros((N, NUM_KEYPOINTS), dtype=bool)
    face[:, FACE] = True
    low_face = t & face & has_hip[:, None] & (y > (y_hip + tol)[:, None])
    head_low = low_face.any(1)
    fire("head_below_hips", head_low & torso_up, low_face)
    fire("head_below_hips", head_low & ~torso_up)
    t = trusted()
    legs = np.zeros((N, NUM_KEYPOINTS), dtype=bool)
    legs[:, KNEES + ANKLES] = True
    high_legs = t & legs & torso_up[:, None] & (y < (y_sh - tol)[:, None])
    fire("legs_above_neck", high_legs.any(1), high_legs)

    # height: Eq. 1-2 from the trusted head and lower-leg joints
    t = trusted()
    masks = (spec or RegionSpec()).masks()
    p1, p4 = t & masks[1], t & masks[4]
    top = 2 * np.where(p1, y, np.inf).min(1) - np.where(p1, y, -np.inf).max(1)
    bottom = 4 / 3 * np.where(p4, y, -np.inf).max(1) - 1 / 3 * np.where(p4, y, np.inf).min(1)
    with np.errstate(invalid="ignore"):
        fire("height", p1.any(1) & p4.any(1) & ~(bottom - top > 0))

    # too_small / collapsed: the skeleton's size against the image
    t = trusted()
    n_t = t.sum(1)
    span_x = np.where(t, x, -np.inf).max(1) - np.where(t, x, np.inf).min(1)
    span_y = np.where(t, y, -np.inf).max(1) - np.where(t, y, np.inf).min(1)
    (y_sh, has_sh), (y_hip, has_hip) = _level_y(y, t, SHOULDERS), _level_y(y, t, HIPS)
    torso = np.where(has_sh & has_hip, np.abs(y_hip - y_sh), np.nan) / h[:, 0]
    (y_face, has_face), (y_ank, has_ank) = _level_y(y, t, FACE), _level_y(y, t, ANKLES)
    body = np.where(has_face & has_ank, y_ank - y_face, np.nan) / h[:, 0]
    with np.errstate(invalid="ignore"):
        fire("too_small", (torso < rules.min_torso) | (body < rules.min_body_span))
        small_box = np.maximum(span_x, span_y) < rules.collapsed_extent * h[:, 0]
        fire("collapsed", (n_t >= rules.collapsed_min_joints) & small_box)

    unreliable = ok & (bad | whole[:, None])
    reasons = [",".join(r for r, f in zip(RULES, row) if f) for row in fired]
    return PlausibilityResult(unreliable, whole, fired, reasons)


def distrust(scores: np.ndarray, result: PlausibilityResult) -> np.ndarray:
    """Scores with the joints the rules distrust set to 0 (so that the canonical repair treats them as unreliable)."""
    return np.where(result.unreliable, 0.0, np.asarray(scores, dtype=np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------------ the cache's pose_issue

OUTCOMES = ("repaired", "fallback")   # the distrusted joints were filled by the repair / the frame placed the pose
# reasons the crop stage adds after the repair, as its last line of defence (the pose then takes the frame fallback)
LAST_RESORT = {"regions": "Eq. 1-2 could not place the regions of the repaired pose",
               "repair_failed": "the canonical repair raised an error"}


def format_issue(rules: str, outcome: str) -> str:
    """The cache's `pose_issue` value: 'upside_down: fallback', 'outside_image: repaired', '' when plausible."""
    if not rules:
        return ""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    return f"{rules}: {outcome}"


def parse_issue(issue: str | None) -> tuple[list[str], str]:
    """'upside_down,height: fallback' -> (['upside_down', 'height'], 'fallback'); '' -> ([], '')."""
    if not issue:
        return [], ""
    rules, _, outcome = issue.rpartition(": ")
    return [r for r in rules.split(",") if r], outcome


def issue_counts(issues: Sequence[str | None]) -> dict:
    """Counts behind the report and `info`: poses with an issue, how many were repaired / took the frame
    fallback, and per rule (a pose flagged by several rules counts for each)."""
    by_rule: dict[str, int] = {}
    outcome = {o: 0 for o in OUTCOMES}
    n = 0
    for issue in issues:
        rules, result = parse_issue(issue)
        if not rules:
            continue
        n += 1
        outcome[result] = outcome.get(result, 0) + 1
        for r in rules:
            by_rule[r] = by_rule.get(r, 0) + 1
    order = {r: i for i, r in enumerate((*RULES, *LAST_RESORT))}
    return {"implausible": n, **outcome, "by_rule": dict(sorted(by_rule.items(), key=lambda kv: order.get(kv[0], 99)))}
