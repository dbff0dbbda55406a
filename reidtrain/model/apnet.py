"""`apnet-c` / `apnet-s`: APNet, Chen, Gu, Lu, Bao, Zhou, "Person Re-identification via Attention Pyramid"
(IEEE TIP 2021), on the ResNet-50 strong baseline (last stride 1, BNNeck; reidtrain.model.strong_baseline).

An attention pyramid follows each of the five ResNet-50 stages - the stem (conv1, bn1, relu, max-pool; 64
channels) and layer1..layer4 (256, 512, 1024, 2048): the same five cut points as the official code, which
attends after `base_1` (conv1, bn1, max-pool) and after each residual layer. "Split-attend-merge-stack":

    X_1 = X  * A_1(X)                          level 1 attends the whole feature
    X_k = X_{k-1} + X_{k-1} * A_k(X_{k-1})     level k >= 2: split X_{k-1} into k parts, attend each part,
                                               merge the k maps into one map A_k of the feature's shape and
                                               stack it on the previous level with a residual connection
    output X_L = X * A_1 * (1 + A_2) * ... * (1 + A_L)     (L = `levels`; the official default is 2)

The finer level works on the coarser level's output ("fine-grained attention guided by coarse attention"), and
the residual keeps a finer level from switching off what the coarser one let through. Two readings of "split",
option `split`:

    "channel"  the official code (fast-reid based, channel attention only): the parts are k groups of channels;
               APNet-C's level k >= 2 is its ResNeSt-like split attention (the groups summed, pooled, one
               bottleneck MLP, a softmax over the k groups per channel), level 1 a squeeze-excitation of
               hidden width 8 at every stage, as the code has it (about +4.3 M parameters at level 2).
    "spatial"  the paper's description: the parts are k horizontal stripes of the feature map, each attended by
               its own attention unit, the k maps concatenated top to bottom.

and two kinds of attention, by model: APNet-C channel attention (squeeze-excitation, maps (B, C, 1, 1) per part),
APNet-S spatial attention (1x1 conv bottleneck - BN - ReLU - 3x3 conv - sigmoid, maps (B, 1, h, w) per part).
Defaults: APNet-C splits channels (the code that produced its published numbers), APNet-S splits space (the
paper's description; the official release has no spatial version - it points to RGA-S, whose relation-aware
unit is not re-implemented here). Differences from the official code, on purpose: the residual stacking (the code
multiplies the levels and puts a frozen-shift BatchNorm after level 2), coarse-to-fine order (the code applies
level 2 before level 1), and the stem's ReLU (missing in the code's ResNet).

Recipe (the issue's reading of the paper; the paper text was not at hand to check every number): input 384x192,
ImageNet normalisation, P x K with K = 4 (batch 64), Adam lr 4e-4, weight decay 5e-4, 10 warm-up epochs,
x 0.1 at epochs 40, 80, 120, 160 epochs; label-smoothed CE (eps 0.1) + batch-hard triplet (margin 0.3);
flip / pad-crop / random erasing (TrainConfig.augment's defaults).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .contract import InputSpec, LossSettings, ModelDefaults, ModelInputError, OptimizerSpec, ScheduleSpec
from .network import horizontal_strips
from .registry import PaperRow, register_model
from .resnet import ResNet50
from .strong_baseline import BODY, ResNetBNNeck

SplitAxis = Literal["channel", "spatial"]
AttentionKind = Literal["channel", "spatial"]
MAX_LEVELS = 4
MAPS_NAME = "attention_pyramid"
"""attention_maps()'s key: not an input name, so the report lays the maps over the input and numbers them as the
stages (block 1 = the stem, 2-5 = layer1-layer4)."""


# ------------------------------------------------------------------------------------------- split and merge
def split_parts(x: torch.Tensor, parts: int, axis: SplitAxis) -> list[torch.Tensor]:
    """Cut (B, C, H, W) into `parts` pieces: channel groups (axis "channel") or horizontal stripes top to bottom
    (axis "spatial"), of (nearly) equal size."""
    if parts == 1:
        return [x]
    if axis == "channel":
        if x.shape[1] < parts:
            raise ModelInputError(f"cannot split {x.shape[1]} channels into {parts} groups")
        return list(torch.tensor_split(x, parts, dim=1))
    if x.shape[-2] < parts:
        raise ModelInputError(f"a feature map {tuple(x.shape[-2:])} cannot be cut into {parts} stripes: "
                              f"the input is too small for this pyramid level")
    return horizontal_strips(x, parts)


def merge_parts(maps: list[torch.Tensor], parts: list[torch.Tensor], axis: SplitAxis) -> torch.Tensor:
    """One map for the whole feature from the parts' maps: each map (broadcastable to its part) stretched along
    the split axis to its part's extent, then concatenated along that axis."""
    if len(maps) == 1:
        return maps[0]
    dim = 1 if axis == "channel" else 2
    out = []
    for m, p in zip(maps, parts):
        shape = list(m.shape)
        shape[dim] = p.shape[dim]
        out.append(m.expand(shape))
    return torch.cat(out, dim)


