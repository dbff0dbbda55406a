"""The five-branch network: shapes of every variant, gradient flow, Eq. 7 / Eq. 9 arithmetic, Table 12 sizes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from posecrop.regions import REGION_NAMES
from reidtrain.model import MODEL_NAMES, ModelInputError, ModelOutput, build_model, horizontal_strips
from reidtrain.model.attention import (AttentionHeads, AttentionPath, InterAttention, IntraAttentionBlock,
                                       residual_attention)
from reidtrain.model.complexity import (RESNET50_TABLE12, TABLE12, TABLE12_TOLERANCE, count, model_report,
                                        table12_row)
from reidtrain.model.resnet import ResNet50

BODY, PART = (64, 32), (16, 32)
NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def small_inputs(model, batch: int = 2) -> dict[str, torch.Tensor]:
    return {k: torch.randn(batch, 3, *(BODY if k == "body" else PART)) for k in model.input_keys}


def eq11_loss(out: ModelOutput, labels: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    intra = sum(F.cross_entropy(out.logits[name], labels) for name in REGION_NAMES)
    return lam * intra + F.cross_entropy(out.logits["fused"], labels)


# -- shapes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_variant_has_the_contract_shapes(name):
    model = build_model(name, NUM_CLASSES, body_size=BODY, part_size=PART)
    assert model.branch_names == REGION_NAMES
    assert model.input_keys == (("body",) if name == "baseline" else REGION_NAMES)
    assert model.feature_dim == 256 + 4 * 128
    out = model.train()(small_inputs(model, 3))
    assert set(out.logits) == {*REGION_NAMES, "fused"}
    assert all(v.shape == (3, NUM_CLASSES) for v in out.logits.values())
    model.eval()
    inputs = small_inputs(model, 3)
    first, second = model(inputs), model(inputs)
    assert first.features.shape == (3, model.feature_dim)
    assert torch.equal(first.features, second.features)          # eval mode: no dropout, running BN stats
    maps = model.attention_maps()
    assert set(maps) == set(REGION_NAMES)
    if "intra" in name:
        for branch, branch_maps in maps.items():
            assert len(branch_maps) == 3, branch                  # blocks 2, 3, 4
            for m in branch_maps:
                assert m.shape[:2] == (3, 1) and m.min() >= 0 and m.max() <= 1
        # block 2 halves the resolution of block 1's output, block 4 keeps block 3's
        h2, h3, h4 = (m.shape[-2] for m in maps["body"])
        assert h2 == 2 * h3 and h3 == h4
    else:
        assert all(v == [] for v in maps.values())


def test_model_without_classifiers_gives_features_only():
    model = build_model("intra-inter", 0, body_size=BODY, part_size=PART).eval()
    out = model(small_inputs(model))
    assert out.logits == {} and out.features.shape == (2, 768)


def test_odd_input_sizes_pass_through_the_attention_paths():
    model = build_model("intra-inter", NUM_CLASSES).eval()
    inputs = {k: torch.randn(1, 3, *((37, 23) if k == "body" else (13, 29))) for k in model.input_keys}
    assert model(inputs).features.shape == (1, 768)


def test_bad_inputs_raise_a_clear_error():
    model = build_model("aligned", NUM_CLASSES, body_size=BODY, part_size=PART)
    inputs = small_inputs(model)
    del inputs["upper_leg"]
    with pytest.raises(ModelInputError, match="upper_leg"):
        model(inputs)
    with pytest.raises(ModelInputError, match="head"):
        model({**small_inputs(model), "head": torch.randn(2, 1, *PART)})
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", NUM_CLASSES)


def test_baseline_cuts_four_horizontal_strips_itself():
    image = torch.arange(2 * 3 * 10 * 4, dtype=torch.float32).reshape(2, 3, 10, 4)
    strips = horizontal_strips(image)
    assert sorted(s.shape[-2] for s in strips) == [2, 2, 3, 3]
    assert torch.equal(torch.cat(strips, dim=-2), image)
    assert [s.shape[-2] for s in horizontal_strips(torch.zeros(1, 3, 384, 192))] == [96] * 4

    model = build_model("baseline", NUM_CLASSES, body_size=BODY, part_size=PART).eval()
    whole = torch.randn(2, 3, *BODY)
    changed = whole.clone()
    changed[:, :, BODY[0] // 4:] = torch.randn_like(changed[:, :, BODY[0] // 4:])  # all but the top strip
    a, b = model({"body": whole}), model({"body": changed})
    assert torch.allclose(a.logits["head"], b.logits["head"])           # the first part branch sees the top strip
    assert not torch.allclose(a.logits["lower_leg"], b.logits["lower_leg"])
    assert not torch.allclose(a.logits["body"], b.logits["body"])


def test_features_are_the_global_feature_and_the_part_concatenation():
    model = build_model("inter", NUM_CLASSES, body_size=BODY, part_size=PART).eval()
    inputs = small_inputs(model)
    with torch.no_grad():
        e = {n: model.branches[n](model.stem(inputs[n])) for n in REGION_NAMES}
        expected = torch.cat([e["body"], model.inter([e[n] for n in REGION_NAMES[1:]])], dim=1)
        assert torch.allclose(model(inputs).features, expected, atol=1e-6)
    plain = build_model("aligned", NUM_CLASSES, body_size=BODY, part_size=PART).eval()
    with torch.no_grad():
        e = {n: plain.branches[n](plain.stem(inputs[n])) for n in REGION_NAMES}
        assert torch.allclose(plain(inputs).features, torch.cat([e[n] for n in REGION_NAMES], dim=1), atol=1e-6)
    assert sum(p.numel() for p in plain.inter.parameters()) == 0


# -- gradient flow -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["intra-inter", "baseline"])
def test_eq11_loss_reaches_every_parameter(name):
    model = build_model(name, NUM_CLASSES, body_size=BODY, part_size=PART).train()
    labels = torch.randint(0, NUM_CLASSES, (4,))
    eq11_loss(model(small_inputs(model, 4)), labels).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    names = [n for n, _ in model.named_parameters()]
    for branch in REGION_NAMES:
        assert any(n.startswith(f"branches.{branch}.") for n in names)
    if name == "intra-inter":
        for branch in REGION_NAMES:
            for block in (1, 2, 3):
                for part in ("encoder", "heads.spatial", "heads.channel", "heads.mix"):
                    assert any(n.startswith(f"branches.{branch}.blocks.{block}.attention.{part}") for n in names)
        assert any(n.startswith("branches.body.blocks.1.attention.decoder") for n in names)
        assert any(n.startswith("inter.weights.3") for n in names)


def test_inter_attention_learns_from_the_fused_loss_alone():
    model = build_model("intra-inter", NUM_CLASSES, body_size=BODY, part_size=PART).train()
    out = model(small_inputs(model, 4))
    F.cross_entropy(out.logits["fused"], torch.randint(0, NUM_CLASSES, (4,))).backward()
    for i in range(4):
        assert torch.any(model.inter.weights[i].weight.grad != 0)
    assert all(p.grad is None for p in model.classifier["head"].parameters())


# -- Eq. 7 ---------------------------------------------------------------------------------------------------------
def test_eq7_residual_attention_arithmetic():
    a = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    m = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    assert torch.equal(residual_attention(a, m), torch.tensor([[1.0, -3.0], [6.0, 5.0]]))


@pytest.mark.parametrize("norm", [False, True])
def test_attention_heads_arithmetic_by_hand(norm):
    # norm=True in eval mode with fresh running statistics (mean 0, variance 1) is the same arithmetic up to eps
    heads = AttentionHeads(2, norm=norm).eval()
    with torch.no_grad():
        heads.spatial.weight.zero_()
        heads.spatial.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0])   # S = A_0 - A_1 + 0.5 (centre tap only)
        heads.spatial.bias.fill_(0.5)
        heads.channel.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1))
        heads.channel.bias.copy_(torch.tensor([0.0, -1.0]))
        heads.mix.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]).reshape(2, 2, 1, 1))
        heads.mix.bias.copy_(torch.tensor([0.0, 0.25]))
    A = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 1.0]]]])   # (1, 2, 2, 2)
    m, s, c = heads(A)
    # by hand: S = A0 - A1 + 0.5; V = channel means (1, 1); C = (2*1, 1+1-1) = (2, 1)
    S = [[1.5, 1.5], [-1.5, 0.5]]
    C = [2.0, 1.0]
    assert torch.allclose(s[0, 0], torch.tensor(S))
    assert torch.allclose(c.flatten(), torch.tensor(C))
    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    expected = torch.tensor([[[sig(1.0 * S[i][j] * C[0] + 0.0) for j in range(2)] for i in range(2)],
                             [[sig(0.5 * S[i][j] * C[0] - 1.0 * S[i][j] * C[1] + 0.25) for j in range(2)]
                              for i in range(2)]])
    assert torch.allclose(m[0], expected, atol=1e-5)


def test_intra_attention_block_applies_eq7_to_its_two_paths():
    block = IntraAttentionBlock(8, 4, 16, stride=2, pools=2).eval()
    v = torch.randn(2, 8, 11, 7)
    with torch.no_grad():
        x = block.entry(v)
        a = block.trunk(x)
        m, s, c = block.attention(x)
        out = block(v)
    assert a.shape == m.shape == (2, 16, 6, 4) and s.shape == (2, 1, 6, 4) and c.shape == (2, 16, 1, 1)
    assert torch.allclose(out, (1 + m) * a, atol=1e-6)
    assert torch.allclose(block.last_map, m.mean(dim=1, keepdim=True))


def test_attention_masks_start_unsaturated():
    model = build_model("intra", NUM_CLASSES, body_size=(128, 64), part_size=(32, 64)).train()
    masks = []
    hooks = [mod.register_forward_hook(lambda mod, i, o: masks.append(o[0].detach()))
             for mod in model.modules() if isinstance(mod, AttentionHeads)]
    model({k: torch.randn(4, 3, *((128, 64) if k == "body" else (32, 64))) for k in model.input_keys})
    for h in hooks:
        h.remove()
    assert len(masks) == 15
    for m in masks:
        assert ((m < 0.01) | (m > 0.99)).float().mean() < 0.5    # gradients reach the attention paths


def test_attention_path_pools_and_upsamples_symmetrically():
    path = AttentionPath(8, 4, pools=2)
    assert len(path.encoder) == 2 and len(path.decoder) == 1
    seen = []
    hooks = [level.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape[-2:]))) for level in path.encoder]
    m, _, _ = path(torch.randn(1, 8, 9, 5))
    for h in hooks:
        h.remove()
    assert seen == [(5, 3), (3, 2)] and m.shape == (1, 8, 9, 5)


# -- Eq. 9 ---------------------------------------------------------------------------------------------------------
def test_eq9_inter_attention_arithmetic():
    inter = InterAttention(num_parts=4, dim=2)
    ws = [(1.0, 0.0), (0.0, 2.0), (-1.0, 1.0), (0.5, 0.5)]
    bs = [0.0, -1.0, 0.5, 0.0]
    with torch.no_grad():
        for fc, w, b in zip(inter.weights, ws, bs):
            fc.weight.copy_(torch.tensor([w]))
            fc.bias.fill_(b)
    parts = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 0.0]]),
             torch.tensor([[-2.0, 4.0]])]
    mu = [1 / (1 + math.exp(-(w[0] * e[0, 0].item() + w[1] * e[0, 1].item() + b))) for w, b, e in zip(ws, bs, parts)]
    expected = torch.tensor([[(m + 1) * e[0, k].item() for m, e in zip(mu, parts) for k in range(2)]])
    assert torch.allclose(inter.part_weights(parts), torch.tensor([mu]), atol=1e-6)
    assert torch.allclose(inter(parts), expected, atol=1e-6)
    plain = InterAttention(num_parts=4, dim=2, enabled=False)
    assert torch.equal(plain(parts), torch.cat(parts, dim=1))
    assert torch.equal(plain.part_weights(parts), torch.zeros(1, 4))


# -- size (Table 12) -------------------------------------------------------------------------------------------
def test_mac_counter_on_a_hand_counted_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 8, 1, stride=2, groups=2), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 5))
    r = count(model, torch.zeros(2, 3, 8, 8), classifier=lambda n: n.split(".")[0] == "5")
    assert r.macs == 4 * 8 * 8 * 3 * 9 + 8 * 4 * 4 * 2
    assert r.macs_with_classifiers == r.macs + 5 * 128
    assert r.params_total == (3 * 9 * 4 + 4) + 8 + (8 * 2 + 8) + (128 * 5 + 5)
    assert r.params_without_classifiers == r.params_total - (128 * 5 + 5)


def test_counter_reproduces_table12_resnet50_row():
    r = count(ResNet50(stride_in_1x1=True), torch.zeros(1, 3, 384, 192), classifier=lambda n: n.startswith("fc"))
    assert abs(r.params_without_classifiers / RESNET50_TABLE12["params"] - 1) < 0.005
    assert abs(r.macs / RESNET50_TABLE12["macs"] - 1) < 0.02


@pytest.mark.parametrize("name", ["aligned", "intra-inter"])
def test_size_report_matches_table12(name):
    r = model_report(name)
    ref = TABLE12[table12_row(name)]
    assert abs(r.params_without_classifiers / ref["params"] - 1) <= TABLE12_TOLERANCE["params"]
    assert abs(r.macs / ref["macs"] - 1) <= TABLE12_TOLERANCE["macs"]
    assert r.params_total - r.params_without_classifiers == 751 * ((256 + 1) + 4 * (128 + 1) + (768 + 1))
    expected_groups = {"conv1 (shared)", *REGION_NAMES} | ({"inter-attention"} if name == "intra-inter" else set())
    assert set(r.per_group) == expected_groups


def test_model_info_command_prints_the_report():
    import cli

    result = CliRunner().invoke(cli.app, ["model-info", "--model", "inter", "--body-size", "64x32",
                                          "--part-size", "16x32", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    assert "inter-attention" in result.output and "6.8M/2.26G" in result.output
    bad = CliRunner().invoke(cli.app, ["model-info", "--body-size", "64"])
    assert bad.exit_code != 0 and "HEIGHTxWIDTH" in bad.output


def _mask_saturation(model, inputs) -> list[float]:
    """Share of the mask entries m below 0.01 or above 0.99, per AttentionHeads module."""
    masks = []
    hooks = [mod.register_forward_hook(lambda mod, i, o: masks.append(o[0].detach()))
             for mod in model.modules() if isinstance(mod, AttentionHeads)]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return [float(((m < 0.01) | (m > 0.99)).float().mean()) for m in masks]


@pytest.mark.parametrize("norm", [True, False])
def test_attention_masks_stay_unsaturated_while_training(norm):
    # The literal m = sigmoid(conv(S * C)) saturates within a few dozen steps (S is a conv of ReLU outputs with a
    # large mean; the product of two unnormalised maps grows): measured 83-100 % of m at 0 or 1 after 30 steps, so
    # the attention gets no gradient. The batch norm of the mask logits (attention_norm, the default) keeps m
    # in the sigmoid's working range.
    torch.manual_seed(0)
    model = build_model("intra", 8, body_size=(64, 32), part_size=(16, 32), attention_norm=norm).train()
    inputs = {k: torch.randn(16, 3, *((64, 32) if k == "body" else (16, 32))) for k in model.input_keys}
    labels = torch.arange(16) % 8
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        loss = eq11_loss(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    saturation = _mask_saturation(model, inputs)
    assert len(saturation) == 15
    if norm:
        assert max(saturation) < 0.2
    else:
        assert min(saturation) > 0.5    # the paper's text as written: kept available, and shown to saturate


def test_attention_norm_is_recorded_and_old_checkpoints_load_without_it(tmp_path):
    from reidtrain.checkpoint import save_checkpoint
    from reidtrain.evaluate import load_trained

    plain = build_model("intra-inter", NUM_CLASSES, body_size=BODY, part_size=PART, attention_norm=False)
    meta = {"model": "intra-inter", "num_classes": NUM_CLASSES, "body_size": list(BODY), "part_size": list(PART),
            "normalize": "channel-mean", "input_columns": {}}       # no attention_norm: written before it existed
    save_checkpoint(tmp_path / "old.pt", {"format": 1, "epoch": 1, "model": plain.state_dict(), "meta": meta})
    model, _, _ = load_trained(tmp_path / "old.pt")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for h in model.modules() if isinstance(h, AttentionHeads)
                   for m in h.modules())
    normed = build_model("intra-inter", NUM_CLASSES, body_size=BODY, part_size=PART)
    save_checkpoint(tmp_path / "new.pt", {"format": 1, "epoch": 1, "model": normed.state_dict(),
                                          "meta": {**meta, "attention_norm": True}})
    model, _, _ = load_trained(tmp_path / "new.pt")
    assert all(isinstance(h.norm, torch.nn.BatchNorm2d) for h in model.modules() if isinstance(h, AttentionHeads))
