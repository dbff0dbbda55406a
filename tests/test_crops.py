"""Crops: fill-not-clip geometry, outside share, decoding of awkward images, encoding."""
import io

import numpy as np
import pytest
from PIL import Image

from posecrop.crops import (ImageDecodeError, crop_box, crop_regions, decode_image, encode_image, fill_colour,
                            outside_fraction)


def _png(arr_or_img, fmt="PNG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_box_leaving_the_image_is_filled_not_clipped():
    img = np.zeros((80, 40, 3), np.uint8)
    img[...] = (200, 0, 0)
    # the left half of the box is outside the image: a clip would stretch the red over the whole crop
    out = crop_box(img, (-40, 0, 40, 80), (80, 80), fill=(0, 0, 255))
    assert out.shape == (80, 80, 3)
    assert (out[:, :40] == (0, 0, 255)).all()
    assert (out[:, 40:] == (200, 0, 0)).all()
    np.testing.assert_allclose(outside_fraction(np.array([-40, 0, 40, 80.0]), 40, 80), 0.5)


def test_a_marker_lands_where_the_box_geometry_says():
    img = np.zeros((100, 50, 3), np.uint8)
    img[60:62, 30:32] = 255  # marker centred at (31, 61) in the continuous frame
    box = (10.0, 50.0, 70.0, 110.0)  # 60x60, right and bottom parts outside; scale 2 output px per source px
    out = crop_box(img, box, (120, 120))
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() + 0.5 - (31 - 10) * 2) <= 1.0
    assert abs(ys.mean() + 0.5 - (61 - 50) * 2) <= 1.0
    # below y = 100 and right of x = 50 (source) is fill
    assert (out[(100 - 50) * 2 + 1:] == 0).all() and (out[:, (50 - 10) * 2 + 1:] == 0).all()


def test_box_entirely_outside_gives_only_fill_and_outside_share_one():
    img = np.full((20, 10, 3), 9, np.uint8)
    out = crop_box(img, (100, 100, 120, 140), (8, 4), fill=(1, 2, 3))
    assert (out == (1, 2, 3)).all()
    boxes = np.array([[100, 100, 120, 140], [0, 0, 10, 20], [5, 10, 15, 30.0], [3, 3, 3, 9]])
    np.testing.assert_allclose(outside_fraction(boxes, 10, 20), [1.0, 0.0, 0.75, 1.0])
    with pytest.raises(ValueError, match="degenerate"):
        crop_box(img, (3, 3, 3, 9), (8, 4))


def test_inside_box_matches_plain_resize_and_shrinking_is_antialiased():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    import cv2
    np.testing.assert_array_equal(crop_box(img, (5, 4, 25, 36), (64, 40)),
                                  cv2.resize(img[4:36, 5:25], (40, 64), interpolation=cv2.INTER_LINEAR))
    checker = (np.indices((2000, 1000)).sum(0) % 2 * 255).astype(np.uint8)
    big = np.repeat(checker[..., None], 3, axis=2)
    small = crop_box(big, (0, 0, 1000, 2000), (40, 20))
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 2  # area averaging, no aliasing


def test_crop_regions_sizes_and_fill_modes():
    img = np.zeros((64, 32, 3), np.uint8)
    img[:, :, 1] = 100
    boxes = np.array([[-8, -8, 40, 72], [0, 0, 32, 16], [0, 10, 32, 40], [0, 30, 32, 50], [0, 45, 32, 80.0]])
    sizes = [(384, 192)] + [(96, 192)] * 4
    crops = crop_regions(img, boxes, sizes, fill="mean")
    assert [c.shape[:2] for c in crops] == sizes
    assert tuple(crops[0][0, 0]) == (0, 100, 0)  # mean colour of a flat image is the image colour
    assert tuple(crop_regions(img, boxes, sizes, fill="zeros")[0][0, 0]) == (0, 0, 0)
    assert fill_colour(img, "mean") == (0, 100, 0)