# ------------------------------------------------------------------------------------------ attention units
class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): GAP -> linear -> ReLU -> linear -> sigmoid, (B, C, 1, 1) in [0, 1]."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))[..., None, None]


class SpatialGate(nn.Module):
    """Spatial attention: 1x1 conv (C -> hidden) - BN - ReLU - 3x3 conv (-> 1) - sigmoid, (B, 1, h, w) in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.score = nn.Conv2d(hidden, 1, 3, padding=1)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score(F.relu(self.bn(self.reduce(x)))))


class SplitChannelAttention(nn.Module):
    """The official code's level k >= 2 (ResNeSt-like radix k): the k channel groups summed, pooled, one
    bottleneck MLP (C/k -> max(C k / 4, 32), BN, ReLU -> C), a softmax over the k groups for every channel of a
    group; the merged map (B, C, 1, 1), group i's channels weighted by its share."""

    def __init__(self, channels: int, radix: int, reduction: int = 4) -> None:
        super().__init__()
        if channels % radix:
            raise ValueError(f"split='channel' channel attention needs equal groups: {channels} channels do not "
                             f"split into {radix}; use levels <= 2, or split='spatial'")
        self.radix = radix
        width = channels // radix
        hidden = max(channels * radix // reduction, 32)
        self.fc1 = nn.Linear(width, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = split_parts(x, self.radix, "channel")
        s = sum(parts).mean((2, 3))
        logits = self.fc2(F.relu(self.bn(self.fc1(s)))).view(x.shape[0], self.radix, -1)
        weights = torch.softmax(logits, dim=1)
        maps = [weights[:, i, :, None, None] for i in range(self.radix)]
        return merge_parts(maps, parts, "channel")


# --------------------------------------------------------------------------------------------- the pyramid
class PyramidLevel(nn.Module):
    """Level k: split the feature into k parts along `split`, attend each, merge the maps (A_k)."""

    def __init__(self, channels: int, parts: int, split: SplitAxis, attention: AttentionKind,
                 se_hidden: int = 8) -> None:
        super().__init__()
        self.parts = parts
        self.split = split
        self.attention = attention
        self.joint: nn.Module | None = None
        self.units = nn.ModuleList()
        if attention == "channel" and split == "channel" and parts > 1:
            self.joint = SplitChannelAttention(channels, parts)
            return
        widths = [channels] * parts if split == "spatial" else [len(c) for c in torch.arange(channels)
                                                                 .tensor_split(parts)]
        for w in widths:
            self.units.append(SqueezeExcitation(w, se_hidden) if attention == "channel" else SpatialGate(w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A_k, broadcastable to x: (B, C, 1, 1) / (B, C, H, 1) for channel attention, (B, 1, H, W) / (B, C, H, W)
        for spatial attention (split along space / channels)."""
        if self.joint is not None:
            return self.joint(x)
        parts = split_parts(x, self.parts, self.split)
        return merge_parts([unit(p) for unit, p in zip(self.units, parts)], parts, self.split)


def stack_levels(x: torch.Tensor, levels, record: list | None = None) -> torch.Tensor:
    """X_1 = X * A_1(X); X_k = X_{k-1} + X_{k-1} * A_k(X_{k-1}) (see the module docstring). `levels` are
    callables x -> A_k; the maps are appended to `record` when one is given."""
    y = x
    for k, level in enumerate(levels):
        a = level(y)
        if record is not None:
            record.append(a)
        y = y * a if k == 0 else y + y * a
    return y


class AttentionPyramid(nn.Module):
    """The attention pyramid after one stage: levels 1..L (`stack_levels`)."""

    def __init__(self, channels: int, levels: int, split: SplitAxis, attention: AttentionKind,
                 se_hidden: int = 8) -> None:
        super().__init__()
        self.levels = nn.ModuleList(PyramidLevel(channels, k, split, attention, se_hidden)
                                    for k in range(1, levels + 1))
        self.last_gain: torch.Tensor | None = None
        self.last_size: tuple[int, int] = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.last_gain = None
            return stack_levels(x, self.levels)
        maps: list[torch.Tensor] = []
        y = stack_levels(x, self.levels, maps)
        self.last_gain = self.gain(maps).detach()
        self.last_size = (int(x.shape[-2]), int(x.shape[-1]))
        return y

    @staticmethod
    def gain(maps: list[torch.Tensor]) -> torch.Tensor:
        """The pyramid's factor on its input, A_1 (1 + A_2) ... (1 + A_L), averaged over channels and divided by
        its largest value 2^(L-1): (B, 1, h', w') in [0, 1] (h' = 1 / w' = 1 where the maps do not vary)."""
        g = maps[0]
        for a in maps[1:]:
            g = g * (1 + a)
        return g.mean(1, keepdim=True) / 2 ** (len(maps) - 1)


# ----------------------------------------------------------------------------------------------- the model
@dataclass
class APNetOptions:
    """levels: pyramid levels L (1: one global attention per stage; official default 2); split: "channel"
    (the official code) or "spatial" (the paper's stripes); se_hidden: hidden width of the squeeze-excitation
    units (8 at every stage in the official code); last_stride: of layer4 (1 as in the paper)."""

    levels: int = 2
    split: SplitAxis = "channel"
    se_hidden: int = 8
    last_stride: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..{MAX_LEVELS}, got {self.levels}")
        if self.split not in ("channel", "spatial"):
            raise ValueError(f"split must be 'channel' or 'spatial', got {self.split!r}")
        if self.se_hidden < 1:
            raise ValueError(f"se_hidden must be >= 1, got {self.se_hidden}")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")


@dataclass
class APNetSOptions(APNetOptions):
    __doc__ = APNetOptions.__doc__
    split: SplitAxis = "spatial"


class APNet(ResNetBNNeck):
    """ResNet-50 with an attention pyramid after each of its five stages, BNNeck head."""

    def __init__(self, name: str, attention: AttentionKind, inputs: dict[str, InputSpec], num_classes: int,
                 losses: LossSettings | None, options: APNetOptions) -> None:
        super().__init__(name, inputs, num_classes, losses, options.last_stride, "after")
        self.attention = attention
        self.options = options
        self.pyramids = nn.ModuleList(AttentionPyramid(c, options.levels, options.split, attention, options.se_hidden)
                                      for c in ResNet50.STAGE_CHANNELS)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        for stage, pyramid in zip(self.backbone.stages(), self.pyramids):
            x = pyramid(stage(x))
        return x

    def attention_maps(self) -> dict[str, list[torch.Tensor]]:
        """MAPS_NAME -> the pyramids' gains of the last eval forward, stages 1-5 (`AttentionPyramid.gain`),
        (B, 1, h, w) in [0, 1] at each stage's resolution: APNet-S's spatial maps, or APNet-C's per-stripe mean
        channel gain (split="spatial"). {} for APNet-C with split="channel" (its maps have no spatial extent)
        and before an eval forward."""
        gains = [p.last_gain for p in self.pyramids]
        if any(g is None for g in gains) or all(g.shape[-2:] == (1, 1) for g in gains):
            return {}
        return {MAPS_NAME: [g.expand(g.shape[0], 1, *p.last_size) for g, p in zip(gains, self.pyramids)]}

    def complexity_group(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head == "pyramids":
            return f"attention pyramid {int(rest.split('.')[0]) + 1}"
        return super().complexity_group(name)


APNET_DEFAULTS = ModelDefaults(
    inputs={BODY: InputSpec("whole", (384, 192), "body")},
    normalize="imagenet",
    optimizer=OptimizerSpec("adam", lr=4e-4, weight_decay=5e-4),
    schedule=ScheduleSpec("multistep", milestones=(40, 80, 120), gamma=0.1, warmup_epochs=10, warmup_factor=0.1),
    losses=LossSettings(label_smoothing=0.1, triplet_weight=1.0, triplet_margin=0.3),
    epochs=160, batch_size=64, sampler="identity", instances_per_id=4)

APNET_SOURCE = "Chen et al., IEEE TIP 2021 (APNet)"


def _register(name: str, attention: AttentionKind, options: type, paper: PaperRow, summary: str) -> None:
    def build(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings, opts: APNetOptions) -> APNet:
        return APNet(name, attention, inputs, num_classes, losses, opts)

    build.__qualname__ = f"build_{name.replace('-', '_')}"
    register_model(name, defaults=APNET_DEFAULTS, options=options, paper=paper, summary=summary)(build)


_register("apnet-c", "channel", APNetOptions,
          PaperRow(APNET_SOURCE + ", APNet-C", note="Market-1501 R1 96.2 / mAP 90.5, DukeMTMC 90.4 / 81.5, MSMT17 "
                   "83.7 / 63.5 (level 2); no parameter count given - the official code has 23.5 + 4.3 M",
                   reported={"market": {"R1": 96.2, "mAP": 90.5}, "duke": {"R1": 90.4, "mAP": 81.5},
                             "msmt17": {"R1": 83.7, "mAP": 63.5}}),
          "APNet-C: ResNet-50 + channel-attention pyramids after the five stages (Chen et al. 2021)")
_register("apnet-s", "spatial", APNetSOptions,
          PaperRow(APNET_SOURCE + ", APNet-S", note="spatial-attention variant (RGA-S unit in the paper); its "
                   "numbers were not checked here - the published code release covers APNet-C only"),
          "APNet-S: ResNet-50 + spatial-attention pyramids after the five stages (Chen et al. 2021)")
