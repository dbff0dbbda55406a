"""Region crops: decode a source image, cut the Eq. 1-2 boxes with the outside FILLED, resize, encode.

Geometry. Boxes live in the continuous pixel frame where the image covers [0, width] x [0, height]. A box that
reaches outside the image is not clipped: the part outside is filled, so every crop keeps the box's geometry
(aspect and position of the body inside it). `outside_fraction` records how much of each box fell outside.

Fill. `fill="mean"` (default) uses the source image's mean colour: after the network's per-channel mean
normalisation the filled area is close to zero, and it does not add a hard black frame that differs from image to
image only by where the pose put the box. `fill="zeros"` gives black.

Resampling. One resample per crop: the part of the box inside the image is cut as a view (no copy, no padded
intermediate), resized once with OpenCV (bilinear when enlarging, area averaging when shrinking, so huge images are
anti-aliased) to its exact place in the output, and pasted into a canvas of the fill colour. Positions are exact up
to rounding to whole output pixels.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import warnings
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reidkit.errors import ReidError

BOX_FRAME = "continuous pixels of the source image: the image covers [0, width] x [0, height]"
FillMode = Literal["mean", "zeros"]
Encoding = Literal["jpeg", "png"]
FILL_MODES: tuple[str, ...] = ("mean", "zeros")
ENCODINGS: tuple[str, ...] = ("jpeg", "png")
EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
PIL_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                         "MPO": ".jpg", "PPM": ".ppm"}
PNG_COMPRESS_LEVEL = 1  # crops are small; level 1 is several times faster than the default 6 for ~10 % more bytes


class ImageDecodeError(ReidError, ValueError):
    """A source image cannot be decoded (empty, corrupt, truncated, unsupported, too large). Names the file."""


@dataclass
class DecodedImage:
    pixels: np.ndarray  # H x W x 3 uint8 in `order`
    format: str         # PIL format name (JPEG, PNG, ...) - the real one, whatever the file extension says
    order: str = "RGB"  # channel order of `pixels`: RGB or BGR (OpenCV's, used inside the crop stage)

    @property
    def rgb(self) -> np.ndarray:
        return self.pixels if self.order == "RGB" else cv2.cvtColor(self.pixels, cv2.COLOR_BGR2RGB)

    @property
    def extension(self) -> str:
        return PIL_FORMAT_EXTENSIONS.get(self.format, "." + self.format.lower())


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _exif_orientation(payload: bytes) -> int:
    """Orientation tag (1-8) of an APP1 Exif payload; 1 when absent or unreadable."""
    try:
        tiff = payload[6:]
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        ifd = struct.unpack(endian + "I", tiff[4:8])[0]
        (count,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack(endian + "HH", tiff[e:e + 4])
            if tag == 0x0112:
                return int(struct.unpack(endian + "H", tiff[e + 8:e + 10])[0])
    except (KeyError, struct.error, IndexError):
        pass
    return 1


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) read from the markers of JPEG data (a prefix is enough), or None when
    the data is not a JPEG whose frame header could be found. Width and height are as stored (before rotation)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n, orientation = 2, len(data), 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return w, h, orientation
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[i + 4:i + 2 + length])
        i += 2 + length
    return None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> H x W x 3 uint8 RGB (16-bit and float greys are scaled down, alpha is dropped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("P", "PA", "LA"):
        img = img.convert("RGBA")  # palette transparency is resolved before the alpha is dropped
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _check_size(name: str, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageDecodeError(f"{name}: image too large ({w}x{h} = {w * h} pixels > max_pixels {max_pixels})")
    if w < 1 or h < 1:
        raise ImageDecodeError(f"{name}: image has no pixels ({w}x{h})")


@contextlib.contextmanager
def _pil_decoding(name: str, problem: str) -> Iterator[None]:
    """PIL work on image `name`: warnings silenced, every decoder failure raised as ImageDecodeError naming it
    (`problem` says what a generic failure means: a corrupt image, or a corrupt header)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{name}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not a readable image (unknown or corrupt format)") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageDecodeError(f"{name}: {problem} ({type(e).__name__}: {e})") from e


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = 64_000_000,
                 order: Literal["RGB", "BGR"] = "RGB") -> DecodedImage:
    """Decode image bytes to 8-bit 3-channel pixels (EXIF orientation applied, as cv2.imread does).

    Complete JPEGs (ending with the EOI marker) take OpenCV's fast decoder; everything else (PNG, BMP, ..., and
    JPEGs without EOI) goes through PIL, which converts any mode (grey, palette, RGBA, CMYK, 16-bit) to RGB and
    refuses truncated data. Raises ImageDecodeError naming `name` for empty, corrupt or truncated data and for
    images above max_pixels (checked from the header, before decoding).
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    info = jpeg_info(data)
    if info is not None and data[-2:] == b"\xff\xd9":
        w, h, orientation = info
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        _check_size(name, w, h, max_pixels)
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if arr is not None and arr.shape[:2] == (h, w):
            return DecodedImage(arr if order == "BGR" else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), "JPEG", order)
    with _pil_decoding(name, "corrupt or truncated image"):
        img = Image.open(io.BytesIO(data))
        _check_size(name, *img.size, max_pixels)
        fmt = img.format or "UNKNOWN"
        img.load()
        if fmt in ("JPEG", "MPO", "TIFF", "WEBP", "PNG"):
            img = ImageOps.exif_transpose(img)
        rgb = np.ascontiguousarray(_to_rgb(img))
    return DecodedImage(rgb if order == "RGB" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), fmt, order)


def probe_size(path: str | os.PathLike, max_pixels: int = 64_000_000) -> tuple[int, int]:
    """(width, height) of an image file as decode_image will see it, from its header (JPEG: the first 64 KiB,
    parsed directly; other formats: PIL's lazy open). Raises ImageDecodeError like decode_image."""
    name = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    info = jpeg_info(head)
    if info is not None:
        w, h, orientation = info
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        _check_size(name, w, h, max_pixels)
        return w, h
    with _pil_decoding(name, "corrupt image header"):
        with Image.open(path) as img:
            w, h = img.size
            _check_size(name, w, h, max_pixels)
            if img.format in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") and img.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
    return w, h


def outside_fraction(boxes: np.ndarray, width: np.ndarray | float, height: np.ndarray | float) -> np.ndarray:
    """Share of each box's area outside the image [0, width] x [0, height]. boxes (..., 4) x1, y1, x2, y2; width and
    height broadcast against boxes[..., 0]. An empty box counts as entirely outside (1.0)."""
    b = np.asarray(boxes, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    area = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    iw = np.clip(np.minimum(b[..., 2], w) - np.maximum(b[..., 0], 0), 0, None)
    ih = np.clip(np.minimum(b[..., 3], h) - np.maximum(b[..., 1], 0), 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(area > 0, 1.0 - iw * ih / np.where(area > 0, area, 1.0), 1.0)
    return np.clip(frac, 0.0, 1.0).astype(np.float32)


def fill_colour(image: np.ndarray, mode: FillMode = "mean") -> tuple[int, int, int]:
    """The colour of the area of a box outside the image (see the module docstring)."""
    if mode == "zeros":
        return (0, 0, 0)
    if mode == "mean":
        step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 65536)))  # subsample big images
        m = cv2.mean(np.ascontiguousarray(image[::step, ::step]) if step > 1 else image)[: image.shape[2]]
        return tuple(int(round(v)) for v in m)  # type: ignore[return-value]
    raise ValueError(f"fill must be one of {FILL_MODES}, got {mode!r}")


