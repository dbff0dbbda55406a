"""`resnet50`: the ReID strong baseline of Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
Re-identification" (CVPRW 2019; TMM 2019) - the model a ReID user starts from.

    ResNet-50 (reidtrain.model.resnet, torchvision names) with last stride 1 -> GAP -> BNNeck -> bias-free
    classifier (reidtrain.model.bnneck); test feature: after the BNNeck (2048-d)
    loss: label-smoothed cross-entropy (eps 0.1) + batch-hard triplet (margin 0.3) on the feature before the BNNeck

The recipe of the paper (Sec. 3-4), the registered defaults: input 256x128, ImageNet normalisation, flip / pad 10
+ random crop / random erasing (TrainConfig.augment's defaults), P x K = 16 x 4 = batch 64, Adam lr 3.5e-4 with
weight decay 5e-4, linear warm-up over 10 epochs from 3.5e-5 (Eq. 3: lr x t / 10), x 0.1 at epochs 40 and 70,
120 epochs. Not included: the paper's last trick, the center loss (weight 5e-4; +0.4 R1 on Market-1501), which
the toolkit's LossSettings do not offer. ImageNet initialisation from a local file: `--backbone-weights FILE`
(torchvision or timm resnet50 state dict, reidtrain.model.pretrained).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from .bnneck import BNNeckHead
from .contract import (InputSpec, LossSettings, ModelDefaults, ModelOutput, OptimizerSpec, ReidModel,
                       ScheduleSpec)
from .pretrained import load_resnet50
from .registry import PaperRow, register_model
from .resnet import ResNet50

BODY = "body"


@dataclass
class StrongBaselineOptions:
    """last_stride: of layer4 (1: the paper's trick, 2: torchvision's); test_feature: the ReID feature taken
    "after" the BNNeck (the paper's choice for the cosine metric) or "before" it."""

    last_stride: int = 1
    test_feature: Literal["after", "before"] = "after"

    def __post_init__(self) -> None:
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")


class ResNetBNNeck(ReidModel):
    """A ResNet-50 feature map through the BNNeck head: the shared frame of `resnet50` and APNet."""

    def __init__(self, name: str, inputs: dict[str, InputSpec], num_classes: int, losses: LossSettings | None,
                 last_stride: int = 1, test_feature: str = "after") -> None:
        super().__init__(name, inputs, num_classes, losses)
        self.single_input(BODY)
        self.backbone = ResNet50(num_classes=0, last_stride=last_stride)
        self.head = BNNeckHead(self.backbone.out_channels, num_classes, test_feature)
        self.feature_dim = self.backbone.out_channels
        self.feature_layout = (("bnneck" if test_feature == "after" else "gap", self.feature_dim),)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.feature_map(x)

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        self.check_inputs(inputs)
        return self.head(self.feature_map(inputs[BODY]))

    def load_backbone_weights(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """ImageNet ResNet-50 weights (torchvision or timm state dict) into `backbone` (reidtrain.model.pretrained)."""
        return load_resnet50(self.backbone, path, prefix="backbone.")

    def complexity_group(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head == "backbone":
            return "resnet50 " + (rest.split(".")[0] if rest.startswith("layer") else "stem")
        if head == "head":
            return "classifier" if rest.startswith("classifier") else "bnneck"
        return head


STRONG_BASELINE_DEFAULTS = ModelDefaults(
    inputs={BODY: InputSpec("whole", (256, 128), "body")},
    normalize="imagenet",
    optimizer=OptimizerSpec("adam", lr=3.5e-4, weight_decay=5e-4),
    schedule=ScheduleSpec("multistep", milestones=(40, 70), gamma=0.1, warmup_epochs=10, warmup_factor=0.1),
    losses=LossSettings(label_smoothing=0.1, triplet_weight=1.0, triplet_margin=0.3),
    epochs=120, batch_size=64, sampler="identity", instances_per_id=4)


@register_model("resnet50", defaults=STRONG_BASELINE_DEFAULTS, options=StrongBaselineOptions,
                paper=PaperRow("Luo et al., CVPRW 2019 (Bag of Tricks), Table 1", params_m=23.5,
                               note="Market-1501 R1 94.1 / mAP 85.7 (+BNNeck row, ImageNet init, no center loss); "
                                    "params: ResNet-50 without fc (23.5 M, He et al.; the paper gives no count)",
                               reported={"market": {"R1": 94.1, "mAP": 85.7}}),
                summary="ReID strong baseline: ResNet-50, last stride 1, BNNeck, LS-CE + triplet (Luo et al. 2019)")
def build_resnet50(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings,
                   options: StrongBaselineOptions) -> ResNetBNNeck:
    return ResNetBNNeck("resnet50", inputs, num_classes, losses, options.last_stride, options.test_feature)
