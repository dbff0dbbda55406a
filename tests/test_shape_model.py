"""The linear-Gaussian shape model (posecrop.shape_model) and the shape-model repair of posecrop.canonical."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posecrop.canonical import (JOINT_DETECTED, JOINT_FALLBACK, JOINT_REPAIRED, CanonicalBank, load_bank,
                                repair)
from posecrop.keypoints import KEYPOINT_INDEX
from posecrop.shape_model import ShapeModel, fit_template, learn_shape_model, placement_design, solve_placement

V1_BANK = Path(__file__).resolve().parent / "data" / "canonical_bank_v1.json"   # the bank shipped before format 2
V1_SHA = "57fb4d858e7cf4fbdcec9f11ffb7d0b2bb7a7b2089bbdf350b1c6811ea1d5e58"


@pytest.fixture(scope="module")
def bank() -> CanonicalBank:
    return load_bank()


def _hide(truth: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kps = truth.astype(np.float32).copy()
    kps[hidden] = np.nan
    return kps, (~hidden).astype(np.float32)


def _random_masks(rng, n: int, low: int, high: int) -> np.ndarray:
    hidden = np.zeros((n, 18), bool)
    for i in range(n):
        hidden[i, rng.choice(18, size=int(rng.integers(low, high + 1)), replace=False)] = True
    return hidden


# ----------------------------------------------------------------------------------- least-squares placement


@pytest.mark.parametrize("rotation", [False, True])
def test_least_squares_fit_recovers_a_known_placement_exactly(bank, rotation):
    rng = np.random.default_rng(0)
    mean = bank.shape_model.mean
    n = 50
    scale = rng.uniform(30, 400, n)
    shift = rng.uniform(-100, 600, (n, 2))
    angle = rng.uniform(-0.4, 0.4, n) if rotation else np.zeros(n)
    c, s = np.cos(angle), np.sin(angle)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)               # (n, 2, 2)
    truth = np.einsum("nij,kj->nki", R, mean) * scale[:, None, None] + shift[:, None, :]
    hidden = _random_masks(rng, n, 0, 14)
    kps, scores = _hide(truth.astype(np.float64), hidden)
    w = (~hidden).astype(np.float64)
    placed = fit_template(mean, kps.astype(np.float64), w, np.full(n, 100.0), np.zeros((n, 2)), rotation=rotation)
    # hidden joints too: the placement is exact (up to float32 input and the vanishing pull of 1e-6 per joint)
    np.testing.assert_allclose(placed, truth, rtol=2e-5, atol=1e-3)
    theta = solve_placement(placement_design(mean, rotation=rotation), kps, w, np.full(3 + rotation, 1e-12),
                            np.zeros(3 + rotation))
    np.testing.assert_allclose(theta[:, 0], scale * c, rtol=1e-6)
    if rotation:
        np.testing.assert_allclose(theta[:, 1], scale * s, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(theta[:, -2:], shift, rtol=1e-6, atol=1e-4)
    if not rotation:   # an isotropic fit cannot turn the template: a turned pose leaves a residual
        turned = np.einsum("ij,kj->ki", [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]], mean) * 100
        iso = fit_template(mean, turned[None], np.ones((1, 18)), np.full(1, 100.0), np.zeros((1, 2)))
        assert np.abs(iso[0] - turned).max() > 1.0


# -------------------------------------------------------------------------------------------- shape model


def test_a_pose_in_the_span_of_the_model_is_reproduced(bank):
    m = bank.shape_model
    # the shipped model's first 8 components with a vanishing noise variance: conditioning then reproduces poses of
    # their span exactly (with the default noise the ridge shrinks weak components, which helps on real poses)
    q = 8
    exact = ShapeModel(m.mean, m.components[:q], m.variances[:q], 1e-10)
    model_bank = CanonicalBank(bank.poses, bank.names, bank.mean_pose, bank.frame, {}, exact)
    rng = np.random.default_rng(1)
    n = 60
    z = rng.normal(size=(n, q)) * np.sqrt(m.variances[:q])
    shape = m.mean + np.einsum("nk,kjd->njd", z, m.components[:q])
    scale = rng.uniform(50, 300, n)
    truth = shape * scale[:, None, None] + rng.uniform(0, 400, (n, 2))[:, None, :]
    # 0-6 hidden joints: at least 24 coordinates for the 3 + q = 11 parameters (with more hidden, some masks leave
    # the fit ill-conditioned and the vanishing scale prior starts to show)
    hidden = _random_masks(rng, n, 0, 6)
    kps, scores = _hide(truth, hidden)
    out = repair(kps, scores, model_bank, image_size=np.full((n, 2), 999.0), method="shape")
    err = np.linalg.norm(out.keypoints - truth, axis=-1)
    assert (err < 1e-3 * scale[:, None]).all()
    assert (out.joint_source == np.where(hidden, JOINT_REPAIRED, JOINT_DETECTED)).all()
    assert np.abs(out.residual).max() < 1e-4
    # the shipped model (24 components, default noise) gets them approximately, far better than the bank poses
    default = repair(kps, scores, bank, image_size=np.full((n, 2), 999.0), method="shape")
    by_bank = repair(kps, scores, bank, image_size=np.full((n, 2), 999.0), method="bank")
    e_default, e_bank = (np.linalg.norm(r.keypoints - truth, axis=-1)[hidden].mean() for r in (default, by_bank))
    assert e_default < 0.6 * e_bank


def test_shape_repair_never_moves_reliable_joints(bank):
    rng = np.random.default_rng(2)
    n = 400
    truth = rng.normal(60, 30, (n, 18, 2))
    scores = rng.uniform(0.0, 1.0, (n, 18)).astype(np.float32)
    kps = truth.astype(np.float32)
    kps[rng.random((n, 18)) < 0.2] = np.nan
    out = repair(kps, scores, bank, threshold=0.3, method="shape")
    reliable = np.isfinite(kps).all(-1) & (scores >= 0.3)
    assert np.array_equal(out.keypoints[reliable], kps[reliable])
    assert (out.joint_source[reliable] == JOINT_DETECTED).all() and (out.joint_source[~reliable] != 0).all()
    assert np.isfinite(out.keypoints).all()


def test_shape_is_the_default_repair_and_the_bank_stores_it(bank):
    assert bank.shape_model is not None and bank.content()["format_version"] == 2
    rng = np.random.default_rng(3)
    truth = bank.shape_model.mean[None] * 100 + 50 + rng.normal(0, 2, (20, 18, 2))
    kps, scores = _hide(truth, _random_masks(rng, 20, 1, 16))
    auto = repair(kps, scores, bank)
    shape = repair(kps, scores, bank, method="shape")
    assert np.array_equal(auto.keypoints, shape.keypoints)
    assert not np.array_equal(auto.keypoints, repair(kps, scores, bank, method="bank").keypoints)
    stored = json.loads(bank.to_json())
    assert stored["format_version"] == 2 and len(stored["shape_model"]["components"]) == 24
    assert "canonical fit" in stored["meta"]["command"] and "--components 24" in stored["meta"]["command"]
    with pytest.raises(ValueError, match="unknown repair method"):
        repair(kps, scores, bank, method="nearest")


def test_shape_fallback_uses_the_joints_and_the_frame(bank):
    J = KEYPOINT_INDEX
    model = bank.shape_model
    frame = np.array([[64.0, 128.0]])
    s0, c0 = model.place_in(frame)
    # the frame's mean pose, moved 6 px right and scaled by 0.9: 2-3 joints of it must pull the fill along
    truth = (model.mean * s0[0] * 0.9 + c0[0] + [6.0, 0.0])[None]
    none = repair(np.full((1, 18, 2), np.nan), np.zeros((1, 18)), bank, image_size=frame, method="shape")
    for keep in (["neck"], ["neck", "r_hip"], ["r_shoulder", "l_shoulder", "l_ankle"]):
        hidden = np.ones((1, 18), bool)
        hidden[0, [J[n] for n in keep]] = False
        kps, scores = _hide(truth, hidden)
        out = repair(kps, scores, bank, image_size=frame, method="shape", min_reliable=4)
        assert (out.joint_source[hidden] == JOINT_FALLBACK).all() and (out.joint_source[~hidden] == 0).all()
        assert np.isfinite(out.keypoints).all()
        err, err_frame = (np.abs(p[0] - truth[0])[hidden[0]].mean() for p in (out.keypoints, none.keypoints))
        assert err < err_frame, keep     # better than the frame alone
        if len(keep) == 3:
            assert err < 0.5 * err_frame
    # with min_reliable 3 the same three joints are a regular (unprimed) fill
    again = repair(kps, scores, bank, image_size=frame, method="shape", min_reliable=3)
    assert (again.joint_source[hidden] == JOINT_REPAIRED).all()


def test_learn_shape_model_on_real_poses(realdata):
    from posecrop.repair_eval import read_posegan_csv

    _, kps, scores = read_posegan_csv(realdata / "market1501_samples" / "keypoints_posegan_csv"
                                      / "market-annotation-train.csv")
    complete = kps[(scores > 0).all(1)][:400]
    model = learn_shape_model(complete, components=10)
    assert model.components.shape == (10, 18, 2) and (np.diff(model.variances) <= 0).all()
    flat = model.components.reshape(10, 36)
    np.testing.assert_allclose(flat @ flat.T, np.eye(10), atol=1e-4)
    np.testing.assert_allclose(model.mean.mean(0), 0.0, atol=1e-6)
    assert np.ptp(model.mean[:, 1]) == pytest.approx(1.0, abs=1e-5)
    # the mirror images make the mean left/right symmetric
    from posecrop.canonical_fit import mirror_poses
    np.testing.assert_allclose(mirror_poses(model.mean)[0], model.mean, atol=1e-5)
    with pytest.raises(ValueError, match="complete poses"):
        learn_shape_model(np.full((40, 18, 2), np.nan))


# ------------------------------------------------------------------------------------------ bank formats


def test_old_format_1_bank_still_loads_and_repairs_with_its_poses(tmp_path):
    old = load_bank(V1_BANK)
    assert old.shape_model is None and old.sha256 == V1_SHA and old.content()["format_version"] == 1
    assert old.to_json() == V1_BANK.read_text()             # re-saved byte for byte: the hash is unchanged
    rng = np.random.default_rng(4)
    truth = old.mean_pose[None] * 100 + 60 + rng.normal(0, 2, (10, 18, 2))
    kps, scores = _hide(truth, _random_masks(rng, 10, 1, 10))
    auto = repair(kps, scores, old)
    assert np.array_equal(auto.keypoints, repair(kps, scores, old, method="bank").keypoints)
    with pytest.raises(ValueError, match="shape model"):
        repair(kps, scores, old, method="shape")
    # a format-2 file without its shape model is refused, naming the file
    doc = json.loads(old.to_json())
    doc["format_version"] = 2
    del doc["sha256"]
    bad = tmp_path / "v2_without_model.json"
    bad.write_text(json.dumps(doc))
    from posecrop.canonical import BankFormatError
    with pytest.raises(BankFormatError, match="v2_without_model.json"):
        load_bank(bad)


def test_format_2_round_trip(bank, tmp_path):
    path = bank.save(tmp_path / "bank.json")
    again = load_bank(path)
    assert again.sha256 == bank.sha256 and path.read_text() == again.to_json()
    m, a = bank.shape_model, again.shape_model
    assert np.array_equal(m.components, a.components) and np.array_equal(m.variances, a.variances)
    assert (m.noise, m.height_fraction, m.center, m.scale_spread, m.centre_spread) == \
        (a.noise, a.height_fraction, a.center, a.scale_spread, a.centre_spread)
    other = ShapeModel(m.mean, m.components, m.variances * 1.01, m.noise, meta=m.meta)
    changed = CanonicalBank(bank.poses, bank.names, bank.mean_pose, bank.frame, bank.meta, other)
    assert changed.sha256 != bank.sha256                       # the shape model is part of the content


def test_cli_defaults_mirror_the_model_defaults():
    from posecrop import commands_canonical, shape_model

    assert commands_canonical.DEFAULT_COMPONENTS == shape_model.DEFAULT_COMPONENTS
    assert commands_canonical.DEFAULT_NOISE == shape_model.DEFAULT_NOISE
