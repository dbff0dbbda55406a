"""Synthetic Market-1501-layout dataset of rendered pedestrians (`python cli.py synth`).

The built-in default dataset for the demo and the tests. Identities come in look-alike *families*:
members share most of their clothing and differ in one part only (hat -> head, shirt pattern or bag ->
upper body, trousers -> legs, shoes -> lower legs), so a model has to look at the right body part.
Cameras differ in scene and lighting; boxes are detector-like (shifted, scaled, cut) and the
OpenPose-format keypoints fail the way real estimators do (faces in back views, occluded wrists,
joints outside the image, ~10 % of images with no person found).

Layout written under OUT (exactly Market-1501's, plus keypoints):

    bounding_box_train/PPPP_cCsS_FFFFFF_BB.jpg    train identities
    bounding_box_test/...                         gallery: test identities, 0000 distractors, -1 junk
    query/..._00.jpg                              one hand-drawn-like box per test identity and camera
    keypoints/<folder>/<stem>_keypoints.json      OpenPose 1.3 JSON, COCO-18, output-image pixels
    keypoints_truth.json                          the true joints of every image (for repair quality)
    synth.json                                    config, identities, cameras and the summary
    preview.png                                   contact sheet: a few identities across cameras

Everything is seeded: each image draws from its own `numpy.random.Generator` keyed by
(seed, kind, pid, camera, index), so the output does not depend on generation order.

Modules: this one (config, identities, the plan, writing the dataset), posecrop.synth_render (drawing a
pedestrian in a scene), posecrop.synth_estimator (the simulated pose estimator and its OpenPose JSON).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from posecrop import synth_render as R
from posecrop.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from reidkit.atomic import atomic_write_bytes, atomic_write_text
from reidkit.errors import ReidError

from .synth_estimator import KeypointFaults, openpose_json, simulate_estimator

SPLIT_FOLDERS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
KEYPOINTS_FOLDER = "keypoints"
TRUTH_FILE = "keypoints_truth.json"
INFO_FILE = "synth.json"
PREVIEW_FILE = "preview.png"
FORMAT_VERSION = 1

# seed-sequence keys for the independent random streams
_K_PLAN, _K_FAMILY, _K_CAMERA, _K_SCENE, _K_TRACK, _K_IMAGE, _K_DISTRACTOR, _K_JUNK = range(1, 9)


class SynthError(ReidError, ValueError):
    """The output folder cannot take a synthetic dataset (names the folder and the problem)."""


@dataclass(frozen=True)
class SynthConfig:
    """What `generate` renders. The defaults are the `demo` preset: 40 train + 40 test identities, 6 cameras,
    2-4 cameras per identity, 4 images per identity and camera -> ~1,140 images (512 train, 108 query,
    522 gallery incl. 60 distractors and 30 junk), about 15 s to render on one CPU core."""

    num_ids_train: int = 40
    num_ids_test: int = 40
    num_cameras: int = 6
    cameras_per_id: tuple[int, int] = (2, 4)     # each identity is seen by this many cameras (min, max)
    images_per_id_per_camera: int = 4            # train / gallery images of one identity in one camera
    num_distractors: int = 60                    # pid 0000 gallery images (background, fragments)
    num_junk: int = 30                           # pid -1 gallery images (badly boxed test identities)
    image_height: int = 128
    image_width: int = 64
    seed: int = 0
    family_size: int = 3                         # identities per look-alike family
    # detector-like boxes
    person_height: tuple[float, float] = (0.68, 1.0)  # person height / image height (gallery, train)
    box_shift: float = 0.07                      # std of the person's offset, fraction of image width/height
    cut_rate: float = 0.2                        # part of the head or the legs outside the box
    occlusion_rate: float = 0.12                 # a pole, railing or passer-by in front
    query_box_jitter: float = 0.4                # query boxes are hand-drawn: this fraction of the jitter, no cuts
    jpeg_quality: tuple[int, int] = (60, 92)
    camera_variation: float = 1.0                # lighting differences between cameras (0 = all alike)
    faults: KeypointFaults = field(default_factory=KeypointFaults)

    def __post_init__(self) -> None:
        if self.num_ids_train < 1 or self.num_ids_test < 1:
            raise ValueError("num_ids_train and num_ids_test must be >= 1")
        if self.num_ids_train + self.num_ids_test > 9999:
            raise ValueError("at most 9999 identities fit Market-1501's 4-digit names")
        if not 2 <= self.num_cameras <= 6:
            raise ValueError(f"num_cameras must be in 2..6 (Market-1501 has cameras c1-c6), got {self.num_cameras}")
        lo, hi = self.cameras_per_id
        if not 2 <= lo <= hi <= self.num_cameras:
            raise ValueError(f"cameras_per_id must satisfy 2 <= min <= max <= num_cameras, got {self.cameras_per_id}")
        if self.images_per_id_per_camera < 1:
            raise ValueError("images_per_id_per_camera must be >= 1")
        if self.num_distractors < 0 or self.num_junk < 0:
            raise ValueError("num_distractors and num_junk must be >= 0")
        if self.image_height < 32 or self.image_width < 16:
            raise ValueError(f"image size {self.image_height}x{self.image_width} is too small (min 32x16)")
        if self.family_size < 1:
            raise ValueError("family_size must be >= 1")
        a, b = self.person_height
        if not 0.2 <= a <= b <= 3.0:
            raise ValueError(f"person_height must satisfy 0.2 <= min <= max <= 3, got {self.person_height}")
        for name in ("cut_rate", "occlusion_rate", "query_box_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.box_shift < 0:
            raise ValueError("box_shift must be >= 0")
        if not 0.0 <= self.camera_variation <= 2.0:
            raise ValueError(f"camera_variation must be in [0, 2], got {self.camera_variation}")
        q0, q1 = self.jpeg_quality
        if not 1 <= q0 <= q1 <= 100:
            raise ValueError(f"jpeg_quality must satisfy 1 <= min <= max <= 100, got {self.jpeg_quality}")


PRESETS: dict[str, SynthConfig] = {
    "demo": SynthConfig(),
    "tiny": SynthConfig(num_ids_train=3, num_ids_test=3, num_cameras=3, cameras_per_id=(2, 3),
                        images_per_id_per_camera=3, num_distractors=4, num_junk=2),
}


def preset(name: str) -> SynthConfig:
    """The named preset (`demo`: ~1,200 images, 40 + 40 identities, 6 cameras; `tiny`: ~60 images)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown synth preset {name!r} (known: {', '.join(PRESETS)})") from None


