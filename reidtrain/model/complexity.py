"""Model size and multiply-accumulate count (the yardstick of Table 12).

Counting convention (calibrated on Table 12's own rows, see below):
- MACs are multiply-accumulates of convolutions and linear layers for ONE sample, measured with forward hooks
  on `nn.Conv2d` / `nn.Linear` during a single batch-1 forward. Batch norm (folded into the preceding
  convolution at inference), activations, pooling, up-sampling, additions and element-wise products are not
  counted: they are not multiply-accumulates of a weight, and Table 12's rows match this convention.
- Parameters are counted "without classifiers": the identity classifiers (one per branch plus the fused one)
  are excluded, everything that produces the ReID feature [E_g, E_l] is included (batch-norm affine
  parameters too; running statistics are buffers and not counted).

Calibration: Table 12 lists ResNet-50 at 5.58 G "FLOPs" and 23.5 M parameters. 23.5 M is exactly ResNet-50
without its 1000-way classifier, and 5.58 G is, within 1.5 %, its convolution MAC count at 384x192 (the
paper's input size): 5.67 G for the stride-in-1x1 layout of the original ResNet and of Keras (the framework
the paper used), 6.01 G for torchvision's stride-in-3x3 ("v1.5") layout. The AlexNet (1.07 G) and VGG-16
(22.8 G) rows are likewise their 224x224 MACs scaled to 384x192. So Table 12's "FLOPs" are
multiply-accumulates without classifiers at 384x192, which is what `count` reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class ComplexityReport:
    """Parameters and MACs of one model for one sample."""

    params_total: int
    params_without_classifiers: int
    macs: int
    """Conv + linear MACs for one sample, classifiers excluded."""
    macs_with_classifiers: int
    per_group: dict[str, dict[str, int]] = field(default_factory=dict)
    """{group: {"params": .., "macs": ..}} with groups named by the model (e.g. branch names), classifiers excluded."""


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(output.numel() * (module.in_channels // module.groups) * kh * kw)
    if isinstance(module, nn.Linear):
        return int(output.numel() * module.in_features)
    return 0


def is_classifier(name: str) -> bool:
    """Parameter / module names of the identity classifiers (excluded from Table 12's counts)."""
    return "classifier" in name.split(".")


def count(model: nn.Module, inputs: dict[str, torch.Tensor] | torch.Tensor,
          group_of: Callable[[str], str] = lambda name: name.split(".")[0],
          classifier: Callable[[str], bool] = is_classifier) -> ComplexityReport:
    """Count parameters and per-sample MACs of `model` on `inputs` (MACs are divided by the batch size).

    `group_of(name)` names the group a parameter / layer is reported under (default: its top-level child);
    `classifier(name)` says which parameters / layers are classifiers (excluded from the headline counts); it is
    called with module names ("classifier.body.fc") and parameter names ("classifier.body.fc.weight").
    """
    batch = next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0]
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                macs[name] = macs.get(name, 0) + _layer_macs(mod, inp, out)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    per_group: dict[str, dict[str, int]] = {}
    params_total = params_kept = 0
    for name, p in model.named_parameters():
        params_total += p.numel()
        if classifier(name):
            continue
        params_kept += p.numel()
        g = per_group.setdefault(group_of(name), {"params": 0, "macs": 0})
        g["params"] += p.numel()
    macs_kept = macs_all = 0
    for name, m in macs.items():
        m //= batch
        macs_all += m
        if classifier(name):
            continue
        macs_kept += m
        per_group.setdefault(group_of(name), {"params": 0, "macs": 0})["macs"] += m
    return ComplexityReport(params_total, params_kept, macs_kept, macs_all, per_group)


TABLE12: dict[str, dict[str, float]] = {
    "base": {"params": 6.8e6, "macs": 2.26e9},
    "full": {"params": 10.4e6, "macs": 2.69e9},
}
"""Table 12 of the paper: parameters and MACs ("FLOPs") without classifiers at 384x192 / 96x192."""
TABLE12_TOLERANCE: dict[str, float] = {"params": 0.10, "macs": 0.15}
"""Accepted relative deviation from Table 12 (the project's acceptance ranges)."""
RESNET50_TABLE12: dict[str, float] = {"params": 23.5e6, "macs": 5.58e9}


def table12_row(model_name: str) -> str:
    """Table 12 row a variant is compared with: "full" with intra-attention, else "base" (the base network;
    inter-attention adds only 4 x 129 parameters)."""
    return "full" if model_name.startswith("intra") else "base"


def model_report(name: str, num_classes: int = 751, body_size: tuple[int, int] = (384, 192),
                 part_size: tuple[int, int] = (96, 192)) -> ComplexityReport:
    """Size report of the variant `name` for one sample at the given input sizes (height, width)."""
    from . import build_model

    model = build_model(name, num_classes, body_size, part_size)
    return count(model, model.example_inputs(1), group_of=model.complexity_group)
