"""Drawing for the synthetic pedestrian dataset (`posecrop.synth`): body geometry, person, camera scene.

A pedestrian is an articulated body in 3-D body coordinates (units of the person's height; x towards the
image right when the person faces the camera, y down from the top of the head, z towards the camera),
posed by a walking phase, turned by a yaw angle (0 = front view, pi = back view) and projected
orthographically. Body parts are drawn back to front (painter's order by depth) at RENDER_SCALE times
the output size and box-filtered down, so thin limbs keep soft edges.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from posecrop.keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS

RGB = tuple[int, int, int]
RENDER_SCALE = 3

SKIN_TONES: tuple[RGB, ...] = ((241, 204, 178), (224, 180, 150), (198, 150, 115), (160, 112, 80), (112, 76, 56))
HAIR_COLOURS: tuple[RGB, ...] = ((25, 20, 18), (60, 40, 28), (105, 70, 40), (150, 120, 80), (120, 120, 120))

# Named clothing palettes: small on purpose, so that many identities share a shirt colour.
SHIRT_COLOURS: dict[str, RGB] = {
    "white": (225, 225, 220), "black": (35, 35, 38), "red": (190, 35, 40), "blue": (45, 80, 170),
    "green": (60, 140, 70), "yellow": (225, 195, 45), "grey": (130, 130, 130), "pink": (230, 150, 175),
    "purple": (115, 60, 150), "orange": (230, 120, 40),
}
TROUSER_COLOURS: dict[str, RGB] = {
    "black": (30, 30, 35), "jeans": (55, 75, 120), "grey": (110, 110, 115), "khaki": (180, 160, 115),
    "white": (215, 215, 210), "brown": (100, 70, 45), "olive": (85, 95, 55),
}
SHOE_COLOURS: dict[str, RGB] = {
    "white": (235, 235, 235), "black": (25, 25, 25), "red": (200, 40, 40), "blue": (40, 70, 190),
    "brown": (110, 70, 40), "yellow": (230, 200, 40),
}
HAT_COLOURS: dict[str, RGB] = {
    "black": (30, 30, 30), "white": (230, 230, 230), "red": (200, 40, 45), "blue": (40, 70, 180),
    "yellow": (225, 195, 45),
}
BAG_COLOURS: dict[str, RGB] = {
    "black": (30, 30, 32), "grey": (120, 120, 125), "red": (180, 40, 45), "blue": (40, 60, 150),
    "brown": (120, 80, 45),
}

FACE_JOINTS = tuple(KEYPOINT_INDEX[n] for n in ("nose", "r_eye", "l_eye", "r_ear", "l_ear"))


@dataclass(frozen=True)
class Look:
    """What one identity wears and looks like (the same in every camera)."""

    skin: RGB
    hair: RGB
    long_hair: bool
    hat: str  # "none" or a HAT_COLOURS name
    shirt: str
    sleeves: str  # "long" | "short"
    pattern: str  # "plain" | "stripes"
    bag: str  # "none" | "backpack" | "shoulder"
    bag_colour: str
    trousers: str
    trouser_kind: str  # "long" | "shorts" | "skirt"
    shoes: str
    shade: RGB  # small identity-specific offset added to the clothing colours
    height_scale: float
    width_scale: float

    def colour(self, palette: dict[str, RGB], name: str) -> RGB:
        base = palette[name]
        return tuple(int(np.clip(b + s, 0, 255)) for b, s in zip(base, self.shade))  # type: ignore[return-value]

    def categorical(self) -> tuple:
        """The attributes that tell identities apart (ignoring shades, skin and build)."""
        return (self.hat, self.shirt, self.sleeves, self.pattern, self.bag, self.bag_colour,
                self.trousers, self.trouser_kind, self.shoes)


@dataclass(frozen=True)
class Pose:
    """yaw: radians, 0 = facing the camera, pi = back view, +pi/2 = walking towards the image right.
    phase: walking cycle phase (radians); stride: 0 (standing) .. 1 (long stride)."""

    yaw: float
    phase: float
    stride: float


def view_name(yaw: float) -> str:
    """front / back / right / left (the direction the person faces in the image) for a yaw angle."""
    c, s = math.cos(yaw), math.sin(yaw)
    if abs(c) >= abs(s):
        return "front" if c > 0 else "back"
    return "right" if s > 0 else "left"


def body_points(pose: Pose, look: Look) -> dict[str, np.ndarray]:
    """3-D points (body coordinates, person height 1) of the 18 joints and the drawing anchors."""
    w = look.width_scale
    sw, hw = 0.105 * w, 0.062 * w
    ph, st = pose.phase, pose.stride
    p: dict[str, np.ndarray] = {}

    def v(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x, y, z], dtype=np.float64)

    p["neck"] = v(0, 0.165, 0)
    p["r_shoulder"], p["l_shoulder"] = v(-sw, 0.19, 0), v(sw, 0.19, 0)
    p["r_hip"], p["l_hip"] = v(-hw, 0.52, 0), v(hw, 0.52, 0)
    thigh, shin = 0.225, 0.215
    for side, sign in (("r", 1.0), ("l", -1.0)):
        theta = sign * 0.42 * st * math.sin(ph)  # hip flexion, forward positive
        kappa = 0.06 + 0.55 * st * max(0.0, math.cos(ph + (0.0 if sign > 0 else math.pi)))  # knee flexion
        hip = p[f"{side}_hip"]
        knee = hip + thigh * v(0, math.cos(theta), math.sin(theta))
        ankle = knee + shin * v(0, math.cos(theta - kappa), math.sin(theta - kappa))
        p[f"{side}_knee"], p[f"{side}_ankle"] = knee, ankle
        p[f"{side}_heel"] = ankle + v(0, 0.03, -0.02)
        p[f"{side}_toe"] = ankle + v(0, 0.035, 0.075)
        alpha = -sign * 0.38 * st * math.sin(ph)  # shoulder flexion, opposite to the leg
        eps = 0.12 + 0.3 * max(0.0, alpha)
        out = -1.0 if side == "r" else 1.0
        sh = p[f"{side}_shoulder"]
        elbow = sh + 0.17 * v(out * 0.12, math.cos(alpha), math.sin(alpha))
        wrist = elbow + 0.15 * v(out * 0.05, math.cos(alpha + eps), math.sin(alpha + eps))
        p[f"{side}_elbow"], p[f"{side}_wrist"] = elbow, wrist
    hc = v(0, 0.068, 0)
    p["head"] = hc
    p["nose"] = hc + v(0, 0.02, 0.058)
    p["r_eye"], p["l_eye"] = hc + v(-0.022, -0.002, 0.05), hc + v(0.022, -0.002, 0.05)
    p["r_ear"], p["l_ear"] = hc + v(-0.05, 0.006, -0.004), hc + v(0.05, 0.006, -0.004)
    p["backpack"] = v(0, 0.33, -0.1)
    p["bag"] = v(0.13, 0.53, 0.0)  # shoulder bag at the left hip, strap from the right shoulder
    p["bag_strap_top"] = v(-0.08, 0.185, 0.0)
    return p


def rotate(points: np.ndarray, yaw: float) -> np.ndarray:
    """Turn body points (..., 3) about the vertical axis; returns (x', y, z') with z' towards the camera."""
    c, s = math.cos(yaw), math.sin(yaw)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([x * c + z * s, y, -x * s + z * c], axis=-1)