def crop_box(image: np.ndarray, box: Sequence[float], size: tuple[int, int],
             fill: tuple[int, ...] | np.ndarray = (0, 0, 0)) -> np.ndarray:
    """Cut `box` (x1, y1, x2, y2, may leave the image) out of `image` (H x W x C uint8) and resize it to
    size = (height, width); the area outside the image gets `fill` (a colour, or a ready (width, C) row of it).
    One resample, no padded copy."""
    out_h, out_w = int(size[0]), int(size[1])
    x1, y1, x2, y2 = box.tolist() if isinstance(box, np.ndarray) else (float(v) for v in box)
    if not (x2 > x1 and y2 > y1 and math.isfinite(x1 + y1 + x2 + y2)):
        raise ValueError(f"degenerate box {box!r}")
    height, width, channels = image.shape
    canvas = np.empty((out_h, out_w, channels), dtype=image.dtype)
    if isinstance(fill, np.ndarray) and fill.shape == (out_w, channels):
        row = fill
    else:  # fill a row, then copy rows (broadcasting a 3-vector over the canvas is ~50x slower)
        row = np.empty((out_w, channels), dtype=image.dtype)
        row[:] = np.asarray(fill, dtype=image.dtype)
    sx, sy = (x2 - x1) / out_w, (y2 - y1) / out_h  # source pixels per output pixel
    # whole source pixels touched by the box, clipped to the image
    a, b = max(0, math.floor(x1)), min(width, math.ceil(x2))
    c, d = max(0, math.floor(y1)), min(height, math.ceil(y2))
    # where those pixels land in the output (exact scale, rounded to whole output pixels)
    ua, ub = round((a - x1) / sx), round((b - x1) / sx)
    vc, vd = round((c - y1) / sy), round((d - y1) / sy)
    ub, vd = max(ub, ua + 1), max(vd, vc + 1)
    ox0, ox1 = max(ua, 0), min(ub, out_w)
    oy0, oy1 = max(vc, 0), min(vd, out_h)
    if b <= a or d <= c or ox1 <= ox0 or oy1 <= oy0:  # the box lies entirely outside the image
        canvas[:] = row
        return canvas
    if ub - ua > 4 * out_w or vd - vc > 4 * out_h:  # box of a pixel or less: the whole-pixel trick would explode
        m = np.array([[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]])
        return cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(int(v) for v in row[0]))
    interp = cv2.INTER_AREA if (sx > 1.0 and sy > 1.0) else cv2.INTER_LINEAR
    if ua >= 0 and vc >= 0 and ub <= out_w and vd <= out_h:  # resize straight into the canvas
        view = canvas[vc:vd, ua:ub]
        out = cv2.resize(image[c:d, a:b], (ub - ua, vd - vc), dst=view, interpolation=interp)
        if not np.shares_memory(out, view):  # OpenCV could not write into the view
            view[...] = out.reshape(view.shape)
    else:
        resized = cv2.resize(image[c:d, a:b], (ub - ua, vd - vc), interpolation=interp)
        if resized.ndim == 2:
            resized = resized[..., None]
        canvas[oy0:oy1, ox0:ox1] = resized[oy0 - vc:oy1 - vc, ox0 - ua:ox1 - ua]
    canvas[:oy0] = row
    canvas[oy1:] = row
    canvas[oy0:oy1, :ox0] = row[:ox0]
    canvas[oy0:oy1, ox1:] = row[ox1:]
    return canvas