def test_decode_awkward_images():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    # PNG named .jpg: decoded by content, the real extension is reported
    d = decode_image(_png(rgb), "x.jpg")
    assert d.format == "PNG" and d.extension == ".png"
    np.testing.assert_array_equal(d.rgb, rgb)
    assert decode_image(_png(rgb[..., 0]), "grey.png").rgb.shape == (16, 8, 3)
    rgba = np.dstack([rgb, np.full((16, 8), 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(_png(rgba), "a.png").rgb, rgb)
    cmyk = decode_image(_png(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "cmyk.jpg")
    assert cmyk.rgb.shape == (16, 8, 3) and cmyk.format == "JPEG"
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grey: white stays white
    assert (decode_image(_png(deep), "deep.png").rgb == 255).all()
    one = decode_image(_png(rgb[:1, :1]), "one.png")
    assert one.rgb.shape == (1, 1, 3)
    out = crop_box(one.rgb, (-2, -2, 3, 8), (20, 10))
    assert out.shape == (20, 10, 3)


def test_decode_errors_name_the_file():
    rgb = np.zeros((64, 32, 3), np.uint8)
    jpg = _png(rgb, "JPEG")
    with pytest.raises(ImageDecodeError, match="empty.jpg.*0 bytes"):
        decode_image(b"", "empty.jpg")
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        decode_image(jpg[: len(jpg) // 2], "cut.jpg")
    with pytest.raises(ImageDecodeError, match="junk.jpg"):
        decode_image(b"not an image at all", "junk.jpg")
    with pytest.raises(ImageDecodeError, match="huge.png.*too large"):
        decode_image(_png(rgb), "huge.png", max_pixels=100)


@pytest.mark.parametrize("encoding,fmt", [("jpeg", "JPEG"), ("png", "PNG")])
def test_encode_round_trip(encoding, fmt):
    rgb = np.random.default_rng(2).integers(0, 256, (96, 192, 3), dtype=np.uint8)
    data = encode_image(rgb, encoding, quality=90)
    back = Image.open(io.BytesIO(data))
    assert back.format == fmt and back.size == (192, 96)
    if encoding == "png":
        np.testing.assert_array_equal(np.asarray(back), rgb)
    with pytest.raises(ValueError, match="encoding"):
        encode_image(rgb, "gif")  # type: ignore[arg-type]


def test_sub_pixel_box_stays_small_and_exact():
    img = np.zeros((10, 10, 3), np.uint8)
    img[5, 5] = (90, 180, 30)
    out = crop_box(img, (5.495, 5.495, 5.505, 5.505), (96, 192), fill=(1, 1, 1))
    assert out.shape == (96, 192, 3)
    assert (np.abs(out.astype(int) - (90, 180, 30)) <= 3).all()  # around the centre of pixel (5, 5)


def _exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_jpeg_header_size_and_exif_orientation(tmp_path):
    from PIL import ImageOps

    from posecrop.crops import jpeg_info, probe_size
    rgb = np.zeros((40, 20, 3), np.uint8)
    rgb[:10] = 255  # white top band: tells the rotation
    data = _exif_jpeg(rgb, 6)  # stored 20x40, shown rotated by 90 degrees
    assert jpeg_info(data) == (20, 40, 6)
    d = decode_image(data, "rot.jpg")
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert d.rgb.shape == ref.shape == (20, 40, 3)
    assert np.abs(d.rgb.astype(int) - ref).max() <= 8  # same orientation as PIL (decoders may differ by rounding)
    (tmp_path / "rot.jpg").write_bytes(data)
    assert probe_size(tmp_path / "rot.jpg") == (40, 20)
    (tmp_path / "a.png").write_bytes(_png(rgb))
    assert probe_size(tmp_path / "a.png") == (20, 40)
    assert jpeg_info(_png(rgb)) is None and jpeg_info(b"\xff\xd8\xff") is None


def test_jpeg_with_trailing_bytes_and_bgr_order():
    rgb = np.zeros((16, 8, 3), np.uint8)
    rgb[..., 0] = 250  # red
    data = _png(rgb, "JPEG", quality=95)
    padded = decode_image(data + b"\x00garbage", "pad.jpg")  # not ending with EOI: PIL path, still decoded
    assert padded.format == "JPEG" and padded.rgb[..., 0].mean() > 200
    bgr = decode_image(data, "x.jpg", order="BGR")
    assert bgr.pixels[..., 2].mean() > 200 and bgr.rgb[..., 0].mean() > 200
    back = decode_image(encode_image(bgr.pixels, "png", order="BGR"), "y.png")
    np.testing.assert_array_equal(back.rgb, bgr.rgb)


def test_crop_stage_boxes_keep_keypoints_on_their_pixels():
    """Keypoints put pixel i's centre at i (OpenPose convention); crops treat the image as [0, W]. The crop stage's
    boxes must bridge the two so that the pixel under a joint lands where the box geometry says (no half-pixel
    shift, which is 1.5 output pixels on a Market body crop)."""
    from posecrop.canonical import load_bank
    from posecrop.crop_worker import _boxes_per_pose
    from posecrop.regions import RegionSpec, region_boxes

    pose = load_bank().mean_pose * 100 + np.array([50.0, 80.0])          # a person ~100 px tall
    kp = np.round(pose).astype(np.float32)[None]                          # joints on whole pixels
    boxes = np.stack(_boxes_per_pose(kp, RegionSpec(), 0.1))
    np.testing.assert_allclose(boxes, region_boxes(kp, RegionSpec(), 0.1) + 0.5)
    nose = kp[0, 0]
    img = np.zeros((200, 120, 3), np.uint8)
    img[int(nose[1]), int(nose[0])] = 255
    x1, y1, x2, y2 = boxes[0, 0]
    out_h, out_w = 384, 192
    out = crop_box(img, boxes[0, 0], (out_h, out_w), np.zeros(3, np.uint8)).astype(float)[..., 0]
    ys, xs = np.nonzero(out > 0)
    w = out[ys, xs]
    expect_x = (nose[0] + 0.5 - x1) * out_w / (x2 - x1) - 0.5
    expect_y = (nose[1] + 0.5 - y1) * out_h / (y2 - y1) - 0.5
    # crops place boxes to whole output pixels (< 0.5 px); the half-source-pixel bug would be 0.5 * scale ~ 1.6 px
    assert abs((xs * w).sum() / w.sum() - expect_x) < 0.6 and abs((ys * w).sum() / w.sum() - expect_y) < 0.6
