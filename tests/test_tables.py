"""The models of Tables 6-9 and `evaluate --branches` (Table 7): the paper's definitions of Table 6 rows 1-3 train
without the fused classifier, FC fusion and attention without decomposition have the right shapes and get a
gradient, and the per-branch evaluation of a tiny trained model scores every branch feature alone."""
from __future__ import annotations

import json

import pytest
import torch

import faultkit as fk
from reidtrain.config import AugmentConfig, EvalConfig, TrainConfig
from reidtrain.evaluate import evaluate, eval_dataset, extract_features, load_trained
from reidtrain.losses import cross_entropy
from reidtrain.model import build_model
from reidtrain.model.attention import AttentionHeads, IntraAttentionBlock, JointAttentionHead
from reidtrain.train import train
from test_data import write_tiny_cache

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = dict(body_size=(64, 32), part_size=(16, 32))
BRANCHES = ["global", "head", "upper_body", "upper_leg", "lower_leg", "part_fusion", "global_part"]
REGIONS = ("body", "head", "upper_body", "upper_leg", "lower_leg")


def _inputs(model, batch=4):
    torch.manual_seed(0)
    return {k: torch.rand(batch, 3, *s.size) for k, s in model.inputs.items()}


@pytest.mark.parametrize("name", ["baseline-paper", "aligned-paper", "intra-paper"])
def test_paper_definitions_train_without_the_fused_classifier(name):
    model = build_model(name, 5, **SIZES, lambda_intra=0.3)
    assert model.fused_loss is False and model.fusion == "concat"
    assert "fused" not in model.classifier and not any(k.startswith("classifier.fused") for k in model.state_dict())
    out = model(_inputs(model))
    labels = torch.tensor([0, 1, 2, 3])
    assert sorted(out.logits) == sorted(REGIONS)
    terms = model.loss(out, labels)
    assert list(terms) == ["intra"]                       # no l_inter term
    expected = 0.3 * sum(cross_entropy(out.logits[k], labels) for k in REGIONS)
    torch.testing.assert_close(terms["intra"], expected)
    assert model.accuracy_logits(out) is out.logits["body"]
    # the test-time feature is still [E_g, E_1..E_4], concatenated
    torch.testing.assert_close(out.features, torch.cat([out.extras[f"branch:{b}"] for b in BRANCHES[:5]], 1))


def test_today_variants_keep_the_fused_loss_and_the_option_switches_it():
    today = build_model("aligned", 5, **SIZES)
    assert today.fused_loss is True and "fused" in today.classifier
    assert list(today.loss(today(_inputs(today)), torch.tensor([0, 1, 2, 3]))) == ["intra", "inter"]
    off = build_model("aligned", 5, **SIZES, fused_loss=False)
    paper = build_model("aligned-paper", 5, **SIZES)
    assert list(off.state_dict()) == list(paper.state_dict())   # the option gives exactly the paper's model
    back = build_model("aligned-paper", 5, **SIZES, fused_loss=True)
    assert list(back.state_dict()) == list(today.state_dict())
    with pytest.raises(ValueError, match="no gradient"):
        build_model("inter", 5, **SIZES, fused_loss=False)
    with pytest.raises(ValueError, match="no gradient"):
        build_model("aligned-fc", 5, **SIZES, fused_loss=False)
    with pytest.raises(ValueError, match="no loss"):
        build_model("aligned-paper", 5, **SIZES, lambda_intra=0.0)
    with pytest.raises(ValueError, match="no intra-attention"):
        build_model("inter", 5, **SIZES, attention="joint")
    with pytest.raises(Exception, match="fusion"):
        build_model("aligned", 5, **SIZES, fusion="sum")


def test_fc_fusion_shapes_and_gradient():
    model = build_model("aligned-fc", 5, **SIZES)
    assert model.fusion == "fc" and model.fc_fusion.fc.weight.shape == (512, 512)
    assert not list(model.inter.parameters())                  # no inter-attention weights
    out = model(_inputs(model))
    assert out.features.shape == (4, 768) and out.extras["branch:part_fusion"].shape == (4, 512)
    model.eval()
    out = model(_inputs(model))
    parts = [out.extras[f"branch:{b}"] for b in BRANCHES[1:5]]
    torch.testing.assert_close(out.extras["branch:part_fusion"], model.fc_fusion(parts))   # E_l = FC([E_1..E_4])
    torch.testing.assert_close(out.features[:, :256], out.extras["branch:global"])
    model.train()
    loss = sum(model.loss(model(_inputs(model)), torch.tensor([0, 1, 2, 3])).values())
    loss.backward()
    assert model.fc_fusion.fc.weight.grad.abs().sum() > 0      # trained end to end by the fused loss
    assert model.complexity_group("fc_fusion.fc.weight") == "FC fusion"
    # the literal reading: FC over [E_g, E_1..E_4] gives the whole feature
    whole = build_model("aligned", 5, **SIZES, fusion="fc-all").eval()
    out = whole(_inputs(whole))
    assert whole.fc_fusion.fc.weight.shape == (768, 768) and out.features.shape == (4, 768)
    assert "branch:part_fusion" not in out.extras and out.extras["branch:global_part"] is out.features


