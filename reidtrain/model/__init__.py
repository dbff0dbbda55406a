"""The ReID models: the model contract, the registry, and the built-in models.

    contract.py   ReidModel (the contract every model implements), InputSpec, ModelOutput, ModelDefaults,
                  OptimizerSpec, ScheduleSpec, LossSettings
    registry.py   register_model / list_models / get_model / build_model; plug-ins via $REIDTRAIN_MODELS
    network.py    the attention-driven five-branch network (Sec. 3.1, 3.3-3.5) and its ablation variants
                  (Table 6: baseline, aligned, intra, inter, intra-inter); base.py / attention.py its layers

    build_model(name, num_classes, body_size=None, part_size=None, *, options=None, losses=None) -> ReidModel
    model(inputs: dict[str, Tensor]) -> ModelOutput(logits, features, extras)
    model.loss(output, labels) -> dict[str, Tensor]
"""
from __future__ import annotations

from .contract import (InputSpec, LossSettings, ModelDefaults, ModelInputError, ModelOutput, OptimizerSpec,
                       ReidModel, ScheduleSpec)
from .network import FUSED, VARIANTS, FiveBranchNet, FiveBranchOptions, Variant, horizontal_strips
from .registry import (ModelEntry, PaperRow, UnknownModelError, build_model, get_model, list_models,
                       register_model)

FIVE_BRANCH_NAMES: tuple[str, ...] = tuple(VARIANTS)
MODEL_NAMES = FIVE_BRANCH_NAMES  # the five-branch variants (list_models() has every registered model)

__all__ = ["FIVE_BRANCH_NAMES", "FUSED", "MODEL_NAMES", "FiveBranchNet", "FiveBranchOptions", "InputSpec",
           "LossSettings", "ModelDefaults", "ModelEntry", "ModelInputError", "ModelOutput", "OptimizerSpec",
           "PaperRow", "ReidModel", "ScheduleSpec", "UnknownModelError", "Variant", "build_model", "get_model",
           "horizontal_strips", "list_models", "register_model"]
