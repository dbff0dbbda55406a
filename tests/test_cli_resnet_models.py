"""`resnet50`, `apnet-c` and `apnet-s` through the public CLI at tiny sizes: train one epoch on a synthetic crop
cache (the whole-image column; resnet50 from a local ImageNet-format state dict), evaluate (APNet-S draws its
attention pyramid), export to ONNX, train --resume to a second epoch; `model-info` shows each paper row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import faultkit as fk
from reidtrain.model.resnet import ResNet50
from test_data import write_tiny_cache

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--body-size", "64x32", "--batch-size", "8", "--instances-per-id", "4", "--workers", "0",
        "--no-progress", "--no-tensorboard")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"), train_ids=3, per_id=4)


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory) -> Path:
    """A torchvision-format ResNet-50 state dict (with its 1000-way fc), DDP-prefixed."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-imagenet.pth"
    torch.save({f"module.{k}": v for k, v in ResNet50(1000).state_dict().items()}, path)
    return path


def epochs_of(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model,options", [("resnet50", ()), ("apnet-c", ()), ("apnet-s", ("-O", "levels=3"))])
def test_train_evaluate_export_resume(cache, imagenet_file, tmp_path, model, options):
    run = tmp_path / "run"
    weights = ("--backbone-weights", imagenet_file) if model == "resnet50" else ()
    r = fk.cli("train", "--cache", cache, "--out", run, "--model", model, *options, "--epochs", "1", *weights, *TINY,
               timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["optimizer"], cfg["sampler"], cfg["normalize"]) == ("adam", "identity", "imagenet")  # the recipe
    assert cfg["label_smoothing"] == 0.1 and cfg["triplet_weight"] == 1.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs_of(run) == [1] and "loss_ce" in rows[0] and "loss_triplet" in rows[0]
    if model == "resnet50":
        report = json.loads((run / "backbone_report.json").read_text())
        assert report["unexpected"] == ["module.fc.weight", "module.fc.bias"] and report["missing"] == []

    r = fk.cli("evaluate", run, "--no-progress", "--workers", "0", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mAP" in json.dumps(json.loads((run / "eval" / "metrics.json").read_text()))
    assert bool(list((run / "eval").glob("attention-*.png"))) == (model == "apnet-s")

    onnx_path = tmp_path / f"{model}.onnx"
    r = fk.cli("export", run, "--out", onnx_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert onnx_path.stat().st_size > 1_000_000                      # ResNet-50's weights are in it

    r = fk.cli("train", "--cache", cache, "--out", run, "--model", model, *options, "--epochs", "2", "--resume",
               *weights, *TINY, timeout=600)                      # the same settings (weights unused on resume)
    assert r.returncode == 0, r.stderr[-3000:]
    assert epochs_of(run) == [1, 2]


def test_model_info_rows():
    r = fk.cli("model-info", "--model", "apnet-c", timeout=300, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Chen et al." in r.stdout and "96.2" in r.stdout and "split='channel'" in r.stdout
    assert "attention pyramid 5" in r.stdout                          # the per-group table
    r = fk.cli("model-info", "--model", "resnet50", timeout=300, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resnet50: inputs 256x128" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.strip("│ ").startswith("resnet50 ") and "%" in line)
    assert "23.512" in row and "+0.1%" in row                         # 23.512 M against ResNet-50's 23.5 M
