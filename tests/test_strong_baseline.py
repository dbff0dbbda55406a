"""`resnet50`, the ReID strong baseline (Luo et al. 2019): shapes, last stride 1, BNNeck, loss terms, recipe,
size; and ImageNet weights from a local torchvision / timm state dict (reidtrain.model.pretrained)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from reidtrain.losses import batch_hard_triplet
from reidtrain.model import build_model, get_model
from reidtrain.model.complexity import count
from reidtrain.model.contract import BackboneWeightsError
from reidtrain.model.resnet import ResNet50

SIZE = (64, 32)
NUM_CLASSES = 7
LABELS = torch.arange(8) // 4          # P x K = 2 x 4
RESNET50_PARAMS = 23_508_032           # torchvision resnet50 without fc


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    torch.manual_seed(0)


def small(name: str = "resnet50", **options):
    return build_model(name, NUM_CLASSES, body_size=SIZE, **options)


# -- shapes and recipe --------------------------------------------------------------------------------------
def test_shapes_and_inputs():
    model = small().train()
    assert model.input_keys == ("body",) and model.inputs["body"].column == "whole"
    out = model({"body": torch.randn(8, 3, *SIZE)})
    assert set(out.logits) == {"id"} and out.logits["id"].shape == (8, NUM_CLASSES)
    assert out.features.shape == (8, 2048) == out.extras["triplet"].shape
    assert model.feature_dim == 2048
    feats = build_model("resnet50", 0, body_size=SIZE).eval()({"body": torch.randn(2, 3, *SIZE)})
    assert feats.logits == {} and feats.features.shape == (2, 2048)


def test_last_stride_one_doubles_the_last_feature_map():
    x = torch.randn(1, 3, *SIZE)
    assert small().eval().feature_map(x).shape[-2:] == (4, 2)                 # 64 x 32 / 16
    assert small(last_stride=2).eval().feature_map(x).shape[-2:] == (2, 1)    # / 32, torchvision's
    with pytest.raises(ValueError, match="last_stride"):
        small(last_stride=3)


def test_defaults_are_the_bag_of_tricks_recipe():
    d = get_model("resnet50").defaults
    assert d.inputs["body"].size == (256, 128) and d.inputs["body"].group == "body"
    assert d.normalize == "imagenet"
    assert (d.optimizer.name, d.optimizer.lr, d.optimizer.weight_decay) == ("adam", 3.5e-4, 5e-4)
    s = d.schedule
    assert (s.name, s.milestones, s.gamma, s.warmup_epochs) == ("multistep", (40, 70), 0.1, 10)
    assert s.warmup_factor * d.optimizer.lr == pytest.approx(3.5e-5)          # Eq. 3: from 3.5e-5
    assert (d.epochs, d.batch_size, d.sampler, d.instances_per_id) == (120, 64, "identity", 4)
    assert (d.losses.label_smoothing, d.losses.triplet_weight, d.losses.triplet_margin) == (0.1, 1.0, 0.3)


# -- BNNeck and loss --------------------------------------------------------------------------------------------
def test_bnneck_bias_frozen_feature_after_bn_triplet_before():
    model = small().train()
    neck, classifier = model.head.neck, model.head.classifier
    assert not neck.bias.requires_grad and torch.all(neck.bias == 0)
    assert classifier.bias is None
    x = torch.randn(8, 3, *SIZE)
    out = model({"body": x})
    terms = model.loss(out, LABELS)
    sum(terms.values()).backward()
    assert neck.bias.grad is None and neck.weight.grad is not None
    assert model.backbone.conv1.weight.grad is not None and classifier.weight.grad is not None

    model.eval()
    with torch.no_grad():
        out = model({"body": x})
        f = torch.flatten(F.adaptive_avg_pool2d(model.feature_map(x), 1), 1)
    assert torch.allclose(out.extras["triplet"], f, atol=1e-5)
    expected = (f - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps) * neck.weight
    assert torch.allclose(out.features, expected, atol=1e-4)
    assert torch.allclose(out.logits["id"], out.features @ classifier.weight.t(), atol=1e-5)
    before = small(test_feature="before").eval()
    with torch.no_grad():
        o = before({"body": x})
    assert torch.equal(o.features, o.extras["triplet"])


def test_loss_terms_are_smoothed_ce_plus_triplet_on_the_pre_bn_feature():
    model = small().train()
    out = model({"body": torch.randn(8, 3, *SIZE)})
    terms = model.loss(out, LABELS)
    assert list(terms) == ["ce", "triplet"]
    assert torch.allclose(terms["ce"], F.cross_entropy(out.logits["id"], LABELS, label_smoothing=0.1))
    assert torch.allclose(terms["triplet"], batch_hard_triplet(out.extras["triplet"], LABELS, 0.3))
    assert not torch.allclose(terms["triplet"], batch_hard_triplet(out.features, LABELS, 0.3))


def test_learns_a_fixed_batch():
    """The recipe's optimiser (Adam 3.5e-4) overfits one P x K batch: the identity loss falls steadily (the
    batch-hard triplet term on 8 images jumps around and is not asserted)."""
    model = small().train()
    x = torch.randn(8, 3, *SIZE)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)
    ce = []
    for _ in range(8):
        opt.zero_grad()
        terms = model.loss(model({"body": x}), LABELS)
        ce.append(float(terms["ce"].detach()))
        sum(terms.values()).backward()
        opt.step()
    assert ce[-1] < 0.6 * ce[0], ce


# -- size ---------------------------------------------------------------------------------------------------
def test_parameters_without_classifier_match_resnet50():
    model = build_model("resnet50", 751)
    report = count(model, model.example_inputs(1), group_of=model.complexity_group)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == RESNET50_PARAMS
    assert report.params_without_classifiers == RESNET50_PARAMS + 2 * 2048       # + the BNNeck's affine
    assert report.params_total - report.params_without_classifiers == 751 * 2048  # the bias-free classifier
    paper = get_model("resnet50").paper
    assert abs(report.params_without_classifiers / 1e6 - paper.params_m) <= 0.10 * paper.params_m
    assert report.per_group["bnneck"]["params"] == 4096 and "classifier" not in report.per_group


# -- ImageNet weights from a file -----------------------------------------------------------------------------
def imagenet_state() -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet-50 state dict with fc (what torchvision.models.resnet50().state_dict() has)."""
    torch.manual_seed(1)
    net = ResNet50(1000)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return net.state_dict()


