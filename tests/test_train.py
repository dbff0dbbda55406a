"""Training: a real run overfits a fixed batch; kill + --resume reaches bit-identical weights; init report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from reidtrain.checkpoint import CheckpointError, init_from_checkpoint, load_checkpoint, save_checkpoint
from reidtrain.config import AugmentConfig, TrainConfig
from reidtrain.model import ModelInputError, ModelOutput, build_model
from reidtrain.train import sum_terms, train
from test_data import write_tiny_cache

SMALL = dict(body_size=(64, 32), part_size=(16, 32), batch_size=4, workers=0, lr=0.02)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"), train_ids=3, per_id=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq11_loss_weights_intra_and_inter():
    # Eq. 11 lives in the five-branch model: terms {"intra": lambda * sum_j CE_j, "inter": CE(fused)}
    torch.manual_seed(0)
    model = build_model("intra-inter", 3, (64, 32), (16, 32), lambda_intra=0.3)
    labels = torch.tensor([0, 2])
    logits = {k: torch.randn(2, 3) for k in ("body", "head", "upper_body", "upper_leg", "lower_leg", "fused")}
    ce = {k: torch.nn.functional.cross_entropy(v, labels) for k, v in logits.items()}
    terms = model.loss(ModelOutput(logits, torch.zeros(2, 768)), labels)
    intra = sum(ce[k] for k in ("body", "head", "upper_body", "upper_leg", "lower_leg"))
    assert list(terms) == ["intra", "inter"]
    torch.testing.assert_close(sum_terms(terms), 0.3 * intra + ce["fused"])
    torch.testing.assert_close(terms["inter"], ce["fused"])
    with pytest.raises(ModelInputError, match="fused"):
        model.loss(ModelOutput({k: v for k, v in logits.items() if k != "fused"}, torch.zeros(2, 768)), labels)


def test_training_overfits_a_fixed_batch(cache, tmp_path):
    # One fixed batch (all 12 images of the 3 training identities, no augmentation) seen 30 times: the net must
    # learn it - training accuracy 1.0 and the Eq. 11 loss far below chance (5 * 0.5 * ln 3 + ln 3 = 3.85).
    # The threshold leaves a wide margin; the trajectory itself depends on the CPU's reduction order.
    epochs, chance = 30, (0.5 * 5 + 1) * math.log(3)
    cfg = TrainConfig(cache=cache, out=tmp_path / "run", model="intra-inter", epochs=epochs, seed=7, batch_size=12,
                      workers=0, lr=0.02, body_size=(64, 32), part_size=(16, 32), tensorboard=True,
                      augment=AugmentConfig(flip=False, pad=0, erasing=0.0))
    result = train(cfg, progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == epochs and losses[0] > chance / 2, losses
    assert sum(losses[-3:]) / 3 < chance / 4, losses
    assert result.history[-1]["accuracy"] == 1.0, result.history[-1]
    assert all(row["images_per_s"] > 0 and row["images"] == 12 for row in result.history)
    # what the run left: metrics per epoch, TensorBoard events, the last checkpoint, the final weights
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert [r["loss"] for r in rows] == losses
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == epochs
    final = load_checkpoint(tmp_path / "run" / "model.pt")
    assert final["meta"]["model"] == "intra-inter" and final["meta"]["num_classes"] == 3
    assert final["meta"]["train_pids"] == [1, 2, 3]
    assert all(torch.equal(final["model"][k], v) for k, v in result.model.state_dict().items())


def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(cache, tmp_path):
    cfg = TrainConfig(cache=cache, out=tmp_path / "straight", model="intra-inter", epochs=2, seed=3,
                      augment=AugmentConfig(pad=2, erasing=0.3, color_jitter=0.5), tensorboard=False, **SMALL)
    straight = train(cfg, progress=False)
    killed_cfg = TrainConfig(**{**cfg.__dict__, "out": tmp_path / "killed"})

    def kill(epoch: int, step: int, loss: float) -> None:  # after the 2nd of the 3 steps of epoch 2
        if epoch == 2 and step == 1:
            raise Killed

    with pytest.raises(Killed):
        train(killed_cfg, progress=False, on_step=kill)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 1
    leftover = tmp_path / "killed" / "checkpoints" / ".last.pt.abc123.tmp"  # a checkpoint write killed half-way
    leftover.write_bytes(b"half a checkpoint")
    resumed = train(killed_cfg, resume=True, progress=False)  # restarts epoch 2 from the epoch-1 checkpoint
    assert not leftover.exists()
    assert [row["epoch"] for row in resumed.history] == [2]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight.history]

    # resuming with a different setting is refused, naming it
    changed = TrainConfig(**{**killed_cfg.__dict__, "lr": 0.5})
    with pytest.raises(CheckpointError, match="lr"):
        train(changed, resume=True, progress=False)


def test_init_from_checkpoint_reports_what_matched(tmp_path):
    source = build_model("intra-inter", 5, (64, 32), (16, 32))
    save_checkpoint(tmp_path / "src.pt", {"model": {f"module.{k}": v for k, v in source.state_dict().items()}
                                          | {"module.extra.weight": torch.zeros(2)}})
    target = build_model("intra-inter", 3, (64, 32), (16, 32))
    report = init_from_checkpoint(target, tmp_path / "src.pt")
    classifier_keys = {k for k in target.state_dict()
                       if k.startswith("classifier.") and k.endswith((".weight", ".bias"))}
    assert {k for k, _, _ in report.shape_mismatched} == classifier_keys
    assert report.unexpected == ["extra.weight"]
    assert not report.missing
    assert len(report.matched) == len(target.state_dict()) - len(classifier_keys)
    key = "stem.0.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    save_checkpoint(tmp_path / "other.pt", {"state_dict": {"foo": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        init_from_checkpoint(target, tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")
