"""The BNNeck head of the ReID strong baseline (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
Re-identification", CVPRW 2019, Sec. 4.5), shared by the ResNet-50 baseline and APNet.

    f = GAP(feature map)              (B, C)  the triplet loss is computed on f ("before BN")
    b = BatchNorm1d(f)                (B, C)  its shift (bias) frozen at 0; the test feature ("after BN")
    logits = W b                      (B, N)  a bias-free identity classifier, W ~ N(0, 0.001^2)

so the identity loss works on the normalised feature and the metric loss on the raw one.
"""
from __future__ import annotations

import torch
from torch import nn

from .contract import ModelOutput

LOGITS = "id"
"""The single classifier's name in ModelOutput.logits."""


class BNNeckHead(nn.Module):
    """GAP -> BNNeck -> bias-free classifier (none with num_classes=0)."""

    def __init__(self, channels: int, num_classes: int, test_feature: str = "after") -> None:
        super().__init__()
        if test_feature not in ("after", "before"):
            raise ValueError(f"test_feature must be 'after' or 'before' the BNNeck, got {test_feature!r}")
        self.test_feature = test_feature
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = nn.BatchNorm1d(channels)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, num_classes, bias=False) if num_classes else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: torch.Tensor) -> ModelOutput:
        f = torch.flatten(self.pool(feature_map), 1)
        b = self.neck(f)
        logits = {LOGITS: self.classifier(b)} if self.classifier is not None else {}
        return ModelOutput(logits, b if self.test_feature == "after" else f, {"triplet": f})
