"""The attention-driven five-branch ReID network (Sec. 3.1, 3.3-3.5) and its ablation variants (Table 6).

    build_model(name, num_classes, body_size=(384, 192), part_size=(96, 192)) -> FiveBranchNet
    model(inputs: dict[str, Tensor]) -> ModelOutput(logits, features)
"""
from __future__ import annotations

from .network import (FUSED, VARIANTS, FiveBranchNet, ModelInputError, ModelOutput, Variant,
                      horizontal_strips)

MODEL_NAMES: tuple[str, ...] = tuple(VARIANTS)


def build_model(name: str, num_classes: int, body_size: tuple[int, int] = (384, 192),
                part_size: tuple[int, int] = (96, 192), dropout: float = 0.5,
                attention_norm: bool = True) -> FiveBranchNet:
    """The variant `name` (one of MODEL_NAMES) with `num_classes` identities (0: no classifiers).

    `body_size` / `part_size` are (height, width) of the inputs; the network itself accepts any size, these
    are what `example_inputs` and the size report use. `attention_norm`: batch norm of the intra-attention mask
    logits before the sigmoid (reidtrain.model.attention; False = the paper's text as written, which saturates).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    return FiveBranchNet(VARIANTS[name], num_classes, body_size, part_size, dropout, attention_norm)


__all__ = ["FUSED", "MODEL_NAMES", "FiveBranchNet", "ModelInputError", "ModelOutput", "Variant", "build_model",
           "horizontal_strips"]