@dataclass
class SynthSummary:
    out: str
    num_ids_train: int
    num_ids_test: int
    num_cameras: int
    images: dict[str, int]        # per split: train / query / gallery
    distractors: int
    junk: int
    no_person: int                # images whose keypoint file has `people: []`
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.images.values())


# ---------------------------------------------------------------- identities


def _rng(cfg: SynthConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed & 0xFFFFFFFF, *key])


def _pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _random_look(rng: np.random.Generator) -> R.Look:
    hats = ["none"] + list(R.HAT_COLOURS)
    return R.Look(
        skin=_pick(rng, R.SKIN_TONES), hair=_pick(rng, R.HAIR_COLOURS), long_hair=bool(rng.random() < 0.3),
        hat=_pick(rng, hats, p=[0.6] + [0.4 / (len(hats) - 1)] * (len(hats) - 1)),
        shirt=_pick(rng, list(R.SHIRT_COLOURS)), sleeves=_pick(rng, ["short", "long"]),
        pattern=_pick(rng, ["plain", "stripes"], p=[0.75, 0.25]),
        bag=_pick(rng, ["none", "backpack", "shoulder"], p=[0.5, 0.3, 0.2]),
        bag_colour=_pick(rng, list(R.BAG_COLOURS)),
        trousers=_pick(rng, list(R.TROUSER_COLOURS)),
        trouser_kind=_pick(rng, ["long", "shorts", "skirt"], p=[0.65, 0.22, 0.13]),
        shoes=_pick(rng, list(R.SHOE_COLOURS)),
        shade=tuple(int(v) for v in rng.integers(-14, 15, 3)),  # type: ignore[arg-type]
        height_scale=float(rng.uniform(0.93, 1.05)), width_scale=float(rng.uniform(0.88, 1.12)),
    )


