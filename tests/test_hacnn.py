"""HA-CNN (reidtrain.model.hacnn): contract shapes, the hard-attention sampling grid (4 stripes at init), soft
attention spanning (0, 1), the parameter count against the paper, loss terms, ONNX export."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reidtrain.model import ModelInputError, build_model, get_model
from reidtrain.model.complexity import count
from reidtrain.model.hacnn import (HACNN, NUM_REGIONS, STRIPE_CENTRES, HardAttention, SoftAttention,
                                   region_grid, region_sizes, region_theta, sample_regions)

SMALL = (64, 32)
NUM_CLASSES = 5
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch: int = 2, size=SMALL) -> dict[str, torch.Tensor]:
    return {"body": torch.randn(batch, 3, *size)}


def test_shapes_features_and_attention_maps():
    torch.manual_seed(0)
    model = build_model("hacnn", NUM_CLASSES, body_size=SMALL)
    assert isinstance(model, HACNN) and model.input_keys == ("body",)
    assert model.inputs["body"].column == "whole"
    assert model.feature_dim == 1024 and model.feature_layout == (("global", 512), ("local", 512))
    out = model.train()(_inputs(3))
    assert set(out.logits) == {"global", "local"}
    assert all(v.shape == (3, NUM_CLASSES) for v in out.logits.values())
    assert out.features.shape == (3, 1024) and out.extras["triplet"].shape == (3, 1024)
    # test feature: both halves L2-normalised
    halves = out.features.split(512, dim=1)
    for half in halves:
        assert torch.allclose(half.norm(dim=1), torch.ones(3), atol=1e-5)
    maps = model.attention_maps()["soft"]
    assert [tuple(m.shape) for m in maps] == [(3, 1, 16, 8), (3, 1, 8, 4), (3, 1, 4, 2)]
    assert all(float(m.min()) > 0 and float(m.max()) < 1 for m in maps)
    boxes = model.hard_attention_boxes()
    assert boxes.shape == (3, 3, NUM_REGIONS, 4)
    stripes = torch.tensor([[0.0, r / NUM_REGIONS, 1.0, (r + 1) / NUM_REGIONS] for r in range(NUM_REGIONS)])
    assert torch.allclose(boxes, stripes.expand(3, 3, -1, -1), atol=1e-6)    # at init: the 4 stripes, every level
    model.eval()
    x = _inputs(2)
    assert torch.equal(model(x).features, model(x).features)
    headless = build_model("hacnn", 0, body_size=SMALL).eval()
    assert headless(x).logits == {} and headless(x).features.shape == (2, 1024)


@pytest.mark.parametrize("size", [(160, 64), (32, 16), (97, 41), (256, 128)])
def test_any_input_size_from_the_minimum(size):
    model = build_model("hacnn", NUM_CLASSES, body_size=size).eval()
    assert model(_inputs(1, size)).features.shape == (1, 1024)


def test_too_small_inputs_are_refused_naming_the_minimum():
    with pytest.raises(ModelInputError, match="at least 32x16"):
        build_model("hacnn", NUM_CLASSES, body_size=(24, 16))


def test_region_sizes_are_the_papers_at_160x64_and_halve_per_level():
    assert region_sizes((160, 64)) == [(24, 28), (12, 14), (6, 7)]


# -- hard attention: the sampling grid ---------------------------------------------------------------------
def _stripe_image(h: int = 80, w: int = 32, channels: int = 3) -> torch.Tensor:
    """(1, C, h, w) whose 4 horizontal stripes hold the constants 1, 2, 3, 4 (top to bottom)."""
    rows = torch.arange(h) * NUM_REGIONS // h + 1
    return rows.float().view(1, 1, h, 1).expand(1, channels, h, w).clone()


def test_hard_attention_starts_as_the_four_horizontal_stripes():
    torch.manual_seed(0)
    hard = HardAttention(64)
    t = hard(torch.randn(2, 64, 10, 4))              # any features: zero weights, the bias decides
    assert t.shape == (2, NUM_REGIONS, 2)
    expected = torch.tensor([[0.0, c] for c in STRIPE_CENTRES])
    assert torch.allclose(t, expected.expand(2, -1, -1), atol=1e-6)   # exactly the stripe centres (no tanh shift)
    image = _stripe_image().expand(2, -1, -1, -1)
    regions = sample_regions(image, t, (24, 28))
    assert regions.shape == (NUM_REGIONS * 2, 3, 24, 28)
    for r in range(NUM_REGIONS):
        region = regions[r * 2:(r + 1) * 2]          # region-major: region r of both images
        value = r + 1.0
        assert float(region.median()) == value
        # bilinear sampling may blend a sliver of the neighbouring stripe at the edge rows, never more
        assert float((region - value).abs().max()) < 0.5
        assert float((region == value).float().mean()) > 0.8


def test_the_region_grid_is_affine_grid_of_the_region_matrix():
    torch.manual_seed(0)
    t = torch.tanh(torch.randn(3, 2))
    for size in [(24, 28), (7, 5)]:
        want = F.affine_grid(region_theta(t[:, None])[:, 0], [3, 1, *size], align_corners=False)
        assert torch.allclose(region_grid(t, size), want, atol=1e-6)


def test_translations_move_the_sampled_region():
    image = _stripe_image()
    down = torch.tensor([[[0.0, STRIPE_CENTRES[0] + 0.5]]])       # stripe 1's region moved by one stripe height
    assert float(sample_regions(image, down, (24, 28)).median()) == 2.0
    side = torch.zeros(1, 1, 2)
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 1, 80, 32)
    left = sample_regions(ramp, side, (12, 16)).mean()
    right = sample_regions(ramp, torch.tensor([[[0.5, 0.0]]]), (12, 16)).mean()
    assert float(right) > float(left) + 4              # t_x shifts the region to the right


def test_regions_are_learnable_and_the_local_branch_gets_gradients():
    torch.manual_seed(0)
    model = build_model("hacnn", NUM_CLASSES, body_size=SMALL).train()
    out = model(_inputs(4))
    sum(model.loss(out, torch.tensor([0, 1, 2, 3])).values()).backward()
    for level in range(3):
        assert model.hard[level].fc.weight.grad.abs().sum() > 0, level    # gradients reach the translations
        assert any(p.grad.abs().sum() > 0 for p in model.local_blocks[level].parameters())


# -- soft attention ------------------------------------------------------------------------------------------
def test_soft_attention_spans_zero_to_one_without_the_relu_defect():
    torch.manual_seed(0)
    soft = SoftAttention(64).train()
    a = soft(torch.randn(4, 64, 12, 6))
    assert a.shape == (4, 64, 12, 6)
    assert float(a.min()) > 0 and float(a.max()) < 1
    assert float(a.min()) < 0.5 < float(a.max())        # [0.5, 1) with a ReLU before the sigmoid
    assert float((a < 0.5).float().mean()) > 0.2
    with torch.no_grad():
        soft.fuse[1].bias.fill_(-4.0)
    soft.eval()
    assert float(soft(torch.randn(2, 64, 12, 6)).max()) < 0.5    # the whole map can switch off


# -- size, loss, source ------------------------------------------------------------------------------------
def test_parameter_count_within_ten_percent_of_the_paper():
    entry = get_model("hacnn")
    model = build_model("hacnn", 751)
    report = count(model, model.example_inputs(1), group_of=model.complexity_group)
    assert entry.paper.params_m == 2.7
    assert abs(report.params_without_classifiers / 1e6 - 2.7) / 2.7 <= 0.10
    shared = report.per_group["local branch (shared by 4 regions)"]["params"]
    assert abs((report.params_without_classifiers + 3 * shared) / 1e6 - 4.5) < 0.1   # torchreid's "4.5 M"
    assert report.params_total - report.params_without_classifiers == 2 * (512 * 751 + 751)


def test_loss_is_cross_entropy_on_both_classifiers():
    torch.manual_seed(0)
    model = build_model("hacnn", NUM_CLASSES, body_size=SMALL).train()
    out = model(_inputs(4))
    labels = torch.tensor([0, 1, 1, 4])
    terms = model.loss(out, labels)
    assert list(terms) == ["ce"]
    expected = F.cross_entropy(out.logits["global"], labels) + F.cross_entropy(out.logits["local"], labels)
    assert torch.allclose(terms["ce"], expected)
    assert model.accuracy_logits(out) is out.logits["global"]
    from reidtrain.model import LossSettings
    tri = build_model("hacnn", NUM_CLASSES, body_size=SMALL, losses=LossSettings(triplet_weight=1.0))
    assert set(tri.loss(tri.train()(_inputs(4)), labels)) == {"ce", "triplet"}


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("hacnn", 4, body_size=(32, 16)).train()
    x, labels = _inputs(8, (32, 16)), torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(20):
        loss = sum(model.loss(model(x), labels).values())
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_source_has_no_device_hard_coding():
    import ast

    import reidtrain.model.hacnn as module
    tree = ast.parse(Path(module.__file__).read_text())
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert not called & {"cuda", "upsample", "upsample_bilinear"}
    for n in ast.walk(tree):   # every interpolate / grid_sample says align_corners
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") in ("interpolate", "grid_sample", "affine_grid"):
            assert "align_corners" in {k.arg for k in n.keywords}, ast.unparse(n)


def test_onnx_export_at_batch_one(tmp_path):
    """Traceable export of the whole model at batch 1 (dynamic batch axis, as reidtrain.export writes it).
    Opset 17 passes onnx.checker; onnx's reference evaluator runs GridSample only under its opset-20 spelling
    (mode "linear"; opset 16-19 write "bilinear"), so the numbers are checked on an opset-20 export."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, body):
            return self.m({"body": body}).features

    tiny = (32, 16)
    model = build_model("hacnn", NUM_CLASSES, body_size=tiny).eval()
    wrapper = Features(model).eval()
    x = torch.randn(1, 3, *tiny)
    for opset in (17, 20):
        path = tmp_path / f"hacnn-{opset}.onnx"
        torch.onnx.export(wrapper, (x,), str(path), input_names=["body"], output_names=["features"],
                          opset_version=opset, dynamo=False,
                          dynamic_axes={"body": {0: "batch"}, "features": {0: "batch"}})
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        assert any(n.op_type == "GridSample" for n in graph.graph.node)
    xb = torch.randn(2, 3, *tiny)                   # a batch of 2 through the batch-1 trace: dynamic batch
    got = ReferenceEvaluator(graph).run(None, {"body": xb.numpy()})[0]
    want = model({"body": xb}).features.detach().numpy()
    assert got.shape == (2, 1024)
    assert math.isclose(float(abs(got - want).max()), 0.0, abs_tol=1e-4)
