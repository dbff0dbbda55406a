"""HydraPlus-Net (reidtrain.model.hpnet): shapes, the MDA level wiring, staged freezing, branch initialisation
from M-net, loss terms, BN-Inception ImageNet weights (Cadene naming), parameter count, ONNX export."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reidtrain.model import LossSettings, ModelInputError, build_model
from reidtrain.model.complexity import count
from reidtrain.model.contract import BackboneWeightsError
from reidtrain.model.hpnet import (NUM_MAPS, STAGES, TRUNKS, HPNet, MainNet, attend, bninception_key,
                                   map_bninception, trainable_prefixes)

SMALL = (64, 32)
NUM_CLASSES = 5
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch: int = 2, size=SMALL) -> dict[str, torch.Tensor]:
    return {"body": torch.randn(batch, 3, *size)}


def _model(stage: str = "main", **kw) -> HPNet:
    torch.manual_seed(0)
    return build_model("hpnet", NUM_CLASSES, body_size=SMALL, stage=stage, **kw)


def test_shapes_and_attention_maps():
    model = _model().train()
    assert model.input_keys == ("body",) and model.inputs["body"].column == "whole"
    assert model.feature_dim == 512 and model.feature_layout == (("fusion", 512),)
    out = model(_inputs(3))
    assert set(out.logits) == {"main", "af1", "af2", "af3", "fusion"}
    assert all(v.shape == (3, NUM_CLASSES) for v in out.logits.values())
    assert out.features.shape == (3, 512)
    maps = model.attention_maps()["mda"]
    assert [tuple(m.shape) for m in maps] == [(3, 1, 4, 2), (3, 1, 2, 1), (3, 1, 2, 1)]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps)
    model.eval()
    x = _inputs(2)
    assert torch.equal(model(x).features, model(x).features)
    headless = build_model("hpnet", 0, body_size=SMALL).eval()
    assert headless(x).logits == {} and headless(x).features.shape == (2, 512)


@pytest.mark.parametrize("size", [(32, 16), (33, 47), (100, 40)])
def test_any_input_size_from_the_minimum(size):
    model = build_model("hpnet", NUM_CLASSES, body_size=size).eval()
    assert model(_inputs(1, size)).features.shape == (1, 512)


def test_too_small_inputs_are_refused():
    with pytest.raises(ModelInputError, match="at least 32x16"):
        build_model("hpnet", NUM_CLASSES, body_size=(64, 8))


def test_the_half_inception_main_net_is_the_released_prototxt():
    main = MainNet(TRUNKS["half-inception"])
    assert main.level_channels == [256, 502, 512]             # inception_3b / 4b / 5b outputs of the prototxt
    levels = main.eval()(torch.zeros(1, 3, 224, 224))
    assert [tuple(f.shape[-2:]) for f in levels] == [(14, 14), (7, 7), (7, 7)]
    assert MainNet(TRUNKS["bninception"]).level_channels == [576, 1056, 1024]


# -- MDA ----------------------------------------------------------------------------------------------------
def test_attend_multiplies_each_map_onto_the_whole_feature():
    torch.manual_seed(0)
    feature = torch.randn(2, 6, 4, 3)
    ones = attend(torch.ones(2, NUM_MAPS, 4, 3), feature)
    assert ones.shape == (2 * NUM_MAPS, 6, 4, 3)
    assert torch.equal(ones, feature.repeat_interleave(NUM_MAPS, dim=0))      # sample-major
    spot = torch.zeros(2, NUM_MAPS, 4, 3)
    spot[1, 3, 2, 1] = 2.0
    out = attend(spot, feature)
    assert torch.equal(out[NUM_MAPS + 3, :, 2, 1], 2 * feature[1, :, 2, 1])
    assert int((out != 0).sum()) == 6                                          # only that pixel of that map
    half = attend(torch.ones(1, NUM_MAPS, 2, 2), torch.ones(1, 1, 4, 4))       # resized to the level
    assert half.shape == (NUM_MAPS, 1, 4, 4) and torch.allclose(half, torch.ones_like(half))


def test_mda_branch_k_attends_the_lower_same_and_higher_levels():
    model = _model().eval()
    with torch.no_grad():
        levels = model.main(_inputs(2)["body"])
    shapes = [tuple(f.shape) for f in levels]
    for k, branch in enumerate(model.branches, start=1):
        alpha, attended = branch.attended(levels)
        assert alpha.shape == (2, NUM_MAPS, *levels[k - 1].shape[-2:])          # from block k
        assert [tuple(a.shape) for a in attended] == [(2 * NUM_MAPS, *s[1:]) for s in shapes]
        # alpha comes from F^k only
        other = [f.clone() for f in levels]
        for j in range(3):
            if j != k - 1:
                other[j] = torch.randn_like(other[j])
        assert torch.allclose(branch.attended(other)[0], alpha)
        # each attended level is that level's feature times the maps: zero maps -> zero attended features
        with torch.no_grad():
            branch.attention.bn.weight.zero_()
            branch.attention.bn.bias.zero_()
        zero_alpha, zeroed = branch.attended(levels)
        assert float(zero_alpha.abs().sum()) == 0
        assert all(float(a.abs().sum()) == 0 for a in zeroed)
        # the rest of the network after each level: the later blocks of M-net (level 3 is the last)
        assert [list(r) for r in branch.rest] == [model.main.blocks_after(1), model.main.blocks_after(2), []]
    assert model.main.blocks_after(1) == ["inception_4a", "inception_4b", "inception_5a", "inception_5b"]
    assert model.main.blocks_after(2) == ["inception_5a", "inception_5b"]


# -- staged training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_only_the_stages_parameters_get_gradients_and_change(stage):
    model = _model(stage).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    out = model(_inputs(4))
    terms = model.loss(out, torch.tensor([0, 1, 2, 3]))
    sum(terms.values()).backward()
    prefixes = trainable_prefixes(stage)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if n.startswith(prefixes)}
    assert with_grad and with_grad <= trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert len(with_grad) >= 0.9 * len(trainable)      # (a few BN biases right before a ReLU may see no signal)
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = {k for k in changed if not k.startswith(prefixes) and k != "branch_initialised"}
    if stage in ("af1", "af2", "af3"):   # the branch's later blocks were copied from M-net on its first step
        frozen_changed = {k for k in frozen_changed if not k.startswith(f"branches.{int(stage[2]) - 1}.")}
    assert frozen_changed == set()        # weights and batch-norm statistics of the frozen parts stay
    assert any(k.startswith(prefixes) for k in changed)


def test_branch_copies_start_from_the_trained_main_net_once():
    model = _model("af2")
    assert not bool(model.branch_initialised[1])
    with torch.no_grad():
        model.main.blocks["inception_5a"].convs["1x1"].conv.weight.add_(1.0)
    model.train()(_inputs(2))
    copy = model.branches[1].rest[0]["inception_5a"].convs["1x1"].conv.weight
    assert torch.equal(copy, model.main.blocks["inception_5a"].convs["1x1"].conv.weight)
    assert bool(model.branch_initialised[1]) and not bool(model.branch_initialised[0])
    assert "branch_initialised" in model.state_dict()                   # a resume does not copy again
    with torch.no_grad():
        copy.add_(1.0)
    model(_inputs(2))
    assert not torch.equal(copy, model.main.blocks["inception_5a"].convs["1x1"].conv.weight)


def test_loss_terms_per_stage():
    labels = torch.tensor([0, 1, 1, 4])
    for stage, used in [("main", ["main"]), ("af3", ["af3"]), ("fusion", ["fusion"]),
                        ("joint", ["main", "af1", "af2", "af3", "fusion"])]:
        model = _model(stage).train()
        out = model(_inputs(4))
        terms = model.loss(out, labels)
        assert list(terms) == ["ce"]
        expected = sum(F.cross_entropy(out.logits[n], labels) for n in used)
        assert torch.allclose(terms["ce"], expected), stage
        assert model.accuracy_logits(out) is out.logits["fusion" if stage == "joint" else stage]
    tri = LossSettings(triplet_weight=1.0)
    for stage, has in [("main", False), ("fusion", True)]:
        torch.manual_seed(0)
        model = build_model("hpnet", NUM_CLASSES, body_size=SMALL, stage=stage, losses=tri).train()
        assert ("triplet" in model.loss(model(_inputs(4)), labels)) == has


def test_stage_option_is_checked():
    from reidkit.typedconfig import ConfigError
    with pytest.raises((ValueError, ConfigError), match="stage"):
        build_model("hpnet", NUM_CLASSES, body_size=SMALL, stage="af4")


# -- ImageNet weights ------------------------------------------------------------------------------------------
def _cadene_state(main: MainNet) -> dict[str, torch.Tensor]:
    """`main` written as a Cadene-format BN-Inception state dict: renamed keys, conv biases (compensated in the
    running means, so the network computes the same), the ImageNet classifier."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for name, value in main.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        state[bninception_key(name)] = value.clone()
    for key in list(state):
        if key.endswith("_bn.running_mean"):
            layer = key[:-len("_bn.running_mean")]
            bias = torch.randn(state[key].shape, generator=g)
            state[f"{layer}.bias"] = bias
            state[key] = state[key] + bias
    state["last_linear.weight"] = torch.randn(1000, 1024, generator=g)
    state["last_linear.bias"] = torch.zeros(1000)
    return state