# Which part a sibling changes, and how.
_CUE_PARTS = {"hat": "head", "shoes": "lower_leg", "trousers": "upper_leg", "bag": "upper_body",
              "pattern": "upper_body", "sleeves": "upper_body"}


def _sibling(base: R.Look, cue: str, rng: np.random.Generator) -> R.Look:
    def other(options, current):
        rest = [o for o in options if o != current]
        return _pick(rng, rest)

    look = dataclasses.replace(base, shade=tuple(int(v) for v in rng.integers(-14, 15, 3)),
                               height_scale=float(rng.uniform(0.93, 1.05)),
                               width_scale=float(rng.uniform(0.88, 1.12)))
    if rng.random() < 0.3:
        look = dataclasses.replace(look, hair=_pick(rng, R.HAIR_COLOURS), skin=_pick(rng, R.SKIN_TONES))
    if cue == "hat":
        return dataclasses.replace(look, hat=other(["none"] + list(R.HAT_COLOURS), base.hat))
    if cue == "shoes":
        return dataclasses.replace(look, shoes=other(list(R.SHOE_COLOURS), base.shoes))
    if cue == "trousers":
        return dataclasses.replace(look, trousers=other(list(R.TROUSER_COLOURS), base.trousers))
    if cue == "bag":
        bag = other(["none", "backpack", "shoulder"], base.bag)
        return dataclasses.replace(look, bag=bag, bag_colour=_pick(rng, list(R.BAG_COLOURS)))
    if cue == "pattern":
        return dataclasses.replace(look, pattern=other(["plain", "stripes"], base.pattern))
    return dataclasses.replace(look, sleeves=other(["short", "long"], base.sleeves))


@dataclass(frozen=True)
class Identity:
    pid: int
    split: str          # "train" or "test"
    family: int
    cue: str            # the part that tells this identity from its family's first member ("" for the first)
    look: R.Look
    cameras: tuple[int, ...]  # 0-based camera indices


def _assign_pids(cfg: SynthConfig) -> tuple[list[int], list[int]]:
    total = cfg.num_ids_train + cfg.num_ids_test
    perm = _rng(cfg, _K_PLAN, 0).permutation(np.arange(1, total + 1))
    return sorted(int(p) for p in perm[: cfg.num_ids_train]), sorted(int(p) for p in perm[cfg.num_ids_train:])


def make_identities(cfg: SynthConfig) -> list[Identity]:
    """All identities, train and test, in look-alike families of `cfg.family_size`."""
    train, test = _assign_pids(cfg)
    out: list[Identity] = []
    seen: set[tuple] = set()
    family = 0
    for split, code, pids in (("train", 0, train), ("test", 1, test)):
        for start in range(0, len(pids), cfg.family_size):
            members = pids[start:start + cfg.family_size]
            rng = _rng(cfg, _K_FAMILY, code, family)
            base = _random_look(rng)
            while base.categorical() in seen:
                base = _random_look(rng)
            cues = list(rng.permutation(list(_CUE_PARTS)))
            for k, pid in enumerate(members):
                cue = "" if k == 0 else str(cues[(k - 1) % len(cues)])
                look = base if k == 0 else _sibling(base, cue, rng)
                while look.categorical() in seen:
                    look = _sibling(base, cue, rng) if rng.random() < 0.8 else _random_look(rng)
                seen.add(look.categorical())
                n_cam = int(rng.integers(cfg.cameras_per_id[0], cfg.cameras_per_id[1] + 1))
                cams = tuple(sorted(int(c) for c in rng.choice(cfg.num_cameras, n_cam, replace=False)))
                out.append(Identity(pid, split, family, cue, look, cams))
            family += 1
    return out


