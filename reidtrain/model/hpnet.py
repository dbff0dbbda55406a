"""HydraPlus-Net (HP-net; Liu, Zhao, Tian, Sheng, Shao, Yi, Yan, Wang, "HydraPlus-Net: Attentive Deep Features
for Pedestrian Analysis", ICCV 2017), a comparison model of Tables 3-5, on the whole image.

    M-net     the main net: an Inception-v2 (BN-Inception) trunk; its three block outputs F^1, F^2, F^3 (the
              ends of the /16, /32 and last stages) are the levels the attention works on
    AF-net    three MDA (multi-directional attention) branches k = 1, 2, 3: branch k computes 8 attention maps
              alpha^k = ReLU(BN(1x1 conv(F^k))) from block k and multiplies them onto the features of the three
              levels - for k = 2 the lower (F^1), the same (F^2) and the higher (F^3) block; every branch
              attends all three levels, so branch 1 attends its own and two higher levels, branch 3 two lower
              ones and its own. The map is resized to the level (bilinear). Each of the 8 x 3 attended
              features runs through "the rest of the network" after its level (the branch's own copies of the
              later blocks; level 3 is already the last) and is globally pooled.
    fusion    global average pooling of M-net's F^3 and of the 3 x 24 attended outputs, concatenated
              (73 x C_3), fully connected -> BN -> ReLU: the 512-d ReID feature (and the "fusion" classifier).

Staged training (the paper's recipe; option `stage`): "main" trains M-net with its classifier (GAP -> dropout
-> classifier, as the released main_net.prototxt); "af1" / "af2" / "af3" train one MDA branch with its own head
(GAP -> FC 512 -> BN -> ReLU -> dropout -> classifier, as train_val_a3.prototxt) while M-net is frozen; "fusion"
trains the fusion layer with everything else frozen; "joint" fine-tunes everything on all five losses. Frozen
parameters get requires_grad=False and their batch-norm layers stay in eval mode (running statistics kept), so
a stage changes exactly its own parameters. Chain the stages with `--init-from PREVIOUS_RUN/model.pt`
(pipelines/hpnet-staged.toml.draft); when a branch first trains (`init_branches_from_main`), its copies of the
later blocks start from M-net's trained weights (a persistent flag per branch records that this happened, so a
resume does not copy again). Every forward computes the whole network (the 512-d feature is the test feature);
parts a stage does not train run without autograd.

Main net (option `backbone`):
- "half-inception" (default, the paper's): the released prototxt's `half_InceptionNetwork_v2`: BN-Inception with
  the blocks 3b, 4b-4d left out (3a, 3b = BN-Inception's 3c reduction, 4a, 4b = its 4e reduction, 5a, 5b) and
  every width halved - including the prototxt's 86 (not 96) channels of 4b's 3x3 stream, so F^1, F^2, F^3 have
  256, 502 and 512 channels.
- "bninception": the full BN-Inception (Ioffe & Szegedy 2015; 3a-3c, 4a-4e, 5a, 5b; F^1 = 3c, F^2 = 4e,
  F^3 = 5b with 576, 1056, 1024 channels), which can start from ImageNet weights (`--backbone-weights`): a
  state dict in the naming of Cadene's `pretrainedmodels` port of the Caffe model (`conv1_7x7_s2`,
  `inception_3a_1x1_bn`, ...; timm has no BN-Inception). Its convolutions carry biases, ours do not (batch norm
  follows): the bias is folded into the batch norm's running mean, which is exact in train and eval mode.

Readings where the paper / release leave a choice: the released AF prototxt gives each of the 8 maps its own
copy of the later blocks (`inception_5a/*_att1..8`); here the 8 maps of a level share one copy (run as one
stacked batch of 8B, as the public PyTorch re-implementation does), which keeps the parameters to ~3 copies of
the later blocks per branch instead of 24. The M-net the branches read is the shared M-net itself (frozen while
the branches train), not a separate frozen copy. The reduction blocks' max-pool uses padding 1 (Caffe: ceil
mode, no padding) so that any input size concatenates. Input: the prototxt trains attributes on 224x224 crops of
256x256 images; for ReID we default to 256x128 (minimum 32x16: every level keeps at least one pixel).

The identity heads used only to train a stage (classifier.main / af1..3 / fusion, including the branch heads'
FC 512 + BN) are "classifiers" for the parameter count (reidtrain.model.complexity): what remains is M-net,
the MDA branches and the fusion layer that make the 512-d feature. The paper gives no parameter count.
Measured (`python cli.py model-info hpnet`): half-inception 29.1 M (M-net 1.8 M, each MDA branch 2.7 M, fusion
FC 19.1 M), 3.0 G MACs at 256x128 (M-net alone 0.23 G: the 24 attended passes per branch dominate);
bninception 89.8 M, 21.0 G MACs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .contract import (BackboneWeightsError, InputSpec, LossSettings, ModelDefaults, ModelInputError, ModelOutput,
                       OptimizerSpec, ReidModel, ScheduleSpec)
from .registry import PaperRow, register_model

INPUT_KEY = "body"
DEFAULT_SIZE = (256, 128)
MIN_SIZE = (32, 16)
NUM_MAPS = 8
"""L: attention maps per MDA module."""
NUM_LEVELS = 3
FEATURE_DIM = 512
STAGES = ("main", "af1", "af2", "af3", "fusion", "joint")
Stage = Literal["main", "af1", "af2", "af3", "fusion", "joint"]
Backbone = Literal["half-inception", "bninception"]


# ------------------------------------------------------------------------------------------ the main net
@dataclass(frozen=True)
class InceptionSpec:
    """One BN-Inception block. Normal blocks (stride 0): 1x1 | 3x3_reduce-3x3 | double_3x3_reduce-3x3-3x3 |
    pool-pool_proj. Reduction blocks (stride 2, c1x1 = pool_proj = 0): 3x3_reduce-3x3/2 |
    double_3x3_reduce-3x3-3x3/2 | max-pool/2 (passes the input channels)."""

    c1x1: int
    c3_reduce: int
    c3: int
    d3_reduce: int
    d3: int
    pool_proj: int = 0
    pool: Literal["avg", "max"] = "avg"
    reduction: bool = False

    def out_channels(self, in_ch: int) -> int:
        if self.reduction:
            return self.c3 + self.d3 + in_ch
        return self.c1x1 + self.c3 + self.d3 + self.pool_proj


def _red(c3r: int, c3: int, d3r: int, d3: int) -> InceptionSpec:
    return InceptionSpec(0, c3r, c3, d3r, d3, reduction=True)


@dataclass(frozen=True)
class TrunkSpec:
    stem: tuple[int, int, int]                        # conv1_7x7_s2, conv2_3x3_reduce, conv2_3x3
    blocks: tuple[tuple[str, InceptionSpec], ...]
    levels: tuple[str, str, str]                      # the blocks whose outputs are F^1, F^2, F^3


TRUNKS: dict[str, TrunkSpec] = {
    "half-inception": TrunkSpec((32, 32, 96), (
        ("inception_3a", InceptionSpec(32, 32, 32, 32, 48, 16)),
        ("inception_3b", _red(64, 80, 32, 48)),
        ("inception_4a", InceptionSpec(112, 32, 48, 48, 64, 64)),
        ("inception_4b", _red(64, 86, 96, 128)),
        ("inception_5a", InceptionSpec(176, 96, 160, 80, 112, 64)),
        ("inception_5b", InceptionSpec(176, 96, 160, 96, 112, 64, "max")),
    ), ("inception_3b", "inception_4b", "inception_5b")),
    "bninception": TrunkSpec((64, 64, 192), (
        ("inception_3a", InceptionSpec(64, 64, 64, 64, 96, 32)),
        ("inception_3b", InceptionSpec(64, 64, 96, 64, 96, 64)),
        ("inception_3c", _red(128, 160, 64, 96)),
        ("inception_4a", InceptionSpec(224, 64, 96, 96, 128, 128)),
        ("inception_4b", InceptionSpec(192, 96, 128, 96, 128, 128)),
        ("inception_4c", InceptionSpec(160, 128, 160, 128, 160, 128)),
        ("inception_4d", InceptionSpec(96, 128, 192, 160, 192, 128)),
        ("inception_4e", _red(128, 192, 192, 256)),
        ("inception_5a", InceptionSpec(352, 192, 320, 160, 224, 128)),
        ("inception_5b", InceptionSpec(352, 192, 320, 192, 224, 128, "max")),
    ), ("inception_3c", "inception_4e", "inception_5b")),
}


class ConvBN(nn.Module):
    """Convolution (no bias) -> BN -> ReLU, named like the Caffe layers (`conv`, `bn`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride,
                              padding=kernel // 2 if padding is None else padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionBlock(nn.Module):
    """A BN-Inception block (InceptionSpec); its convolutions are `convs[<Caffe suffix>]`."""

    def __init__(self, in_ch: int, spec: InceptionSpec) -> None:
        super().__init__()
        self.spec = spec
        s = 2 if spec.reduction else 1
        convs = {}
        if not spec.reduction:
            convs["1x1"] = ConvBN(in_ch, spec.c1x1, 1)
        convs["3x3_reduce"] = ConvBN(in_ch, spec.c3_reduce, 1)
        convs["3x3"] = ConvBN(spec.c3_reduce, spec.c3, 3, stride=s)
        convs["double_3x3_reduce"] = ConvBN(in_ch, spec.d3_reduce, 1)
        convs["double_3x3_1"] = ConvBN(spec.d3_reduce, spec.d3, 3)
        convs["double_3x3_2"] = ConvBN(spec.d3, spec.d3, 3, stride=s)
        if not spec.reduction:
            convs["pool_proj"] = ConvBN(in_ch, spec.pool_proj, 1)
        self.convs = nn.ModuleDict(convs)
        self.out_channels = spec.out_channels(in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        b3 = c["3x3"](c["3x3_reduce"](x))
        d3 = c["double_3x3_2"](c["double_3x3_1"](c["double_3x3_reduce"](x)))
        if self.spec.reduction:
            return torch.cat([b3, d3, F.max_pool2d(x, 3, stride=2, padding=1)], dim=1)
        pooled = (F.avg_pool2d(x, 3, stride=1, padding=1) if self.spec.pool == "avg"
                  else F.max_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([c["1x1"](x), b3, d3, c["pool_proj"](pooled)], dim=1)


class Stem(nn.Module):
    """conv1 7x7/2 -> max-pool 3x3/2 -> conv2 1x1 -> conv2 3x3 -> max-pool 3x3/2 (Caffe ceil mode): 1/8."""

    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1_7x7_s2 = ConvBN(3, widths[0], 7, stride=2)
        self.conv2_3x3_reduce = ConvBN(widths[0], widths[1], 1)
        self.conv2_3x3 = ConvBN(widths[1], widths[2], 3)
        self.out_channels = widths[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1_7x7_s2(x), 3, stride=2, ceil_mode=True)
        return F.max_pool2d(self.conv2_3x3(self.conv2_3x3_reduce(x)), 3, stride=2, ceil_mode=True)


def build_blocks(spec: TrunkSpec, names: list[str], in_ch: int) -> nn.ModuleDict:
    by_name = dict(spec.blocks)
    blocks = {}
    for name in names:
        blocks[name] = InceptionBlock(in_ch, by_name[name])
        in_ch = blocks[name].out_channels
    return nn.ModuleDict(blocks)


class MainNet(nn.Module):
    """M-net: the stem and the Inception blocks; forward -> [F^1, F^2, F^3]."""

    def __init__(self, spec: TrunkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.stem)
        self.blocks = build_blocks(spec, [n for n, _ in spec.blocks], self.stem.out_channels)
        self.level_channels = [self.blocks[n].out_channels for n in spec.levels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        levels = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.spec.levels:
                levels.append(x)
        return levels

    def blocks_after(self, level: int) -> list[str]:
        """Names of the blocks after level `level` (1-based): "the rest of the network" of an attended feature."""
        names = [n for n, _ in self.spec.blocks]
        return names[names.index(self.spec.levels[level - 1]) + 1:]

    def input_channels(self, name: str) -> int:
        names = list(self.blocks)
        i = names.index(name)
        return self.stem.out_channels if i == 0 else self.blocks[names[i - 1]].out_channels


# ------------------------------------------------------------------------------------------ MDA / AF-net
def attend(alpha: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Multiply each of the L maps of alpha (B, L, h', w') onto feature (B, C, h, w) (the map resized to the
    feature's size, bilinear): (B*L, C, h, w), sample-major (rows b*L .. b*L+L-1 are sample b's L maps)."""
    if alpha.shape[-2:] != feature.shape[-2:]:
        alpha = F.interpolate(alpha, size=feature.shape[-2:], mode="bilinear", align_corners=False)
    b, c = feature.shape[:2]
    return (alpha.unsqueeze(2) * feature.unsqueeze(1)).reshape(b * alpha.shape[1], c, *feature.shape[-2:])


class MDABranch(nn.Module):
    """MDA branch k: attention alpha^k from F^k (1x1 conv + BN + ReLU, 8 maps), multiplied onto the three
    levels; each attended level runs through this branch's copy of the blocks after it; pooled.
    forward(levels) -> (B, 3 * 8 * C_3): levels 1, 2, 3, the 8 maps of a level next to each other."""

    def __init__(self, main: MainNet, k: int, maps: int = NUM_MAPS) -> None:
        super().__init__()
        self.k = k
        self.maps = maps
        self.attention = ConvBN(main.level_channels[k - 1], maps, 1)
        rest = []
        for level in range(1, NUM_LEVELS + 1):
            names = main.blocks_after(level)
            rest.append(build_blocks(main.spec, names, main.input_channels(names[0])) if names else nn.ModuleDict())
        self.rest = nn.ModuleList(rest)
        self.last_alpha: torch.Tensor | None = None

    def attended(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """alpha^k and the attended features of the three levels ((B*L, C_j, h_j, w_j) each)."""
        alpha = self.attention(levels[self.k - 1])
        return alpha, [attend(alpha, f) for f in levels]

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        alpha, attended = self.attended(levels)
        self.last_alpha = alpha.detach()
        batch = levels[0].shape[0]
        pooled = []
        for x, rest in zip(attended, self.rest):
            for block in rest.values():
                x = block(x)
            pooled.append(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1).reshape(batch, -1))
        return torch.cat(pooled, dim=1)


class Embedding(nn.Sequential):
    """FC -> BN -> ReLU (the prototxt's fusion_feature + feature_for_classifier)."""

    def __init__(self, in_dim: int, dim: int = FEATURE_DIM) -> None:
        super().__init__(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------------------ the model
@dataclass
class HPNetOptions:
    """Options of `hpnet` (`[model.hpnet]`, `--model-option KEY=VALUE`).

    stage: which parameters train and which classifier the loss uses (module docstring): "main", "af1",
        "af2", "af3", "fusion" or "joint".
    backbone: "half-inception" (the paper's) or "bninception" (full width, ImageNet weights loadable).
    init_branches_from_main: a branch's copies of the later blocks start from M-net's weights the first time
        the branch trains (the paper initialises the AF-net from the trained M-net).
    dropout: before the identity classifiers (0.5 in the released prototxt)."""

    stage: Stage = "main"
    backbone: Backbone = "half-inception"
    init_branches_from_main: bool = True
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.backbone not in TRUNKS:
            raise ValueError(f"backbone must be one of {tuple(TRUNKS)}, got {self.backbone!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def trainable_prefixes(stage: str) -> tuple[str, ...]:
    """Parameter-name prefixes a stage trains ("" = everything)."""
    if stage == "main":
        return ("main.", "classifier.main.")
    if stage in ("af1", "af2", "af3"):
        k = int(stage[2])
        return (f"branches.{k - 1}.", f"classifier.{stage}.")
    if stage == "fusion":
        return ("fusion.", "classifier.fusion.")
    return ("",)


def stage_classifiers(stage: str) -> tuple[str, ...]:
    """The classifiers whose cross-entropy a stage trains on."""
    return ("main", "af1", "af2", "af3", "fusion") if stage == "joint" else (stage,)


class HPNet(ReidModel):
    """HydraPlus-Net (module docstring): M-net + 3 MDA branches + fusion into the 512-d feature; staged."""

    def __init__(self, num_classes: int, inputs: dict[str, InputSpec] | None = None,
                 options: HPNetOptions | None = None, losses: LossSettings | None = None) -> None:
        super().__init__("hpnet", inputs or default_inputs(), num_classes, losses)
        self.single_input(INPUT_KEY, MIN_SIZE)
        self.options = options or HPNetOptions()
        self.stage = self.options.stage
        self.main = MainNet(TRUNKS[self.options.backbone])
        self.branches = nn.ModuleList([MDABranch(self.main, k) for k in range(1, NUM_LEVELS + 1)])
        c3 = self.main.level_channels[-1]
        branch_dim = NUM_LEVELS * NUM_MAPS * c3
        self.fusion = Embedding(c3 + NUM_LEVELS * branch_dim)
        self.feature_dim = FEATURE_DIM
        self.feature_layout = (("fusion", FEATURE_DIM),)
        p = self.options.dropout
        self.classifier = nn.ModuleDict()
        if num_classes:
            self.classifier["main"] = nn.Sequential(nn.Dropout(p), nn.Linear(c3, num_classes))
            for k in range(1, NUM_LEVELS + 1):
                self.classifier[f"af{k}"] = nn.Sequential(Embedding(branch_dim), nn.Dropout(p),
                                                          nn.Linear(FEATURE_DIM, num_classes))
            self.classifier["fusion"] = nn.Sequential(nn.Dropout(p), nn.Linear(FEATURE_DIM, num_classes))
        self.register_buffer("branch_initialised", torch.zeros(NUM_LEVELS, dtype=torch.bool))
        self._init_weights()
        self.set_stage(self.stage)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # -- stages -----------------------------------------------------------------------------------------
    def set_stage(self, stage: str) -> None:
        """Train `stage`'s parameters only (requires_grad), keep the others' batch norms in eval mode."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        prefixes = trainable_prefixes(stage)
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        self.train(self.training)

    def train(self, mode: bool = True) -> HPNet:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        groups: list[nn.Module] = [self.main, *self.branches, self.fusion, *self.classifier.values()]
        return [g for g in groups if not any(p.requires_grad for p in g.parameters())]

    def sync_branch_from_main(self, k: int) -> None:
        """Copy M-net's weights (and batch-norm statistics) into branch k's copies of the later blocks."""
        with torch.no_grad():
            for rest in self.branches[k - 1].rest:
                for name, block in rest.items():
                    block.load_state_dict(self.main.blocks[name].state_dict())
            self.branch_initialised[k - 1] = True

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        self.check_inputs(inputs)
        if self.training and self.options.init_branches_from_main and self.stage in ("af1", "af2", "af3"):
            k = int(self.stage[2])
            if not bool(self.branch_initialised[k - 1]):
                self.sync_branch_from_main(k)
        levels = self.main(inputs[INPUT_KEY])
        main_vec = torch.flatten(F.adaptive_avg_pool2d(levels[-1], 1), 1)
        grad = torch.is_grad_enabled()
        branch_vecs = []
        for k, branch in enumerate(self.branches, start=1):
            # a branch builds a graph only when its stage trains it (the others are frozen and not in the loss)
            with torch.set_grad_enabled(grad and self.stage in (f"af{k}", "joint")):
                branch_vecs.append(branch(levels))
        with torch.set_grad_enabled(grad and self.stage in ("fusion", "joint")):
            features = self.fusion(torch.cat([main_vec, *branch_vecs], dim=1))
        logits: dict[str, torch.Tensor] = {}
        if self.num_classes:
            logits["main"] = self.classifier["main"](main_vec)
            for k, vec in enumerate(branch_vecs, start=1):
                logits[f"af{k}"] = self.classifier[f"af{k}"](vec)
            logits["fusion"] = self.classifier["fusion"](features)
        return ModelOutput(logits, features, {})

    # -- training ---------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of the stage's classifier(s) ("ce"; joint: all five), + "triplet" on the 512-d feature
        when the loss settings ask for it and the stage trains the fusion layer."""
        names = stage_classifiers(self.stage)
        missing = [n for n in names if n not in output.logits]
        if missing:
            raise ModelInputError(f"hpnet stage {self.stage!r} needs the classifier logits {missing} "
                                  f"(built with num_classes=0?)")
        terms = self.standard_loss(output, labels, logits={n: output.logits[n] for n in names})
        if "triplet" in terms and self.stage not in ("fusion", "joint"):
            del terms["triplet"]   # the 512-d feature does not depend on this stage's parameters
        return terms

    def accuracy_logits(self, output: ModelOutput) -> torch.Tensor | None:
        return output.logits.get("fusion" if self.stage == "joint" else self.stage)

    def attention_maps(self) -> dict[str, list[torch.Tensor]]:
        """"mda": per branch k the mean of its 8 maps alpha^k from the last forward, each scaled by its
        per-sample maximum into [0, 1] ((B, 1, h_k, w_k)); {} before the first forward."""
        maps = []
        for branch in self.branches:
            if branch.last_alpha is None:
                return {}
            m = branch.last_alpha.mean(dim=1, keepdim=True)
            peak = m.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            maps.append(m / peak)
        return {"mda": maps}

    def complexity_group(self, name: str) -> str:
        parts = name.split(".")
        if parts[0] == "main":
            return "M-net"
        if parts[0] == "branches":
            return f"MDA branch {int(parts[1]) + 1}"
        return {"fusion": "fusion FC", "classifier": "classifiers"}.get(parts[0], parts[0])

    # -- ImageNet weights -------------------------------------------------------------------------------
    def load_backbone_weights(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """BN-Inception ImageNet weights (Cadene `pretrainedmodels` naming) into M-net; backbone "bninception"
        only. The branches' copies of the later blocks get the same weights. See `bninception_key`."""
        if self.options.backbone != "bninception":
            raise BackboneWeightsError(f"{path}: hpnet's {self.options.backbone!r} main net has no ImageNet "
                                       f"weights; build it with --model-option backbone=bninception")
        state = read_state_dict(path)
        loaded, report = map_bninception(self.main, state, path)
        for k in range(1, NUM_LEVELS + 1):
            self.sync_branch_from_main(k)
        return {"loaded": loaded, **report}


# ------------------------------------------------------------------------------------------ weights
IGNORED_PREFIXES = ("last_linear.", "fc.", "classifier.")
"""Keys of a BN-Inception file that are its ImageNet classifier (ignored, reported as unexpected)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackboneWeightsError(f"{path}: backbone weights file not found") from None
    except Exception as e:
        raise BackboneWeightsError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def bninception_key(name: str) -> str:
    """Our M-net parameter / buffer name -> the Cadene BN-Inception key:
    stem.conv1_7x7_s2.conv.weight -> conv1_7x7_s2.weight, stem.conv1_7x7_s2.bn.running_mean ->
    conv1_7x7_s2_bn.running_mean, blocks.inception_3a.convs.1x1.conv.weight -> inception_3a_1x1.weight."""
    parts = name.split(".")
    if parts[0] == "stem":
        layer, kind, tensor = parts[1], parts[2], parts[3]
    else:
        layer, kind, tensor = f"{parts[1]}_{parts[3]}", parts[4], parts[5]
    return f"{layer}.{tensor}" if kind == "conv" else f"{layer}_bn.{tensor}"


def map_bninception(main: MainNet, state: dict[str, torch.Tensor],
                    path: str | os.PathLike) -> tuple[list[str], dict[str, list[str]]]:
    """Load `state` (Cadene naming) into `main`; conv biases folded into the following BN's running mean.
    Raises BackboneWeightsError naming the missing / unexpected / mis-shaped keys."""
    own = {k: v for k, v in main.state_dict().items() if not k.endswith("num_batches_tracked")}
    wanted = {bninception_key(k): k for k in own}
    biases = {k[:-len(".bias")]: k for k in state
              if k.endswith(".bias") and f"{k[:-len('.bias')]}_bn.running_mean" in state}
    missing = [src for src in wanted if src not in state]
    unexpected = [k for k in state if k not in wanted and k not in biases.values()
                  and not k.endswith("num_batches_tracked")]
    ignored = [k for k in unexpected if k.startswith(IGNORED_PREFIXES)]
    unexpected = [k for k in unexpected if not k.startswith(IGNORED_PREFIXES)]
    shapes = [f"{src} {tuple(state[src].shape)} vs {tuple(own[dst].shape)}" for src, dst in wanted.items()
              if src in state and tuple(state[src].shape) != tuple(own[dst].shape)]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        problems = [f"missing keys: {few(missing)}" if missing else "",
                    f"unexpected keys: {few(unexpected)}" if unexpected else "",
                    f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise BackboneWeightsError(f"{path}: does not fit hpnet's BN-Inception main net (Cadene pretrainedmodels "
                                   f"naming expected, e.g. conv1_7x7_s2.weight); "
                                   + "; ".join(p for p in problems if p))
    new = {}
    for src, dst in wanted.items():
        value = state[src].to(own[dst].dtype)
        if dst.endswith("bn.running_mean"):
            layer = src[:-len("_bn.running_mean")]
            if layer in biases:
                value = value - state[biases[layer]].to(value.dtype)   # BN(conv + b) = BN'(conv), mean' = mean - b
        new[dst] = value
    main.load_state_dict(new, strict=False)
    return sorted(new), {"missing": [], "unexpected": sorted(ignored)}


def default_inputs() -> dict[str, InputSpec]:
    return {INPUT_KEY: InputSpec("whole", DEFAULT_SIZE, "body")}


HPNET_DEFAULTS = ModelDefaults(
    inputs=default_inputs(),
    # The released prototxt subtracts fixed BGR means (104, 117, 123) - a global mean, not the per-sample one;
    # ImageNet mean / std is the closest normalisation the toolkit has (and the one ImageNet weights expect).
    normalize="imagenet",
    # The paper trains with SGD (Caffe); lr / schedule per stage are not given: SGD 0.01, momentum 0.9,
    # weight decay 5e-4 (the prototxt's BN layers carry no decay), x0.1 every 20 epochs, 40 epochs per stage.
    optimizer=OptimizerSpec(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4),
    schedule=ScheduleSpec(name="step", step=20, gamma=0.1),
    losses=LossSettings(),
    epochs=40,
    batch_size=32,
    sampler="random",
)


@register_model("hpnet", defaults=HPNET_DEFAULTS, options=HPNetOptions,
                paper=PaperRow("Liu et al., ICCV 2017 (HydraPlus-Net)", params_m=None,
                               note="the paper gives no parameter count; ours: M-net + 3 MDA branches + fusion "
                                    "FC, stage heads excluded",
                               # Tables 3 and 5 of Yang et al. 2019 quote the HP-net paper's figures (no mAP given)
                               reported={"market": {"R1": 76.9, "R5": 91.3, "R10": 94.5},
                                         "cuhk03-labeled": {"R1": 91.8, "R5": 98.4, "R10": 99.1}}),
                summary="HydraPlus-Net (Liu et al. 2017): M-net + multi-directional attention, staged training")
def build_hpnet(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings,
                options: HPNetOptions | None) -> HPNet:
    """HydraPlus-Net (Liu et al. 2017) on the whole image; `stage` selects what trains."""
    return HPNet(num_classes, inputs, options, losses)