def face_visibility(yaw: float) -> np.ndarray:
    """(18,) in [-1, 1]: how much each joint faces the camera (1 for the non-face joints).

    Nose and eyes face forward; ears face sideways. Negative = turned away (a back view's face)."""
    vis = np.ones(NUM_KEYPOINTS)
    normals = {"nose": (0, 0, 1), "r_eye": (-0.35, 0, 0.94), "l_eye": (0.35, 0, 0.94),
               "r_ear": (-0.8, 0, 0.6), "l_ear": (0.8, 0, 0.6)}
    for name, n in normals.items():
        vis[KEYPOINT_INDEX[name]] = rotate(np.array(n, dtype=np.float64), yaw)[2]
    return vis


@dataclass(frozen=True)
class Placement:
    """Where the person lands in the output image: head top y, centre x and height, in output pixels."""

    x_centre: float
    y_top: float
    height: float


def to_render(pts3: np.ndarray, place: Placement) -> np.ndarray:
    """Rotated body points (..., 3) -> render-canvas pixels (..., 2)."""
    s = RENDER_SCALE * place.height
    x = RENDER_SCALE * place.x_centre + s * pts3[..., 0]
    y = RENDER_SCALE * place.y_top + s * pts3[..., 1]
    return np.stack([x, y], axis=-1)


def render_to_output(xy: np.ndarray) -> np.ndarray:
    """Render-canvas pixel coordinates -> output pixel coordinates (pixel centres at integers)."""
    return (xy + 0.5) / RENDER_SCALE - 0.5