# ---------------------------------------------------------------- the plan: one spec per image


@dataclass(frozen=True)
class ImageSpec:
    split: str          # train / query / gallery
    kind: str           # person / distractor-background / distractor-fragment / junk
    pid: int            # as in the file name: >0 identity, 0 distractor, -1 junk
    cam: int            # 0-based
    frame: int
    box_index: int
    index: int          # position in the tracklet (person images) or running number
    look_pid: int       # identity drawn (junk: the test identity it shows); 0 = a random passer-by

    @property
    def name(self) -> str:
        p = "-1" if self.pid < 0 else f"{self.pid:04d}"
        return f"{p}_c{self.cam + 1}s1_{self.frame:06d}_{self.box_index:02d}.jpg"

    @property
    def relpath(self) -> str:
        return f"{SPLIT_FOLDERS[self.split]}/{self.name}"

    @property
    def keypoints_relpath(self) -> str:
        return f"{KEYPOINTS_FOLDER}/{SPLIT_FOLDERS[self.split]}/{self.name[:-4]}_keypoints.json"


def plan_images(cfg: SynthConfig, identities: list[Identity]) -> list[ImageSpec]:
    """Every image of the dataset, in a fixed order (names are unique)."""
    specs: list[ImageSpec] = []
    n = cfg.images_per_id_per_camera
    for ident in identities:
        for cam in ident.cameras:
            start = int(_rng(cfg, _K_TRACK, ident.pid, cam, 0).integers(0, 8000)) * 5 + 1
            boxes = _rng(cfg, _K_TRACK, ident.pid, cam, 1).integers(1, 8, n)
            split = "train" if ident.split == "train" else "gallery"
            for i in range(n):
                specs.append(ImageSpec(split, "person", ident.pid, cam, start + 25 * i, int(boxes[i]), i, ident.pid))
            if ident.split == "test":
                specs.append(ImageSpec("query", "person", ident.pid, cam, start + 25 * n, 0, n, ident.pid))
    test_pids = [i.pid for i in identities if i.split == "test"]
    rng = _rng(cfg, _K_PLAN, 1)
    used: set[str] = {s.name for s in specs}
    for kind_pid, count in ((0, cfg.num_distractors), (-1, cfg.num_junk)):
        for i in range(count):
            while True:
                cam = int(rng.integers(cfg.num_cameras))
                frame = int(rng.integers(1, 60000))
                box = int(rng.integers(1, 8))
                if kind_pid == 0:
                    kind = "distractor-background" if rng.random() < 0.4 else "distractor-fragment"
                    look_pid = 0
                else:
                    kind, look_pid = "junk", int(test_pids[int(rng.integers(len(test_pids)))])
                spec = ImageSpec("gallery", kind, kind_pid, cam, frame, box, i, look_pid)
                if spec.name not in used:
                    used.add(spec.name)
                    specs.append(spec)
                    break
    return specs


# ---------------------------------------------------------------- rendering one image


@dataclass
class Rendered:
    jpeg: bytes
    keypoints_json: str
    truth: dict[str, Any]
    no_person: bool


def _scene_size(cfg: SynthConfig) -> tuple[int, int]:
    return (R.RENDER_SCALE * cfg.image_width * 4, R.RENDER_SCALE * cfg.image_height * 2)


def camera_setup(cfg: SynthConfig, cam: int) -> tuple[R.CameraLook, Any]:
    """The camera's look and its scene canvas (render scale)."""
    look = R.camera_look(cam, _rng(cfg, _K_CAMERA, cam), cfg.jpeg_quality, cfg.camera_variation)
    return look, R.scene_canvas(look, _rng(cfg, _K_SCENE, cam), _scene_size(cfg))


