"""Base network of Sec. 3.1 / Table 1: bottleneck residual units, stages and the per-branch layers.

Table 1, read with its garbled cells restored (global branch; part branches use half of every width):

    Conv1   3x3, 32, stride 2                                  shared by all five branches
    MP      3x3 max-pool, stride 2x2 (body) / 1x2 (parts)      per branch
    Conv2x  [1x1, 32;   3x3, 32;   1x1, 64 ] x 3               stride 1
    Conv3x  [1x1, 64;   3x3, 64;   1x1, 128] x 3               stride 2
    Conv4x  [1x1, 128;  3x3, 128;  1x1, 256] x 3               stride 2
    Conv5x  [1x1, 256;  3x3, 256;  1x1, 512] x 3               stride 1 (last down-sampling removed)
    AP      global average pooling
    FC      reduce to 256 (body) / 128 (parts), then dropout 0.5 and the identity classifier

Readings taken where the paper is vague (they decide the Table 12 comparison, `python cli.py model-info`):
- Down-sampling is ResNet style: the first unit of a stage carries the stride and a 1x1 projection shortcut
  whenever stride or width changes. The stride sits in the 3x3 convolution (torchvision's "v1.5"); Keras'
  layout (stride in the first 1x1) would cost ~0.04 G fewer MACs and the same parameters.
- "S-1x2" of the part max-pool is stride 1 in height, 2 in width: a 96x192 part becomes 48x96 after Conv1 and
  48x48 after the pool, so part feature maps are square (12x12 after Conv5x; the body ends at 24x12).
- FC-reduce is Linear (no bias) + batch norm + ReLU; it is part of the feature extractor and counted, the
  identity classifiers are not. Every convolution is followed by batch norm.
With these the base network counts 7.27 M parameters and 2.05 G MACs at 384x192 / 96x192 (Table 12:
6.8 M / 2.26 G).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GLOBAL_WIDTHS: tuple[tuple[int, int], ...] = ((32, 64), (64, 128), (128, 256), (256, 512))
"""(bottleneck width, output width) of Conv2x..Conv5x in the global (whole-body) branch."""
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 1)
"""Strides of Conv2x..Conv5x: the last down-sampling of ResNet is removed (Sec. 3.1)."""
UNITS_PER_STAGE = 3
STEM_CHANNELS = 32


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int | tuple[int, int] = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution (no bias) + batch norm (+ ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
                               nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Residual unit [1x1, mid; 3x3, mid; 1x1, out] with an identity or 1x1-projection shortcut."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.reduce = conv_bn(in_ch, mid_ch, 1)
        self.conv = conv_bn(mid_ch, mid_ch, 3, stride=stride)
        self.expand = conv_bn(mid_ch, out_ch, 1, relu=False)
        self.shortcut = (conv_bn(in_ch, out_ch, 1, stride=stride, relu=False)
                         if stride != 1 or in_ch != out_ch else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


def residual_stage(in_ch: int, mid_ch: int, out_ch: int, units: int = UNITS_PER_STAGE,
                   stride: int = 1) -> nn.Sequential:
    """`units` bottlenecks; the first one changes width / resolution."""
    return nn.Sequential(*[Bottleneck(in_ch if i == 0 else out_ch, mid_ch, out_ch, stride if i == 0 else 1)
                           for i in range(units)])


@dataclass(frozen=True)
class BranchSpec:
    """Widths of one branch: `scale` 1 for the global branch, 1/2 for a part branch (Table 1)."""

    name: str
    scale: float
    embed_dim: int
    pool_stride: tuple[int, int]

    def stage_widths(self) -> list[tuple[int, int, int, int]]:
        """(in, mid, out, stride) of Conv2x..Conv5x."""
        widths, in_ch = [], STEM_CHANNELS
        for (mid, out), stride in zip(GLOBAL_WIDTHS, STAGE_STRIDES):
            mid, out = int(mid * self.scale), int(out * self.scale)
            widths.append((in_ch, mid, out, stride))
            in_ch = out
        return widths

    @property
    def out_channels(self) -> int:
        return self.stage_widths()[-1][2]


GLOBAL_SPEC = dict(scale=1.0, embed_dim=256, pool_stride=(2, 2))
PART_SPEC = dict(scale=0.5, embed_dim=128, pool_stride=(1, 2))


class Embedding(nn.Module):
    """Average pooling + FC-reduce (Linear, batch norm, ReLU): the branch feature E (256 global / 128 part)."""

    def __init__(self, in_ch: int, dim: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, dim, bias=False)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        self.bn = nn.BatchNorm1d(dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.fc(torch.flatten(self.pool(x), 1))))


class IdentityClassifier(nn.Module):
    """Dropout 0.5 then a linear identity classifier (one per branch, one on the fused feature)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


def stem() -> nn.Sequential:
    """Conv1 of Table 1, shared by the five branches: 3x3, 32, stride 2."""
    return conv_bn(3, STEM_CHANNELS, 3, stride=2)


def init_conv_weights(module: nn.Module) -> None:
    """He (fan-out) init for every convolution below `module`; linear layers keep their own init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