# ---------------------------------------------------------------- drawing the person


def _capsule(draw: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, width: float, fill: RGB) -> None:
    r = width / 2
    draw.line([tuple(a), tuple(b)], fill=fill, width=max(1, int(round(width))))
    for c in (a, b):
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


def draw_person(canvas: Image.Image, pose: Pose, look: Look, place: Placement) -> np.ndarray:
    """Draw the pedestrian on `canvas` (render size, RGB). Returns the true joints (18, 2) in output pixels."""
    draw = ImageDraw.Draw(canvas)
    pts = body_points(pose, look)
    names = list(pts)
    rot = rotate(np.stack([pts[n] for n in names]), pose.yaw)
    P = dict(zip(names, to_render(rot, place)))
    Z = dict(zip(names, rot[:, 2]))
    s = RENDER_SCALE * place.height
    c, sn = math.cos(pose.yaw), math.sin(pose.yaw)
    w = look.width_scale

    skin = look.skin
    shirt = look.colour(SHIRT_COLOURS, look.shirt)
    trousers = look.colour(TROUSER_COLOURS, look.trousers)
    shoes = look.colour(SHOE_COLOURS, look.shoes)
    hat = HAT_COLOURS.get(look.hat)
    bag = BAG_COLOURS[look.bag_colour]

    def half_width(wx: float, dz: float) -> float:  # projected half-width of an elliptic cross-section
        return s * math.sqrt((wx * c) ** 2 + (dz * sn) ** 2)

    items: list[tuple[float, int, object]] = []  # (depth, order, callable)

    def add(depth: float, fn) -> None:
        items.append((depth, len(items), fn))

    # legs: thigh, shin, shoe
    for side in ("r", "l"):
        hip, knee, ankle = P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_ankle"]
        z = (Z[f"{side}_hip"] + Z[f"{side}_knee"] + Z[f"{side}_ankle"]) / 3
        upper = trousers
        lower = trousers if look.trouser_kind == "long" else skin
        tw, sw = 0.078 * w * s, 0.056 * w * s

        def legs(hip=hip, knee=knee, ankle=ankle, upper=upper, lower=lower, tw=tw, sw=sw, side=side):
            _capsule(draw, knee, ankle, sw, lower)
            _capsule(draw, hip, knee, tw, upper)
            if look.trouser_kind == "shorts":
                mid = hip + 0.8 * (knee - hip)
                _capsule(draw, hip, mid, tw * 1.1, trousers)
            _capsule(draw, P[f"{side}_heel"], P[f"{side}_toe"], 0.045 * s, shoes)

        add(z - 0.005, legs)

    # arms: upper arm (sleeve), forearm, hand
    for side in ("r", "l"):
        sh, el, wr = P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_wrist"]
        z = (Z[f"{side}_shoulder"] + Z[f"{side}_elbow"] + Z[f"{side}_wrist"]) / 3
        fore = shirt if look.sleeves == "long" else skin

        def arm(sh=sh, el=el, wr=wr, fore=fore):
            _capsule(draw, el, wr, 0.042 * w * s, fore)
            _capsule(draw, sh, el, 0.052 * w * s, _shade(shirt, 0.93))
            r = 0.022 * s
            draw.ellipse([wr[0] - r, wr[1] - r, wr[0] + r, wr[1] + r], fill=skin)

        add(z + 0.01, arm)

    # torso (shirt), pelvis (trousers), optional stripes and skirt
    centre_x = P["neck"][0]
    y0 = RENDER_SCALE * place.y_top
    levels = np.array([0.168, 0.2, 0.42, 0.56])
    widths = np.array([0.075, 0.128, 0.105, 0.112]) * w
    depths = np.array([0.05, 0.07, 0.065, 0.07])
    hws = np.array([half_width(a, b) for a, b in zip(widths, depths)])
    ys = y0 + s * levels

    def torso():
        pelvis_hw = half_width(0.11 * w, 0.07)
        py = y0 + s * np.array([0.5, 0.6])
        draw.polygon([(centre_x - pelvis_hw, py[0]), (centre_x + pelvis_hw, py[0]),
                      (centre_x + pelvis_hw * 0.8, py[1]), (centre_x - pelvis_hw * 0.8, py[1])], fill=trousers)
        left = [(centre_x - h, y) for h, y in zip(hws, ys)]
        right = [(centre_x + h, y) for h, y in zip(hws, ys)]
        draw.polygon(left + right[::-1], fill=shirt)
        if look.pattern == "stripes":
            stripe = _shade(shirt, 0.45) if sum(shirt) > 300 else tuple(min(255, v + 110) for v in shirt)
            for a in np.arange(0.25, 0.54, 0.06):
                b = a + 0.03
                ha, hb = np.interp([a, b], levels, hws)
                ya, yb = y0 + s * a, y0 + s * b
                draw.polygon([(centre_x - ha, ya), (centre_x + ha, ya), (centre_x + hb, yb), (centre_x - hb, yb)],
                             fill=stripe)
        if look.trouser_kind == "skirt":
            sy = y0 + s * np.array([0.52, 0.72])
            a, b = half_width(0.11 * w, 0.075), half_width(0.17 * w, 0.12)
            draw.polygon([(centre_x - a, sy[0]), (centre_x + a, sy[0]), (centre_x + b, sy[1]),
                          (centre_x - b, sy[1])], fill=trousers)

    add(-0.02, torso)

    # bag: backpack box behind the torso with straps on the front, or a shoulder bag with a strap
    if look.bag == "backpack":
        bp, zb = P["backpack"], Z["backpack"]
        bw, bh = half_width(0.085 * w, 0.05), 0.12 * s

        def backpack():
            draw.rounded_rectangle([bp[0] - bw, bp[1] - bh, bp[0] + bw, bp[1] + bh], radius=bw * 0.3, fill=bag)

        add(zb, backpack)
        if c > -0.2:  # straps visible from the front / sides
            def straps():
                for side in ("r", "l"):
                    sh = P[f"{side}_shoulder"]
                    a = np.array([centre_x + 0.55 * (sh[0] - centre_x), sh[1] - 0.005 * s])
                    b = np.array([centre_x + 0.6 * (sh[0] - centre_x), y0 + 0.42 * s])
                    _capsule(draw, a, b, 0.022 * s, bag)

            add(0.0, straps)
    elif look.bag == "shoulder":
        bg, zb = P["bag"], Z["bag"]
        top = P["bag_strap_top"]

        def shoulder_bag():
            _capsule(draw, top, bg, 0.016 * s, _shade(bag, 0.8))
            bw, bh = half_width(0.045, 0.07), 0.055 * s
            draw.rounded_rectangle([bg[0] - bw, bg[1] - bh, bg[0] + bw, bg[1] + bh], radius=bw * 0.25, fill=bag)

        add(max(zb, 0.0) + 0.03 if zb > -0.05 else zb - 0.03, shoulder_bag)

    # neck and head: skin, hair (long hair falls behind), face dots, hat
    hd = P["head"]
    hhw, hhh = half_width(0.05, 0.058), 0.066 * s
    if look.long_hair:
        def long_hair():
            hw = half_width(0.055, 0.045)
            back = -sn * 0.03 * s
            draw.rounded_rectangle([hd[0] + back - hw, hd[1], hd[0] + back + hw, y0 + 0.25 * s],
                                   radius=hw * 0.5, fill=look.hair)

        add(-0.05 * c, long_hair)

    def head():
        _capsule(draw, P["neck"], hd + np.array([0, 0.05 * s]), 0.045 * s, _shade(skin, 0.9))
        draw.ellipse([hd[0] - hhw, hd[1] - hhh, hd[0] + hhw, hd[1] + hhh], fill=skin)
        if c < -0.35:  # back of the head: all hair
            draw.ellipse([hd[0] - hhw * 1.03, hd[1] - hhh * 1.03, hd[0] + hhw * 1.03, hd[1] + hhh * 0.75],
                         fill=look.hair)
        else:
            off = -sn * hhw * 0.45
            draw.ellipse([hd[0] + off - hhw * 1.02, hd[1] - hhh * 1.05, hd[0] + off + hhw * 1.02,
                          hd[1] - hhh * (0.15 if abs(sn) < 0.7 else -0.2)], fill=look.hair)
            for name in ("r_eye", "l_eye"):
                if Z[name] - Z["head"] > 0.02:
                    e, r = P[name], 0.009 * s
                    draw.ellipse([e[0] - r, e[1] - r * 0.7, e[0] + r, e[1] + r * 0.7], fill=(40, 30, 30))
        if hat is not None:
            draw.chord([hd[0] - hhw * 1.08, hd[1] - hhh * 1.15, hd[0] + hhw * 1.08, hd[1] + hhh * 0.5],
                       start=180, end=360, fill=hat)
            brim_dir = sn
            bx = hd[0] + brim_dir * hhw * 0.9
            if c > -0.35:
                draw.ellipse([bx - hhw * (0.55 + 0.5 * abs(c)), hd[1] - hhh * 0.42,
                              bx + hhw * (0.55 + 0.5 * abs(c)), hd[1] - hhh * 0.12], fill=_shade(hat, 0.85))

    add(0.03, head)

    for _, _, fn in sorted(items, key=lambda t: (t[0], t[1])):
        fn()  # type: ignore[operator]
    return render_to_output(np.stack([P[n] for n in KEYPOINT_NAMES]))