def _placement(cfg: SynthConfig, spec: ImageSpec, look: R.Look, rng: np.random.Generator) -> tuple[R.Placement, str]:
    W, H = cfg.image_width, cfg.image_height
    u = rng.random(4)
    z = rng.normal(0.0, 1.0, 2)
    jit = cfg.query_box_jitter if spec.split == "query" else 1.0
    lo, hi = cfg.person_height
    if spec.split == "query":
        lo, hi = lo + (hi - lo) * 0.4, hi
    height = H * (lo + (hi - lo) * u[0]) * look.height_scale
    x_c = W / 2 + jit * cfg.box_shift * W * z[0]
    y_top = (H - height) / 2 + jit * cfg.box_shift * H * z[1]
    cut = "none"
    if spec.kind == "distractor-fragment":
        height = H * (1.8 + 1.4 * u[1])
        y_top = -u[2] * (height - 0.6 * H)
        x_c = W * (0.2 + 0.6 * u[3])
        cut = "fragment"
    elif spec.kind == "junk":
        if u[1] < 0.5:
            height, x_c = H * (0.95 + 0.1 * u[2]), W * (0.5 + (0.55 + 0.2 * u[3]) * (1 if u[3] < 0.5 else -1))
        else:
            height, y_top = H * (0.4 + 0.15 * u[2]), H * (0.05 + 0.45 * u[3])
        cut = "junk"
    elif spec.split != "query" and u[1] < cfg.cut_rate:
        if u[2] < 0.35:
            cut, y_top = "head", -height * (0.04 + 0.12 * u[3])
        else:
            cut, y_top = "legs", H - height * (0.78 + 0.17 * u[3])
    return R.Placement(float(x_c), float(y_top), float(height)), cut


def _tracklet_pose(cfg: SynthConfig, spec: ImageSpec, rng: np.random.Generator) -> R.Pose:
    trng = _rng(cfg, _K_TRACK, max(spec.look_pid, 0), spec.cam, 2)
    t = trng.random(4)
    if spec.kind == "person":
        yaw0 = [0.0, math.pi, math.pi / 2, -math.pi / 2][int(t[0] * 4)] + (t[1] - 0.5) * 0.9
        stride0 = 0.25 + 0.75 * t[2] if t[3] > 0.15 else 0.05
        phase = t[3] * 2 * math.pi + 1.1 * spec.index + rng.normal(0, 0.3)
        yaw = yaw0 + rng.normal(0, 0.12)
    else:
        yaw, stride0, phase = rng.uniform(-math.pi, math.pi), rng.uniform(0, 1), rng.uniform(0, 2 * math.pi)
    return R.Pose(yaw=float(yaw), phase=float(phase), stride=float(stride0))


