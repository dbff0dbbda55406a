"""A plain ResNet-50 (He et al. 2016), the reference of the speed benchmark and of Table 12.

Same architecture and parameter names as torchvision's `resnet50` (conv1, bn1, layer1..layer4, fc; stride in
the 3x3 convolution, "v1.5"), so a torchvision state dict loads into it unchanged. `stride_in_1x1=True` gives
the original / Keras layout (stride in the first 1x1 convolution) that Table 12 most likely measured.
23.5 M parameters without `fc`.

ReID backbones (reidtrain.model.strong_baseline, reidtrain.model.apnet) build it with `num_classes=0` (no `fc`:
`forward` returns the pooled 2048-d feature) and `last_stride=1` (Luo et al. 2019: the stride of layer4 set to 1,
doubling its feature map; the parameters and their shapes are unchanged, so ImageNet weights still load), and
run the five stages one by one (`stages()`: the stem conv1-bn1-relu-maxpool, then layer1..layer4).
"""
from __future__ import annotations

import torch
from torch import nn


class ResNetBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, mid: int, stride: int = 1, stride_in_1x1: bool = False) -> None:
        super().__init__()
        out = mid * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or in_ch != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50: stem 7x7/2 + max-pool, stages of (3, 4, 6, 3) bottlenecks, average pooling, `fc`."""

    def __init__(self, num_classes: int = 1000, stride_in_1x1: bool = False, last_stride: int = 2) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        widths = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, last_stride))
        for i, (mid, units, stride) in enumerate(widths, start=1):
            blocks = []
            for u in range(units):
                blocks.append(ResNetBottleneck(in_ch, mid, stride if u == 0 else 1, stride_in_1x1))
                in_ch = mid * ResNetBottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = in_ch
        self.fc = nn.Linear(in_ch, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    STAGE_CHANNELS: tuple[int, ...] = (64, 256, 512, 1024, 2048)
    """Output channels of the five stages (stem, layer1..layer4)."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self) -> tuple:
        """The five stages as callables, input to output: stem (conv1, bn1, relu, maxpool), layer1..layer4."""
        return (self.stem, self.layer1, self.layer2, self.layer3, self.layer4)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer4 output (B, 2048, H/32, W/32), or H/16 x W/16 with last_stride=1."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.feature_map(x)), 1)
        return x if self.fc is None else self.fc(x)
