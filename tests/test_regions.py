"""Eq. 1-2 region boxes (DESIGN.md section 2) checked against hand-computed numbers."""
import numpy as np
import pytest

from posecrop.keypoints import KEYPOINT_INDEX
from posecrop.regions import (DEFAULT_REGION_JOINTS, REGION_NAMES, RegionGeometryError, RegionSpec, fit_width,
                              region_boxes)


def _pose(x_default: float = 30.0, wrists_x: tuple[float, float] | None = None) -> np.ndarray:
    """A hand-made upright pose; y values chosen so that every term of Eq. 1-2 is easy to compute by hand."""
    y = {"nose": 20, "neck": 30, "r_eye": 18, "l_eye": 18, "r_ear": 19, "l_ear": 19,
         "r_shoulder": 35, "l_shoulder": 35, "r_elbow": 50, "l_elbow": 50, "r_wrist": 65, "l_wrist": 65,
         "r_hip": 60, "l_hip": 60, "r_knee": 80, "l_knee": 80, "r_ankle": 110, "l_ankle": 110}
    kp = np.full((18, 2), x_default, dtype=np.float32)
    for name, v in y.items():
        kp[KEYPOINT_INDEX[name], 1] = v
    if wrists_x is not None:
        kp[KEYPOINT_INDEX["r_wrist"], 0], kp[KEYPOINT_INDEX["l_wrist"], 0] = wrists_x
    return kp


def test_eq_1_2_hand_computed():
    # P1 head: min y 18, max y 30 -> top = 2*18 - 30 = 6.
    # P4 lower legs: min 80, max 110 -> bottom = 4/3*110 - 80/3 = 120.
    # H = 114, beta*H = 11.4.  x: 16 joints at 30, wrists at 0 and 70 -> xc = 550/18 = 30.556;
    # xc -+ H/4 = 2.056 / 59.056,
    # so x_l = min(2.056, 0) = 0 and x_r = max(59.056, 70) = 70.
    boxes = region_boxes(_pose(wrists_x=(0.0, 70.0))[None], beta=0.1)
    expected = np.array([
        [0, 6.0, 70, 120.0],            # R0 whole body
        [0, 6.0, 70, 30 + 11.4],        # R1 head: bottom = max y(P1) + beta
        [0, 30 - 11.4, 70, 65 + 11.4],  # R2 upper body: neck 30 .. wrists 65
        [0, 60 - 11.4, 70, 80 + 11.4],  # R3 upper legs: hips 60 .. knees 80
        [0, 80 - 11.4, 70, 120.0],      # R4 lower legs: top = min y(P4) - beta, bottom = bottom(R0)
    ])
    assert boxes.shape == (1, 5, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], expected, atol=1e-4)


def test_width_from_height_when_joints_are_narrow():
    # all x = 30: xc = 30, x_l = 30 - 114/4 = 1.5, x_r = 30 + 28.5 = 58.5
    boxes = region_boxes(_pose()[None], beta=0.0)
    np.testing.assert_allclose(boxes[0, :, 0], 1.5, atol=1e-4)
    np.testing.assert_allclose(boxes[0, :, 2], 58.5, atol=1e-4)
    # beta = 0: neighbouring regions touch the joints exactly
    np.testing.assert_allclose(boxes[0, 1, 3], 30.0, atol=1e-4)
    np.testing.assert_allclose(boxes[0, 2, [1, 3]], [30.0, 65.0], atol=1e-4)


def test_paper_best_beta_and_batch_equals_single():
    a, b = _pose(wrists_x=(0.0, 70.0)), _pose(x_default=100.0) + np.float32([0, 7])
    batch = region_boxes(np.stack([a, b]), beta=3 / 48)
    np.testing.assert_allclose(batch[0], region_boxes(a[None], beta=3 / 48)[0])
    np.testing.assert_allclose(batch[1], region_boxes(b[None], beta=3 / 48)[0])
    # second pose: shifted down by 7 -> same H = 114, beta*H = 7.125
    np.testing.assert_allclose(batch[1, 1, 3], 30 + 7 + 7.125, atol=1e-4)
    np.testing.assert_allclose(batch[1, 0, [1, 3]], [13.0, 127.0], atol=1e-4)


def test_region_spec_override_changes_the_boxes():
    joints = dict(DEFAULT_REGION_JOINTS)
    joints["head"] = ("nose", "neck")  # min y 20, max 30 -> top = 10, H = 110
    boxes = region_boxes(_pose()[None], RegionSpec(joints), beta=0.1)
    np.testing.assert_allclose(boxes[0, 0, [1, 3]], [10.0, 120.0], atol=1e-4)
    np.testing.assert_allclose(boxes[0, 1, 3], 30 + 11.0, atol=1e-4)
    assert tuple(RegionSpec(joints).joints) == REGION_NAMES


def test_boxes_nest_vertically_and_overlap_by_beta():
    boxes = region_boxes(_pose(wrists_x=(0.0, 70.0))[None], beta=0.1)[0]
    top, bottom = boxes[0, 1], boxes[0, 3]
    assert (boxes[1:, 1] >= top - 1e-4).all() and (boxes[1:, 3] <= bottom + 1e-4).all()
    assert boxes[1, 3] > boxes[2, 1]  # head and upper body overlap


def test_rejects_missing_joints_and_upside_down_poses():
    kp = _pose()[None].copy()
    kp[0, 3] = np.nan
    with pytest.raises(RegionGeometryError, match="repair"):
        region_boxes(kp)
    flipped = _pose()[None].copy()
    flipped[..., 1] *= -1  # head below the feet
    with pytest.raises(RegionGeometryError, match="H <= 0"):
        region_boxes(flipped)
    with pytest.raises(ValueError, match="shape"):
        region_boxes(np.zeros((2, 17, 2)))


def test_fit_width_clips_to_the_image_columns_by_hand():
    boxes = np.array([[[-10.0, -5.0, 70.0, 170.0], [5.0, 0.0, 50.0, 40.0]],      # wider than a 60-px image; inside
                      [[80.0, 10.0, 95.0, 150.0], [-20.0, 1.0, -2.0, 9.0]]], np.float32)  # beside the image
    out = fit_width(boxes, np.array([60, 60]))
    np.testing.assert_allclose(out[0], [[0, -5, 60, 170], [5, 0, 50, 40]])
    np.testing.assert_allclose(out[1], [[0, 10, 60, 150], [0, 1, 60, 9]])     # nothing left: the full width
    assert out.dtype == np.float32 and boxes[0, 0, 0] == -10.0                # the input is not changed
    with pytest.raises(ValueError, match="widths"):
        fit_width(boxes, np.array([60]))