def render_image(cfg: SynthConfig, spec: ImageSpec, identities: dict[int, Identity],
                 camera: tuple[R.CameraLook, Any]) -> Rendered:
    """Render one image of the plan, with its keypoint file and truth record."""
    cam_look, scene = camera
    key = {"person": 0, "distractor-background": 1, "distractor-fragment": 1, "junk": 2}[spec.kind]
    rng = _rng(cfg, _K_IMAGE, key, spec.pid + 1, spec.cam, spec.frame, spec.box_index)
    W, H = cfg.image_width, cfg.image_height
    RS = R.RENDER_SCALE
    # background window: a tracklet drifts slowly across the camera's scene
    sw, sh = scene.size
    trng = _rng(cfg, _K_TRACK, max(spec.look_pid, 0), spec.cam, 3)
    bx0, by0, vx = trng.uniform(0, sw - RS * W), trng.uniform(0, sh - RS * H), trng.uniform(-12, 12)
    bx = float(np.clip(bx0 + vx * spec.index + rng.normal(0, 4), 0, sw - RS * W))
    by = float(np.clip(by0 + rng.normal(0, 4), 0, sh - RS * H))
    canvas = scene.crop((int(bx), int(by), int(bx) + RS * W, int(by) + RS * H))

    truth: dict[str, Any] = {"pid": spec.pid, "camid": spec.cam, "split": spec.split, "kind": spec.kind}
    pose = _tracklet_pose(cfg, spec, rng)
    u = rng.random(3)
    if spec.kind == "distractor-background":
        jpeg = R.finish_image(canvas, (W, H), cam_look, rng, _jpeg_q(cfg, cam_look, rng))
        truth.update(keypoints=None, view=None, no_person=True)
        return Rendered(jpeg, openpose_json(None, None), truth, True)

    look = identities[spec.look_pid].look if spec.look_pid > 0 else _random_look(rng)
    place, cut = _placement(cfg, spec, look, rng)
    true_xy = R.draw_person(canvas, pose, look, place)
    occluded = np.zeros(NUM_KEYPOINTS, dtype=bool)
    occluder = None
    if u[0] < cfg.occlusion_rate:
        kind = ["pole", "railing", "passer-by"][int(u[1] * 3)]
        box = R.draw_occluder(canvas, kind, rng)
        occluded = ((true_xy[:, 0] >= box[0]) & (true_xy[:, 0] <= box[2])
                    & (true_xy[:, 1] >= box[1]) & (true_xy[:, 1] <= box[3]))
        occluder = {"kind": kind, "box": [round(v, 2) for v in box]}
    jpeg = R.finish_image(canvas, (W, H), cam_look, rng, _jpeg_q(cfg, cam_look, rng))
    kps, scores = simulate_estimator(true_xy, pose.yaw, occluded, (W, H), cfg.faults, rng)
    no_person = bool(u[2] < cfg.faults.no_person_rate) or not np.any(scores > 0)
    text = openpose_json(None, None) if no_person else openpose_json(kps, scores)
    inside = ((true_xy[:, 0] >= 0) & (true_xy[:, 0] <= W - 1) & (true_xy[:, 1] >= 0) & (true_xy[:, 1] <= H - 1))
    truth.update(
        keypoints=np.round(true_xy, 3).tolist(), in_image=inside.tolist(), occluded=occluded.tolist(),
        view=R.view_name(pose.yaw), yaw_deg=round(math.degrees(pose.yaw), 2), phase=round(pose.phase, 3),
        stride=round(pose.stride, 3), cut=cut, occluder=occluder, no_person=no_person,
        person_height_px=round(place.height, 2), look_pid=spec.look_pid,
    )
    return Rendered(jpeg, text, truth, no_person)


def _jpeg_q(cfg: SynthConfig, cam: R.CameraLook, rng: np.random.Generator) -> int:
    q = cam.jpeg_quality + int(rng.integers(-5, 6))
    return int(np.clip(q, cfg.jpeg_quality[0], cfg.jpeg_quality[1]))


# ---------------------------------------------------------------- writing the dataset


def _config_dict(cfg: SynthConfig) -> dict:
    from reidkit.typedconfig import to_dict

    return to_dict(cfg)