# ---------------------------------------------------------------- cameras: scene and lighting

SCENE_STYLES = ("plaza", "grass", "wall", "stairs", "bikes", "road")


@dataclass(frozen=True)
class CameraLook:
    """One camera's scene and imaging: background canvas style and lighting."""

    style: str
    base: RGB
    accent: RGB
    gain: tuple[float, float, float]
    brightness: float
    contrast: float
    gamma: float
    blur: float
    noise: float
    jpeg_quality: int


def camera_look(cam: int, rng: np.random.Generator, jpeg_quality: tuple[int, int],
                variation: float = 1.0) -> CameraLook:
    """A camera's scene style and lighting; `variation` scales how far the lighting departs from neutral."""
    style = SCENE_STYLES[cam % len(SCENE_STYLES)]
    base = {"plaza": (170, 165, 155), "grass": (95, 140, 80), "wall": (150, 135, 120), "stairs": (140, 140, 145),
            "bikes": (120, 120, 118), "road": (75, 78, 82)}[style]
    base = tuple(int(np.clip(b + d, 0, 255)) for b, d in zip(base, rng.integers(-25, 26, 3)))
    accent = tuple(int(v) for v in rng.integers(40, 230, 3))
    casts = [(1.08, 1.0, 0.88), (0.9, 0.98, 1.1), (0.96, 1.06, 0.94), (1.0, 1.0, 1.0), (1.05, 0.97, 1.03),
             (0.93, 0.95, 1.07)]
    cast = casts[(cam + int(rng.integers(len(casts)))) % len(casts)]
    gain = tuple(float(1 + variation * (g * rng.uniform(0.95, 1.05) - 1)) for g in cast)

    def vary(lo: float, hi: float) -> float:
        return float(1 + variation * (rng.uniform(lo, hi) - 1))

    return CameraLook(
        style=style, base=base, accent=accent, gain=gain,  # type: ignore[arg-type]
        brightness=vary(0.75, 1.15), contrast=vary(0.8, 1.05), gamma=vary(0.85, 1.15),
        blur=float(rng.uniform(0.0, 0.8)), noise=float(rng.uniform(1.5, 6.0)),
        jpeg_quality=int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1)),
    )