def assert_loaded(model, state):
    own = model.backbone.state_dict()
    for k, v in own.items():
        if k in state:
            assert torch.equal(v, state[k]), k


def write_safetensors(path, state):
    header, blobs, offset = {}, [], 0
    for k, v in state.items():
        data = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": {torch.float32: "F32", torch.int64: "I64"}[v.dtype], "shape": list(v.shape),
                     "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_torchvision_state_dict_loads_and_fc_is_dropped(tmp_path):
    state = imagenet_state()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = small()
    report = model.load_backbone_weights(path)
    assert_loaded(model, state)
    assert report["unexpected"] == ["fc.weight", "fc.bias"] and report["missing"] == []
    assert len(report["loaded"]) == len(model.backbone.state_dict())
    assert all(k.startswith("backbone.") for k in report["loaded"])
    out = model.eval()({"body": torch.randn(2, 3, *SIZE)})                      # still a working model
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("style", ["timm", "ddp", "checkpoint", "safetensors"])
def test_timm_prefixed_and_wrapped_files_load(tmp_path, style):
    state = imagenet_state()
    if style == "timm":        # timm's resnet50: torchvision's names, no num_batches_tracked counters
        saved = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    elif style == "ddp":
        saved = {f"module.{k}": v for k, v in state.items()}
    elif style == "checkpoint":
        saved = {"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        saved = state
    path = tmp_path / ("w.safetensors" if style == "safetensors" else "w.pth")
    write_safetensors(path, saved) if style == "safetensors" else torch.save(saved, path)
    model = small("apnet-c")                                  # APNet shares the backbone loader
    report = model.load_backbone_weights(path)
    assert_loaded(model, state)
    if style == "timm":
        assert report["missing"] and all(k.endswith("num_batches_tracked") for k in report["missing"])
    else:
        assert report["missing"] == []
    assert [k.rsplit(".", 2)[-2:] for k in report["unexpected"]] == [["fc", "weight"], ["fc", "bias"]]


def test_broken_files_raise_naming_the_file_and_the_keys(tmp_path):
    state = imagenet_state()
    model = small()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    broken = dict(state)
    broken["layer5.0.conv1.weight"] = broken.pop("layer3.0.conv1.weight")
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(BackboneWeightsError, match=r"broken\.pth.*missing 1 key: layer3\.0\.conv1\.weight.*"
                                                   r"unexpected 1 key: layer5\.0\.conv1\.weight"):
        model.load_backbone_weights(path)

    shaped = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(BackboneWeightsError, match=r"shape\.pth.*wrong shape.*conv1\.weight \(64, 3, 3, 3\)"):
        model.load_backbone_weights(tmp_path / "shape.pth")

    resnet18_like = {k: v for k, v in state.items() if not k.startswith("layer3.")}
    torch.save(resnet18_like, tmp_path / "short.pth")
    with pytest.raises(BackboneWeightsError, match=r"short\.pth.*missing \d+ keys: layer3\.0.*\(\+\d+ more\)"):
        model.load_backbone_weights(tmp_path / "short.pth")

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BackboneWeightsError, match=r"list\.pth.*not a state dict"):
        model.load_backbone_weights(tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(BackboneWeightsError, match=r"text\.pth: cannot read a state dict"):
        model.load_backbone_weights(tmp_path / "text.pth")
    with pytest.raises(BackboneWeightsError, match=r"absent\.pth: no such file"):
        model.load_backbone_weights(tmp_path / "absent.pth")
    for k, v in model.backbone.state_dict().items():                        # nothing half-loaded
        assert torch.equal(v, before[k]), k