def _check_out(out: Path, cfg: SynthConfig, overwrite: bool) -> None:
    """Refuse to write into a folder that holds something else (or another config, unless overwrite)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    info = out / INFO_FILE
    if not info.is_file():
        raise SynthError(f"{out}: folder is not empty and holds no {INFO_FILE}; refusing to write a synthetic "
                         f"dataset into it (choose an empty or new folder)")
    try:
        old = json.loads(info.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SynthError(f"{info}: unreadable ({e})") from e
    if old.get("config") != _config_dict(cfg):
        if not overwrite:
            raise SynthError(f"{out}: holds a synthetic dataset made with another config; pass overwrite=True "
                             f"(--overwrite) to replace it")
        import shutil

        for name in (*SPLIT_FOLDERS.values(), KEYPOINTS_FOLDER):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in (TRUTH_FILE, PREVIEW_FILE):
            (out / name).unlink(missing_ok=True)


def _info(cfg: SynthConfig, identities: list[Identity], cameras: dict[int, R.CameraLook],
          summary: SynthSummary | None) -> str:
    def look_dict(look: R.Look) -> dict:
        d = dataclasses.asdict(look)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    info = {
        "format": "posecrop-synth", "format_version": FORMAT_VERSION, "layout": "market1501",
        "complete": summary is not None,
        "config": _config_dict(cfg),
        "summary": dataclasses.asdict(summary) if summary else None,
        "keypoint_names": list(KEYPOINT_NAMES),
        "identities": [{"pid": i.pid, "split": i.split, "family": i.family, "cue": i.cue,
                        "cue_part": _CUE_PARTS.get(i.cue, ""), "cameras": [c + 1 for c in i.cameras],
                        "look": look_dict(i.look)} for i in identities],
        "cameras": {str(c + 1): dataclasses.asdict(v) for c, v in sorted(cameras.items())},
    }
    return json.dumps(info, indent=1)


def generate(cfg: SynthConfig, out: Path, progress: bool = True, overwrite: bool = False,
             preview: bool = True) -> SynthSummary:
    """Render the dataset of `cfg` under `out` (see the module docstring for the layout).

    Re-running with the same config into the same folder finishes an interrupted run (images already
    written are kept: they are byte-identical anyway). A folder holding other files, or a dataset of
    another config, raises SynthError unless overwrite=True (which replaces a previous synthetic dataset)."""
    out = Path(out)
    t0 = time.perf_counter()
    _check_out(out, cfg, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    identities = make_identities(cfg)
    by_pid = {i.pid: i for i in identities}
    specs = plan_images(cfg, identities)
    cameras = {c: camera_setup(cfg, c) for c in range(cfg.num_cameras)}
    atomic_write_text(out / INFO_FILE, _info(cfg, identities, {c: v[0] for c, v in cameras.items()}, None))

    truth: dict[str, Any] = {}
    no_person = 0
    for spec, rendered in _with_progress(specs, progress, lambda s: render_image(cfg, s, by_pid, cameras[s.cam])):
        _write_if_changed(out / spec.relpath, rendered.jpeg)
        _write_if_changed(out / spec.keypoints_relpath, rendered.keypoints_json.encode("utf-8"))
        truth[spec.relpath] = rendered.truth
        no_person += rendered.no_person
    atomic_write_text(out / TRUTH_FILE, json.dumps(
        {"format_version": FORMAT_VERSION, "keypoint_names": list(KEYPOINT_NAMES),
         "image_size": [cfg.image_width, cfg.image_height],
         "note": "true joints in output pixels (may lie outside the image); keypoints/ holds the estimator's view",
         "images": truth}, separators=(",", ":")))
    counts = {s: sum(1 for x in specs if x.split == s) for s in ("train", "query", "gallery")}
    summary = SynthSummary(
        out=str(out), num_ids_train=cfg.num_ids_train, num_ids_test=cfg.num_ids_test, num_cameras=cfg.num_cameras,
        images=counts, distractors=sum(1 for x in specs if x.pid == 0), junk=sum(1 for x in specs if x.pid < 0),
        no_person=no_person, seconds=0.0)
    if preview:
        atomic_write_bytes(out / PREVIEW_FILE, preview_sheet(out, identities, truth), fsync=False)
    if hasattr(os, "sync"):
        os.sync()  # one flush for the many small files written without fsync, before marking complete
    summary.seconds = round(time.perf_counter() - t0, 2)
    atomic_write_text(out / INFO_FILE, _info(cfg, identities, {c: v[0] for c, v in cameras.items()}, summary))
    return summary


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write unless the file already holds exactly `data` (a resumed run keeps finished files)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, fsync=False)


def _with_progress(specs: list[ImageSpec], progress: bool, fn) -> Iterator[tuple[ImageSpec, Rendered]]:
    if not progress:
        for s in specs:
            yield s, fn(s)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]synth[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("rendering", total=len(specs))
        for s in specs:
            yield s, fn(s)
            bar.advance(task)


# ---------------------------------------------------------------- preview contact sheet


def preview_sheet(out: Path, identities: list[Identity], truth: dict[str, Any], rows: int = 6,
                  cols: int = 4, zoom: int = 2) -> bytes:
    """PNG: `rows` test identities (whole families first), `cols` images each from different cameras,
    every image shown plain and with its estimated skeleton (green = confident, orange = weak)."""
    from PIL import Image, ImageDraw

    from posecrop.keypoints import SKELETON

    test = [i for i in identities if i.split == "test"][:rows]
    rows = len(test)
    cells: list[list[str]] = []
    for ident in test:
        chosen: list[str] = []
        by_cam: dict[int, list[str]] = {}
        for rel, t in truth.items():
            if t["pid"] == ident.pid and t["split"] != "query":
                by_cam.setdefault(t["camid"], []).append(rel)
        k = 0
        while len(chosen) < cols and any(by_cam.values()):
            for cam in sorted(by_cam):
                if by_cam[cam] and len(chosen) < cols:
                    chosen.append(by_cam[cam].pop(k % len(by_cam[cam])))
            k += 1
        cells.append(chosen)
    if not test:
        return b""
    first = Image.open(out / cells[0][0])
    w, h = first.size[0] * zoom, first.size[1] * zoom
    label_h = 14
    sheet = Image.new("RGB", (cols * 2 * w + (cols - 1) * 6, rows * (h + label_h)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, (ident, rels) in enumerate(zip(test, cells)):
        lk = ident.look
        label = (f"{ident.pid:04d} fam{ident.family} {lk.shirt}{'/stripes' if lk.pattern == 'stripes' else ''} "
                 f"{lk.sleeves}-sl, {lk.trousers} {lk.trouser_kind}, shoes {lk.shoes}, hat {lk.hat}, bag {lk.bag}"
                 f"{' ' + lk.bag_colour if lk.bag != 'none' else ''}"
                 + (f"  [differs: {ident.cue}]" if ident.cue else ""))
        y = r * (h + label_h)
        d.text((2, y + 1), label, fill=(0, 0, 0))
        for c, rel in enumerate(rels):
            img = Image.open(out / rel).convert("RGB").resize((w, h), Image.Resampling.NEAREST)
            x = c * (2 * w + 6)
            sheet.paste(img, (x, y + label_h))
            over = img.copy()
            od = ImageDraw.Draw(over)
            kp_file = out / f"{KEYPOINTS_FOLDER}/{rel[:-4]}_keypoints.json"
            people = json.loads(kp_file.read_text())["people"]
            if people:
                arr = np.array(people[0]["pose_keypoints_2d"], dtype=np.float64).reshape(-1, 3)
                for a, b in SKELETON:
                    if arr[a, 2] > 0 and arr[b, 2] > 0:
                        od.line([tuple(arr[a, :2] * zoom), tuple(arr[b, :2] * zoom)], fill=(255, 255, 0), width=1)
                for x0, y0, cf in arr:
                    if cf > 0:
                        col = (0, 230, 0) if cf >= 0.3 else (255, 140, 0)
                        od.ellipse([x0 * zoom - 2, y0 * zoom - 2, x0 * zoom + 2, y0 * zoom + 2], fill=col)
            else:
                od.text((4, 4), "no person", fill=(255, 0, 0))
            sheet.paste(over, (x + w, y + label_h))
            d.text((x + 2, y + label_h + 2), f"c{truth[rel]['camid'] + 1} {truth[rel]['view']}", fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
