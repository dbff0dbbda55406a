"""The model contract and registry: a model added in one file (a plug-in named by $REIDTRAIN_MODELS) trains,
evaluates, exports to ONNX, resumes and shows in `model-info` through the public CLI, with no other file
changed; the optimiser / schedule / loss settings resolve from the model's defaults; the generic losses."""
from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import pytest
import torch

import faultkit as fk
from reidtrain.config import TrainConfig
from reidtrain.losses import batch_hard_triplet, cross_entropy
from reidtrain.model import build_model, get_model, list_models
from reidtrain.model.registry import UnknownModelError
from reidtrain.optim import build_scheduler, lr_factor
from reidtrain.resolve import resolve
from test_data import write_tiny_cache

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = textwrap.dedent('''
    """A tiny whole-image ReID model: what a user writes to add a model (one file, one registration)."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from reidtrain.model import (InputSpec, ModelDefaults, ModelOutput, OptimizerSpec, PaperRow, ReidModel,
                                 register_model)


    @dataclass
    class TinyOptions:
        width: int = 8


    class TinyNet(ReidModel):
        def __init__(self, num_classes, inputs, losses, options):
            super().__init__("tiny-test", inputs, num_classes, losses)
            self.features = nn.Sequential(nn.Conv2d(3, options.width, 3, stride=2, padding=1),
                                          nn.BatchNorm2d(options.width),
                                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.feature_dim = options.width
            self.feature_layout = (("pooled", options.width),)
            self.classifier = nn.Linear(options.width, num_classes) if num_classes else None

        def forward(self, inputs):
            self.check_inputs(inputs)
            f = self.features(inputs["image"])
            logits = {"id": self.classifier(f)} if self.classifier is not None else {}
            return ModelOutput(logits, f, {})


    @register_model("tiny-test", options=TinyOptions, paper=PaperRow("nobody 2026", params_m=0.001),
                    defaults=ModelDefaults(inputs={"image": InputSpec("whole", (32, 16))}, epochs=2, batch_size=4,
                                           optimizer=OptimizerSpec("adam", lr=1e-3, weight_decay=0.0)))
    def build_tiny(num_classes, inputs, losses, options):
        """a tiny test model"""
        return TinyNet(num_classes, inputs, losses, options)
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("plugin") / "tiny_model.py"
    path.write_text(TINY_MODEL)
    return {**os.environ, "REIDTRAIN_MODELS": str(path)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"), train_ids=3, per_id=4)


def test_a_model_in_one_file_goes_through_every_command(plugin, cache, tmp_path):
    run = tmp_path / "run"
    r = fk.cli("train", "--cache", cache, "--out", run, "--model", "tiny-test", "-O", "width=12", "--workers", "0",
               "--no-progress", "--no-tensorboard", timeout=300, env=plugin)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["optimizer"] == "adam" and cfg["train"]["epochs"] == 2       # the model's defaults
    assert cfg["train"]["model_options"] == {"width": 12}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and all("loss_ce" in row for row in rows)
    r = fk.cli("evaluate", run, "--no-progress", "--workers", "0", timeout=300, env=plugin)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert 0 <= json.dumps(metrics).count("mAP") and (run / "eval" / "cmc.png").is_file()
    # --branches needs per-branch features ("branch:*" extras): this model has none, and the error says so
    r = fk.cli("evaluate", run, "--branches", "--no-progress", "--workers", "0", "--out", tmp_path / "b",
               timeout=300, env=plugin)
    assert r.returncode == 1 and "per-branch features" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = fk.cli("export", run, "--out", tmp_path / "tiny.onnx", timeout=300, env=plugin)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "tiny.onnx").stat().st_size > 0
    r = fk.cli("train", "--cache", cache, "--out", run, "--model", "tiny-test", "-O", "width=12", "--workers", "0",
               "--epochs", "3", "--resume", "--no-progress", "--no-tensorboard", timeout=300, env=plugin)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    r = fk.cli("model-info", "--model", "tiny-test", timeout=300, env={**plugin, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny-test" in r.stdout and "nobody 2026" in r.stdout and "width=8" in r.stdout
    # without the plug-in the model is unknown, and the error names where models come from
    r = fk.cli("model-info", "--model", "tiny-test", timeout=300)
    assert r.returncode != 0 and "tiny-test" in r.stderr


def test_wrong_model_options_are_named(plugin, cache, tmp_path):
    r = fk.cli("train", "--cache", cache, "--out", tmp_path / "r", "--model", "tiny-test", "-O", "depth=3",
               "--workers", "0", "--no-progress", timeout=300, env=plugin)
    assert r.returncode == 1 and "depth" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = fk.cli("train", "--cache", cache, "--out", tmp_path / "r", "--model", "tiny-test", "--lambda", "0.3",
               "--workers", "0", "--no-progress", timeout=300, env=plugin)
    assert r.returncode == 1 and "lambda_intra" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_five_branch_defaults_are_the_papers_recipe():
    cfg = resolve(TrainConfig(model="intra-inter")).cfg
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (cfg.schedule, cfg.lr_step, cfg.lr_gamma, cfg.warmup_epochs) == ("step", 40, 0.1, 0)
    assert (cfg.epochs, cfg.batch_size, cfg.sampler) == (100, 32, "random")
    assert (cfg.body_size, cfg.part_size) == ((384, 192), (96, 192))
    assert cfg.model_options == {"lambda_intra": 0.5, "attention_norm": True, "dropout": 0.5, "fusion": None,
                                 "attention": None, "fused_loss": None}   # None: the variant's own
    # the shorthands land in the options; flags override defaults
    cfg = resolve(TrainConfig(model="intra", lambda_intra=0.1, attention_norm=False, lr=0.05)).cfg
    assert cfg.model_options["lambda_intra"] == 0.1 and cfg.model_options["attention_norm"] is False
    assert cfg.lr == 0.05


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(UnknownModelError, match="intra-inter"):
        get_model("no-such-model")
    assert {"baseline", "aligned", "intra", "inter", "intra-inter"} <= set(list_models())


def test_warmup_and_schedules_are_pure_functions_of_the_epoch():
    base = dict(model="intra-inter", lr=0.1, epochs=20)
    step = resolve(TrainConfig(**base, lr_step=5)).cfg
    assert [lr_factor(e, step) for e in (0, 4, 5, 10)] == [1.0, 1.0, 0.1, pytest.approx(0.01)]
    multi = resolve(TrainConfig(**base, schedule="multistep", milestones=(3, 8), warmup_epochs=2,
                                warmup_factor=0.1)).cfg
    assert lr_factor(0, multi) == pytest.approx(0.1) and lr_factor(1, multi) == pytest.approx(0.55)
    assert lr_factor(2, multi) == 1.0 and lr_factor(3, multi) == pytest.approx(0.1)
    assert lr_factor(8, multi) == pytest.approx(0.01)
    cos = resolve(TrainConfig(**base, schedule="cosine")).cfg
    assert lr_factor(0, cos) == 1.0 and lr_factor(10, cos) == pytest.approx(0.5) and lr_factor(20, cos) < 1e-12
    # the scheduler applies the factors epoch by epoch, and its state resumes
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, multi)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * lr_factor(e, multi) for e in range(9)])
    with pytest.raises(Exception, match="milestones"):
        resolve(TrainConfig(**base, schedule="multistep"))


def test_label_smoothing_and_batch_hard_triplet_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    logp = torch.log_softmax(logits, 1)[0]
    eps = 0.1
    expected = -((1 - eps) * logp[0] + eps / 3 * logp.sum())
    assert float(cross_entropy(logits, labels, eps)) == pytest.approx(float(expected), rel=1e-6)
    # 1-D features: anchors 0 and 1 (id 0) at 0 and 1, anchor 2 (id 1) at 3, anchor 3 (id 1) at 2.5
    f = torch.tensor([[0.0], [1.0], [3.0], [2.5]])
    y = torch.tensor([0, 0, 1, 1])
    # hardest positive / nearest negative: a0: 1 / 2.5; a1: 1 / 1.5; a2: 0.5 / 2; a3: 0.5 / 1.5
    hinge = [max(0.0, 1 - 2.5 + 0.3), max(0.0, 1 - 1.5 + 0.3), max(0.0, 0.5 - 2 + 0.3), max(0.0, 0.5 - 1.5 + 0.3)]
    assert float(batch_hard_triplet(f, y, 0.3)) == pytest.approx(sum(hinge) / 4, abs=1e-5)
    soft = [math.log1p(math.exp(d)) for d in (1 - 2.5, 1 - 1.5, 0.5 - 2, 0.5 - 1.5)]
    assert float(batch_hard_triplet(f, y, None)) == pytest.approx(sum(soft) / 4, abs=1e-5)
    # no positive pair in the batch: zero, and still differentiable
    g = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet(g, torch.tensor([0, 1, 2]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and g.grad is not None


def test_triplet_and_label_smoothing_reach_the_five_branch_loss():
    model = build_model("aligned", 3, (64, 32), (16, 32))
    from reidtrain.model import LossSettings
    model.losses = LossSettings(label_smoothing=0.1, triplet_weight=1.0)
    inputs = {k: torch.rand(4, 3, *s.size) for k, s in model.inputs.items()}
    terms = model.loss(model(inputs), torch.tensor([0, 0, 1, 1]))
    assert list(terms) == ["intra", "inter", "triplet"] and all(torch.isfinite(t) for t in terms.values())