def test_bninception_weights_load_with_renamed_keys_and_folded_biases(tmp_path):
    torch.manual_seed(0)
    source = MainNet(TRUNKS["bninception"])
    with torch.no_grad():                      # non-trivial batch-norm statistics
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "bninception.pth"
    torch.save(_cadene_state(source), path)
    assert "inception_3a_double_3x3_1_bn.running_var" in torch.load(path) and "conv1_7x7_s2.weight" in torch.load(path)
    model = build_model("hpnet", 0, body_size=SMALL, backbone="bninception")
    report = model.load_backbone_weights(path)
    assert report["missing"] == [] and report["unexpected"] == ["last_linear.bias", "last_linear.weight"]
    assert len(report["loaded"]) == len([k for k in source.state_dict() if not k.endswith("num_batches_tracked")])
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        want = source.eval()(x)
        got = model.eval().main(x)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4)
    # the branches' copies of the later blocks got the same weights
    assert torch.equal(model.branches[0].rest[0]["inception_4a"].convs["1x1"].conv.weight,
                       model.main.blocks["inception_4a"].convs["1x1"].conv.weight)
    # a file that does not fit: the error names the missing and the unexpected keys
    state = torch.load(path)
    state["inception_9z_1x1.weight"] = state.pop("inception_4c_3x3.weight")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(BackboneWeightsError, match=r"missing keys: inception_4c_3x3\.weight.*"
                                                   r"unexpected keys: inception_9z_1x1\.weight") as info:
        map_bninception(MainNet(TRUNKS["bninception"]), torch.load(bad), bad)
    assert str(bad) in str(info.value)


