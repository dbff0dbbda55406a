"""APNet-C / APNet-S (Chen et al. 2021): the pyramid's split, merge and residual stacking, both readings of
"split", shapes, attention maps, BNNeck loss terms, recipe and parameter counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reidtrain.losses import batch_hard_triplet
from reidtrain.model import build_model, get_model
from reidtrain.model.apnet import (AttentionPyramid, PyramidLevel, SplitChannelAttention, merge_parts,
                                   split_parts, stack_levels)
from reidtrain.model.complexity import count, is_classifier
from reidtrain.model.contract import ModelInputError

SIZE = (64, 32)
NUM_CLASSES = 7
LABELS = torch.arange(8) // 4          # P x K = 2 x 4
CASES = [("apnet-c", "channel"), ("apnet-c", "spatial"), ("apnet-s", "channel"), ("apnet-s", "spatial")]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    torch.manual_seed(0)


# -- split and merge ------------------------------------------------------------------------------------------
def test_split_cuts_along_the_named_axis_and_merge_restores_the_shape():
    x = torch.randn(2, 8, 6, 4)
    groups = split_parts(x, 2, "channel")
    assert [g.shape for g in groups] == [(2, 4, 6, 4)] * 2 and torch.equal(torch.cat(groups, 1), x)
    stripes = split_parts(x, 3, "spatial")
    assert [s.shape for s in stripes] == [(2, 8, 2, 4)] * 3 and torch.equal(torch.cat(stripes, 2), x)
    assert split_parts(x, 1, "spatial") == [x]
    # per-stripe channel maps (B, C, 1, 1) -> one (B, C, H, 1) map, stripe i's rows carry map i
    maps = [torch.full((2, 8, 1, 1), float(i)) for i in range(3)]
    merged = merge_parts(maps, stripes, "spatial")
    assert merged.shape == (2, 8, 6, 1)
    assert merged[0, 0, :, 0].tolist() == [0, 0, 1, 1, 2, 2]
    # per-group spatial maps (B, 1, h, w) -> one (B, C, h, w) map, group i's channels carry map i
    maps = [torch.rand(2, 1, 6, 4) for _ in range(2)]
    merged = merge_parts(maps, groups, "channel")
    assert merged.shape == x.shape
    assert torch.equal(merged[:, :4], maps[0].expand(2, 4, 6, 4))
    assert torch.equal(merged[:, 4:], maps[1].expand(2, 4, 6, 4))
    with pytest.raises(ModelInputError, match="cannot be cut into 3 stripes"):
        split_parts(torch.zeros(1, 4, 2, 2), 3, "spatial")


@pytest.mark.parametrize("attention", ["channel", "spatial"])
def test_spatial_level_attends_each_stripe_on_its_own(attention):
    level = PyramidLevel(16, 2, "spatial", attention).eval()
    assert len(level.units) == 2                                     # one attention unit per stripe
    x = torch.randn(2, 16, 6, 4)
    changed = x.clone()
    changed[:, :, :3] = torch.randn(2, 16, 3, 4)                     # the top stripe only
    with torch.no_grad():
        a, b = level(x), level(changed)
    assert a.shape == ((2, 16, 6, 1) if attention == "channel" else (2, 1, 6, 4))
    assert torch.equal(a[:, :, 3:], b[:, :, 3:]) and not torch.allclose(a[:, :, :3], b[:, :, :3])
    assert a.min() >= 0 and a.max() <= 1


def test_channel_split_spatial_level_attends_each_channel_group():
    level = PyramidLevel(16, 2, "channel", "spatial").eval()
    assert [u.reduce.in_channels for u in level.units] == [8, 8]
    x = torch.randn(2, 16, 6, 4)
    changed = x.clone()
    changed[:, :8] = torch.randn(2, 8, 6, 4)                          # group 1 only
    with torch.no_grad():
        a, b = level(x), level(changed)
    assert a.shape == x.shape
    assert torch.equal(a[:, 8:], b[:, 8:]) and not torch.allclose(a[:, :8], b[:, :8])
    assert torch.equal(a[:, :8], a[:, :1].expand(2, 8, 6, 4))        # one map per group


def test_channel_split_channel_level_is_the_codes_split_attention():
    level = PyramidLevel(64, 2, "channel", "channel").eval()
    assert isinstance(level.joint, SplitChannelAttention) and len(level.units) == 0
    with torch.no_grad():
        a = level(torch.randn(3, 64, 5, 4))
    assert a.shape == (3, 64, 1, 1)
    assert torch.allclose(a[:, :32] + a[:, 32:], torch.ones(3, 32, 1, 1), atol=1e-6)   # softmax over the groups
    # the 4.3 M of the official code: fc1 C/2 -> C/2, BN, fc2 C/2 -> C (with biases)
    c = 2048
    unit = SplitChannelAttention(c, 2)
    assert sum(p.numel() for p in unit.parameters()) == (c // 2 * c // 2 + c // 2) + 2 * (c // 2) + (c // 2 * c + c)
    with pytest.raises(ValueError, match="64 channels do not split into 3"):
        SplitChannelAttention(64, 3)


# -- residual stacking ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_with_attention_forced_to_one_the_pyramid_gives_the_residual_formula(levels):
    pyramid = AttentionPyramid(16, levels, "spatial", "spatial").eval()
    for level in pyramid.levels:
        level.forward = lambda x: torch.ones_like(x[:, :1])           # A_k = 1 everywhere
    x = torch.randn(2, 16, 6, 4)
    with torch.no_grad():
        y = pyramid(x)
    # X_1 = X * 1, X_k = X_{k-1} + X_{k-1} * 1
    assert torch.allclose(y, x * 2 ** (levels - 1))
    assert torch.allclose(pyramid.last_gain, torch.ones(2, 1, 6, 4))  # the gain divided by its maximum


@pytest.mark.parametrize("split,attention", [("spatial", "spatial"), ("spatial", "channel"), ("channel", "channel")])
def test_each_level_attends_the_previous_levels_output(split, attention):
    pyramid = AttentionPyramid(16, 3 if split == "spatial" else 2, split, attention).eval()
    x = torch.randn(2, 16, 6, 4)
    with torch.no_grad():
        y1 = x * pyramid.levels[0](x)
        expected = y1 + y1 * pyramid.levels[1](y1)
        if len(pyramid.levels) == 3:
            expected = expected + expected * pyramid.levels[2](expected)
        assert torch.allclose(pyramid(x), expected, atol=1e-6)
        assert torch.allclose(stack_levels(x, pyramid.levels), expected, atol=1e-6)
    gain = pyramid.last_gain
    assert gain.min() >= 0 and gain.max() <= 1


# -- the model --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,split", CASES)
def test_shapes_loss_terms_and_attention_maps(name, split):
    model = build_model(name, NUM_CLASSES, body_size=SIZE, split=split).train()
    assert len(model.pyramids) == 5 and all(len(p.levels) == 2 for p in model.pyramids)
    x = torch.randn(8, 3, *SIZE)
    out = model({"body": x})
    assert out.logits["id"].shape == (8, NUM_CLASSES) and out.features.shape == (8, 2048)
    terms = model.loss(out, LABELS)
    assert list(terms) == ["ce", "triplet"]
    assert torch.allclose(terms["ce"], F.cross_entropy(out.logits["id"], LABELS, label_smoothing=0.1))
    assert torch.allclose(terms["triplet"], batch_hard_triplet(out.extras["triplet"], LABELS, 0.3))
    sum(terms.values()).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []
    assert model.attention_maps() == {}                          # no eval forward yet

    model.eval()
    with torch.no_grad():
        out = model({"body": x[:3]})
        neck = model.head.neck
        f = out.extras["triplet"]
        assert torch.allclose(out.features, (f - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps)
                              * neck.weight, atol=1e-4)
    maps = model.attention_maps()
    if (name, split) == ("apnet-c", "channel"):
        assert maps == {}                                          # channel gains have no spatial extent
        return
    assert list(maps) == ["attention_pyramid"] and len(maps["attention_pyramid"]) == 5
    # stem and layer1 at 1/4, layer2 1/8, layer3 1/16, layer4 1/16 (last stride 1)
    assert [tuple(m.shape) for m in maps["attention_pyramid"]] == [(3, 1, 16, 8), (3, 1, 16, 8), (3, 1, 8, 4),
                                                                   (3, 1, 4, 2), (3, 1, 4, 2)]
    for m in maps["attention_pyramid"]:
        assert m.min() >= 0 and m.max() <= 1
        if name == "apnet-c":                                      # per-stripe channel gain: constant along a row
            assert torch.equal(m, m[..., :1].expand_as(m))


def test_options_levels_and_bad_values():
    model = build_model("apnet-s", NUM_CLASSES, body_size=SIZE, levels=4)
    assert [len(p.levels) for p in model.pyramids] == [4] * 5
    assert [len(lv.units) for lv in model.pyramids[0].levels] == [1, 2, 3, 4]
    assert get_model("apnet-c").parse_options({}).split == "channel"
    assert get_model("apnet-s").parse_options({}).split == "spatial"
    with pytest.raises(ValueError, match="levels"):
        build_model("apnet-c", NUM_CLASSES, levels=0)
    with pytest.raises(ValueError, match="64 channels do not split into 3"):
        build_model("apnet-c", NUM_CLASSES, levels=3)
    with pytest.raises(Exception, match="split"):
        build_model("apnet-c", NUM_CLASSES, split="diagonal")
    tiny = build_model("apnet-s", NUM_CLASSES, body_size=(32, 16), levels=4).eval()
    with pytest.raises(ModelInputError, match="stripes"):      # layer3's 2 x 1 map cannot give 3 stripes
        tiny({"body": torch.randn(1, 3, 32, 16)})


def test_defaults_are_the_papers_recipe():
    for name in ("apnet-c", "apnet-s"):
        d = get_model(name).defaults
        assert d.inputs["body"].size == (384, 192) and d.inputs["body"].column == "whole"
        assert d.normalize == "imagenet"
        assert (d.optimizer.name, d.optimizer.lr) == ("adam", 4e-4)
        assert (d.schedule.name, d.schedule.milestones, d.schedule.warmup_epochs) == ("multistep", (40, 80, 120), 10)
        assert (d.epochs, d.sampler, d.instances_per_id) == (160, "identity", 4)
        assert (d.losses.label_smoothing, d.losses.triplet_weight, d.losses.triplet_margin) == (0.1, 1.0, 0.3)
        assert "96.2" in get_model("apnet-c").paper.note and "90.5" in get_model("apnet-c").paper.note


# -- size --------------------------------------------------------------------------------------------------------
def params(name: str, **options) -> int:
    """Parameters without the classifier (complexity.count's convention, without its forward at 384 x 192)."""
    model = build_model(name, 751, **options)
    return sum(p.numel() for n, p in model.named_parameters() if not is_classifier(n))


def test_parameter_counts():
    base = params("resnet50")
    assert abs(base - 23.5e6) <= 0.10 * 23.5e6
    extra_c = params("apnet-c") - base                     # the official code's level 2: about +4.3 M
    assert abs(extra_c - 4.3e6) <= 0.10 * 4.3e6
    assert params("apnet-c", levels=1) - base < 0.1e6      # level 1 alone: five small SE units
    extra_c_spatial = params("apnet-c", split="spatial") - base
    extra_s = params("apnet-s") - base
    assert 0 < extra_c_spatial < extra_c and 0 < extra_s < extra_c
    assert params("apnet-s", levels=3) > params("apnet-s")


@pytest.mark.slow
def test_full_size_macs():
    base = build_model("resnet50", 751, body_size=(384, 192))
    ref = count(base, base.example_inputs(1)).macs
    for name, split in CASES:
        model = build_model(name, 751, split=split)
        report = count(model, model.example_inputs(1), group_of=model.complexity_group)
        assert 0 < report.macs - ref < 0.05 * ref, (name, split)
        assert sum(v["macs"] for k, v in report.per_group.items() if k.startswith("attention pyramid")) \
            == report.macs - ref