def crop_regions(image: np.ndarray, boxes: np.ndarray, sizes: Sequence[tuple[int, int]],
                 fill: FillMode = "mean") -> list[np.ndarray]:
    """The crops of one image for boxes (R, 4), resized to sizes[r] = (height, width)."""
    colour = np.asarray(fill_colour(image, fill), dtype=image.dtype)
    rows: dict[int, np.ndarray] = {}
    for _, w in sizes:
        if w not in rows:
            rows[w] = np.empty((w, image.shape[2]), dtype=image.dtype)
            rows[w][:] = colour
    return [crop_box(image, box, size, rows[size[1]]) for box, size in zip(boxes, sizes)]


def encode_image(pixels: np.ndarray, encoding: Encoding = "jpeg", quality: int = 95,
                 order: Literal["RGB", "BGR"] = "RGB") -> bytes:
    """Encode a crop (H x W x 3 uint8 in `order`) as JPEG (quality 1-100, 4:2:0 chroma) or PNG (lossless,
    compress level 1), with OpenCV's libjpeg-turbo / libpng."""
    bgr = pixels if order == "BGR" else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, _JPEG_PARAMS + [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif encoding == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL])
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if not ok:
        raise ValueError(f"{encoding} encoding of a {pixels.shape} image failed")
    return buf.tobytes()


_JPEG_PARAMS = ([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
                if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_420") else [])