def test_backbone_weights_errors_name_the_file(tmp_path):
    half = build_model("hpnet", 0, body_size=SMALL)
    with pytest.raises(BackboneWeightsError, match="backbone=bninception"):
        half.load_backbone_weights(tmp_path / "x.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    full = build_model("hpnet", 0, body_size=SMALL, backbone="bninception")
    with pytest.raises(BackboneWeightsError, match="junk.pth"):
        full.load_backbone_weights(junk)
    with pytest.raises(BackboneWeightsError, match="not found"):
        full.load_backbone_weights(tmp_path / "absent.pth")


# -- size, export --------------------------------------------------------------------------------------------
def test_parameter_count_is_reported_per_part():
    model = build_model("hpnet", 751)
    report = count(model, model.example_inputs(1), group_of=model.complexity_group)
    groups = report.per_group
    assert set(groups) == {"M-net", "MDA branch 1", "MDA branch 2", "MDA branch 3", "fusion FC"}
    assert 1.5e6 < groups["M-net"]["params"] < 2.1e6                   # half-width BN-Inception trunk
    assert groups["fusion FC"]["params"] == (73 * 512 + 1) * 512 + 2 * 512
    assert report.params_without_classifiers == sum(g["params"] for g in groups.values())


def test_onnx_export_at_batch_one(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    model = build_model("hpnet", NUM_CLASSES, body_size=SMALL).eval()

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, body):
            return self.m({"body": body}).features

    x = torch.randn(1, 3, *SMALL)
    path = tmp_path / "hpnet.onnx"
    torch.onnx.export(Features(model).eval(), (x,), str(path), input_names=["body"], output_names=["features"],
                      opset_version=17, dynamo=False, dynamic_axes={"body": {0: "batch"}, "features": {0: "batch"}})
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    got = ReferenceEvaluator(graph).run(None, {"body": x.numpy()})[0]
    want = model({"body": x}).features.detach().numpy()
    assert float(abs(got - want).max()) <= 1e-5 * float(abs(want).max())   # relative: features reach ~100