def test_joint_attention_is_one_full_map_the_decomposed_one_is_rank_one():
    torch.manual_seed(0)
    a = torch.rand(2, 16, 6, 5)
    decomposed, joint = AttentionHeads(16), JointAttentionHead(16)
    m, s, c = decomposed(a)
    assert m.shape == (2, 16, 6, 5) and s.shape == (2, 1, 6, 5) and c.shape == (2, 16, 1, 1)
    mj, sj, cj = joint(a)
    assert mj.shape == (2, 16, 6, 5) and sj is None and cj is None and 0 <= mj.min() and mj.max() <= 1
    # logits before the norm, bias removed, as a (c, h*w) matrix per sample: S x C then a 1x1 conv is rank one,
    # the joint map is not
    z = (decomposed.mix(s * c) - decomposed.mix.bias[None, :, None, None]).detach()
    zj = (joint.mix(joint.joint(a)) - joint.mix.bias[None, :, None, None]).detach()
    assert all(torch.linalg.matrix_rank(z[i].reshape(16, -1), rtol=1e-4) == 1 for i in range(2))
    assert all(torch.linalg.matrix_rank(zj[i].reshape(16, -1), rtol=1e-4) > 1 for i in range(2))
    block = IntraAttentionBlock(8, 4, 16, 1, pools=2, attention="joint")
    assert isinstance(block.attention.heads, JointAttentionHead)
    # the whole model: every intra-attention head joint, same depth, maps (B, 1, h, w) in [0, 1]
    model = build_model("intra-inter-joint", 5, **SIZES)
    assert model.attention_kind == "joint" and model.fusion == "inter" and model.fused_loss
    assert not any(isinstance(mod, AttentionHeads) for mod in model.modules())
    assert sum(isinstance(mod, JointAttentionHead) for mod in model.modules()) == 15   # 5 branches x blocks 2-4
    full = build_model("intra-inter", 5, **SIZES)
    n_joint, n_full = (sum(p.numel() for p in m.parameters()) for m in (model, full))
    assert abs(n_joint - n_full) / n_full < 0.01                # the comparison is of the decomposition, not size
    model(_inputs(model))
    maps = model.attention_maps()
    assert [tuple(t.shape[:2]) for t in maps["body"]] == [(4, 1)] * 3
    assert all(0 <= t.min() and t.max() <= 1 for ts in maps.values() for t in ts)


# ------------------------------------------------------------------------------------------ evaluate --branches
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = write_tiny_cache(tmp_path_factory.mktemp("cache"), train_ids=3, per_id=4)
    run = tmp_path_factory.mktemp("run") / "aligned-paper"
    cfg = TrainConfig(cache=cache, out=run, model="aligned-paper", epochs=2, seed=1, batch_size=6, workers=0,
                      lr=0.02, **SIZES, tensorboard=False, augment=AugmentConfig(flip=False, pad=0, erasing=0.0))
    train(cfg, progress=False)
    return cache, run


def test_paper_definition_trains_without_the_inter_term(trained):
    _, run = trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_intra" in r and "loss_inter" not in r for r in rows), rows[-1]
    model, meta, _ = load_trained(run)
    assert meta["model_options"]["fused_loss"] is None and model.fused_loss is False


def test_evaluate_branches_scores_every_branch_alone(trained):
    cache, run = trained
    outcome = evaluate(EvalConfig(checkpoint=run, cache=cache, workers=0, branches=True, reports=False),
                       progress=False)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    branches = metrics["branches"]
    assert list(branches) == BRANCHES
    assert [branches[b]["dim"] for b in BRANCHES] == [256, 128, 128, 128, 128, 512, 768]
    for b in BRANCHES:
        assert 0 <= branches[b]["R1"] <= branches[b]["R5"] <= 100 and branches[b]["mAP"] is not None
    # [E_g, E_l] scored as a branch is the model's own feature: the same numbers as the main result
    assert branches["global_part"]["R1"] == metrics["R1"] and branches["global_part"]["mAP"] == metrics["mAP"]
    table = (run / "eval" / "branches.md").read_text()
    assert all(f"| {b} |" in table for b in BRANCHES) and "aligned-paper" in table
    # the branch features are slices of the model's feature (concat fusion): global = the first 256 dims
    model, meta, _ = load_trained(run)
    f = extract_features(model, eval_dataset(cache, "query", meta), meta["normalize"], workers=0, progress=False,
                         extras_prefix="branch:")
    assert list(f.extra) == BRANCHES
    torch.testing.assert_close(torch.from_numpy(f.extra["global"]), torch.from_numpy(f.features[:, :256]))
    assert outcome.metrics["branches"] == branches
    # a plain evaluation afterwards drops the branch table
    evaluate(EvalConfig(checkpoint=run, cache=cache, workers=0, reports=False), progress=False)
    assert "branches" not in json.loads((run / "eval" / "metrics.json").read_text())
    assert not (run / "eval" / "branches.md").exists()


def test_evaluate_branches_cli(trained, tmp_path):
    cache, run = trained
    r = fk.cli("evaluate", run, "--branches", "--no-reports", "--workers", "0", "--no-progress",
               "--out", tmp_path / "eval", timeout=300, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "each feature alone" in r.stdout and "part_fusion" in r.stdout
    assert list(json.loads((tmp_path / "eval" / "metrics.json").read_text())["branches"]) == BRANCHES