def scene_canvas(look: CameraLook, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A camera's background (render scale, width x height = size): ground, structures and clutter."""
    W, H = size
    yy = np.linspace(0, 1, H)[:, None, None]
    base = np.array(look.base, dtype=np.float32)
    img = base * (0.85 + 0.3 * yy) + rng.normal(0, 6, (H, W, 1)).astype(np.float32)
    img = img + rng.normal(0, 3, (H // 8 + 1, W // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:H, :W]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(canvas)
    dark = _shade(look.base, 0.7)
    light = _shade(look.base, 1.2)
    if look.style == "plaza":
        step = int(rng.integers(40, 70))
        for x in range(0, W, step):
            d.line([(x, 0), (x, H)], fill=dark, width=2)
        for y in range(0, H, step):
            d.line([(0, y), (W, y)], fill=dark, width=2)
    elif look.style == "grass":
        horizon = int(H * rng.uniform(0.35, 0.5))
        d.rectangle([0, horizon, W, H], fill=_shade((150, 145, 135), rng.uniform(0.8, 1.1)))
        for _ in range(12):
            x, r = rng.uniform(0, W), rng.uniform(30, 70)
            d.ellipse([x - r, horizon - 2.5 * r, x + r, horizon - 0.3 * r], fill=(40, int(rng.integers(80, 130)), 45))
            d.rectangle([x - 6, horizon - 0.6 * r, x + 6, horizon + 10], fill=(80, 60, 40))
    elif look.style == "wall":
        horizon = int(H * rng.uniform(0.55, 0.7))
        for y in range(30, horizon - 60, 110):
            for x in range(int(rng.integers(0, 40)), W, 120):
                d.rectangle([x, y, x + 70, y + 80], fill=(60, 70, 85), outline=light, width=4)
        d.rectangle([0, horizon, W, H], fill=(125, 122, 118))
    elif look.style == "stairs":
        step = int(rng.integers(25, 45))
        for i, y in enumerate(range(0, H, step)):
            d.rectangle([0, y, W, y + step // 3], fill=dark if i % 2 else light)
    elif look.style == "bikes":
        for _ in range(10):
            x, y, r = rng.uniform(0, W), rng.uniform(0.2 * H, 0.9 * H), rng.uniform(25, 40)
            col = tuple(int(v) for v in rng.integers(20, 230, 3))
            for dx in (-1.2 * r, 1.2 * r):
                d.ellipse([x + dx - r, y - r, x + dx + r, y + r], outline=(30, 30, 30), width=5)
            d.line([(x - 1.2 * r, y), (x, y - r), (x + 1.2 * r, y)], fill=col, width=7)
    elif look.style == "road":
        for x in range(int(rng.integers(0, 80)), W, 160):
            d.rectangle([x, 0, x + 18, H], fill=(210, 210, 200))
    # clutter: bins, signs, posters, far-away people-like blobs in clothing colours
    palette = list(SHIRT_COLOURS.values()) + list(TROUSER_COLOURS.values())
    for _ in range(int(rng.integers(6, 12))):
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        col = palette[int(rng.integers(len(palette)))] if rng.random() < 0.35 else look.accent
        kind = rng.integers(3)
        ww, hh = rng.uniform(15, 60), rng.uniform(20, 120)
        if kind == 0:
            d.rectangle([x, y, x + ww, y + hh], fill=col)
        elif kind == 1:
            d.ellipse([x, y, x + ww, y + ww], fill=col)
        else:
            d.rounded_rectangle([x, y, x + ww * 0.6, y + hh * 1.5], radius=8, fill=col)
    return canvas.filter(ImageFilter.GaussianBlur(1.2))


def draw_occluder(canvas: Image.Image, kind: str, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw a foreground occluder on the render canvas; returns its box (x1, y1, x2, y2) in output pixels."""
    W, H = canvas.size
    d = ImageDraw.Draw(canvas)
    col = tuple(int(v) for v in rng.integers(30, 200, 3))
    if kind == "pole":
        w = rng.uniform(0.08, 0.16) * W
        x = rng.uniform(0.15, 0.85) * W - w / 2
        box = (x, 0.0, x + w, float(H))
        d.rectangle(box, fill=col)
    elif kind == "railing":
        y = rng.uniform(0.68, 0.85) * H
        box = (0.0, y, float(W), float(H))
        d.rectangle(box, fill=col)
        d.rectangle((0, y, W, y + 0.02 * H), fill=_shade(col, 1.4))  # type: ignore[arg-type]
    else:  # passer-by: the side of another pedestrian at an image edge
        w = rng.uniform(0.18, 0.32) * W
        left = rng.random() < 0.5
        x1, x2 = (-0.3 * W, w) if left else (W - w, 1.3 * W)
        box = (max(0.0, x1), 0.12 * H, min(float(W), x2), float(H))
        d.rounded_rectangle([x1, 0.12 * H, x2, 0.62 * H], radius=0.1 * W, fill=col)
        d.rectangle([x1, 0.6 * H, x2, H], fill=tuple(int(v) for v in rng.integers(20, 150, 3)))
    b = np.array(box) / RENDER_SCALE
    return tuple(float(v) for v in b)  # type: ignore[return-value]


def finish_image(canvas: Image.Image, size: tuple[int, int], cam: CameraLook, rng: np.random.Generator,
                 jpeg_quality: int) -> bytes:
    """Downsample the render canvas to `size` (W, H), apply the camera's lighting and noise, JPEG-encode."""
    img = canvas.resize(size, Image.Resampling.BOX)
    blur = cam.blur * rng.uniform(0.7, 1.3)
    if blur > 0.25:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img, dtype=np.float32) / 255.0
    h = a.shape[0]
    shading = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, h)[:, None, None]
    gain = np.array(cam.gain, dtype=np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    a = a ** (cam.gamma * rng.uniform(0.92, 1.08))
    a = a * (cam.brightness * rng.uniform(0.88, 1.12)) * gain * shading
    a = (a - 0.45) * cam.contrast + 0.45
    a = a * 255.0 + rng.normal(0, cam.noise, a.shape)
    out = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(jpeg_quality))
    return buf.getvalue()
