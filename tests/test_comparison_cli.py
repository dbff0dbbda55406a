"""HA-CNN and HydraPlus-Net through the public CLI at tiny sizes: train 1 epoch on a synthetic cache ->
evaluate -> export -> train --resume; HP-net's staged chain (main -> af1 with --init-from) keeps M-net frozen."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import faultkit as fk
from reidtrain.checkpoint import load_checkpoint
from test_data import write_tiny_cache

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = ("--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress",
          "--no-tensorboard")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"), train_ids=3, per_id=4)


def _ok(r) -> None:
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_hacnn_trains_evaluates_exports_and_resumes(cache, tmp_path):
    run = tmp_path / "hacnn"
    train = ("train", "--cache", cache, "--out", run, "--model", "hacnn", "--body-size", "32x16", *COMMON)
    _ok(fk.cli(*train, timeout=300))
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["optimizer"], cfg["lr"], cfg["normalize"]) == ("adam", 5e-4, "imagenet")   # the model's defaults
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "loss_ce" in rows[0]
    _ok(fk.cli("evaluate", run, "--no-progress", "--workers", "0", timeout=300))
    assert "mAP" in (run / "eval" / "metrics.json").read_text() and list((run / "eval").glob("attention-*.png"))
    # the default --opset 17 is raised to hacnn's min_onnx_opset 20 (GridSample in onnx's reference evaluator)
    _ok(fk.cli("export", run, "--out", tmp_path / "hacnn.onnx", timeout=300))
    assert (tmp_path / "hacnn.onnx").stat().st_size > 0
    _ok(fk.cli(*train[:-len(COMMON)], *COMMON[2:], "--epochs", "2", "--resume", timeout=300))
    assert _epochs(run) == [1, 2]


@pytest.mark.slow
def test_hpnet_stages_chain_through_init_from_and_resume(cache, tmp_path):
    main_run, af1_run = tmp_path / "main", tmp_path / "af1"
    base = ("train", "--cache", cache, "--model", "hpnet", "--body-size", "32x16", *COMMON)
    _ok(fk.cli(*base, "--out", main_run, "-O", "stage=main", timeout=300))
    af1 = (*base, "--out", af1_run, "-O", "stage=af1", "--init-from", main_run / "model.pt")
    _ok(fk.cli(*af1, timeout=300))
    trained_main = load_checkpoint(main_run / "model.pt")["model"]
    after_af1 = load_checkpoint(af1_run / "model.pt")["model"]
    m_net = [k for k in trained_main if k.startswith("main.")]
    assert m_net and all(torch.equal(trained_main[k], after_af1[k]) for k in m_net)   # M-net frozen (BN stats too)
    moved = [k for k in after_af1 if k.startswith("branches.0.") and not torch.equal(after_af1[k], trained_main[k])]
    assert moved                                                                        # branch 1 trained
    untouched = [k for k in after_af1 if k.startswith(("branches.1.", "branches.2.", "fusion."))]
    assert all(torch.equal(after_af1[k], trained_main[k]) for k in untouched)
    assert bool(after_af1["branch_initialised"][0]) and not bool(after_af1["branch_initialised"][1])
    _ok(fk.cli("evaluate", af1_run, "--no-progress", "--workers", "0", timeout=300))
    assert "mAP" in (af1_run / "eval" / "metrics.json").read_text()
    _ok(fk.cli("export", af1_run, "--out", tmp_path / "hpnet.onnx", timeout=300))
    head = len(base) - len(COMMON)
    _ok(fk.cli(*af1[:head], *COMMON[2:], "--epochs", "2", *af1[len(base):], "--resume", timeout=300))
    assert _epochs(af1_run) == [1, 2]
    resumed = load_checkpoint(af1_run / "model.pt")["model"]
    assert all(torch.equal(trained_main[k], resumed[k]) for k in m_net)


def test_model_info_rows_against_the_papers():
    r = fk.cli("model-info", "--model", "hacnn", timeout=300, env={"COLUMNS": "200"})
    _ok(r)
    assert "Li, Zhu, Gong" in r.stdout and "2.7M" in r.stdout and "+8.2%" in r.stdout
    r = fk.cli("model-info", "--model", "hpnet", timeout=300, env={"COLUMNS": "200"})
    _ok(r)
    assert "HydraPlus-Net" in r.stdout and "stage='main'" in r.stdout
