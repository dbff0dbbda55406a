"""The model contract: what every ReID model of the toolkit implements, so training, evaluation, export, reports
and `model-info` handle any of them without knowing which one it is.

A model is a subclass of `ReidModel` (an `nn.Module`) built by a function registered with
`reidtrain.model.registry.register_model`. It declares:

    inputs          key -> InputSpec(column, size, group): the crop-cache column each input is read from, its
                    (height, width) and its size group ("body" / "part": what --body-size / --part-size set)
    feature_dim     width of the ReID feature; `feature_layout` names its concatenated pieces, e.g.
                    (("E_g", 256), ("E_l", 512)) for the five-branch network
    forward(inputs) -> ModelOutput(logits, features, extras)
                    logits: classifier name -> (B, num_classes) (empty when built with num_classes=0);
                    features: (B, feature_dim), the test-time feature; extras: anything a loss needs besides
                    (e.g. the pre-BNNeck feature a triplet loss is computed on)
    loss(output, labels) -> dict[str, Tensor]
                    the loss terms; the training loop sums them (in dict order) and logs each one
    accuracy_logits(output) -> Tensor | None
                    the logits whose arg-max is the training accuracy (default: the first classifier)
    attention_maps() -> dict[str, list[Tensor]]
                    optional: name -> maps (B, 1, h, w) in [0, 1] of the last forward (default: none)
    complexity_group(name) -> str
                    optional: the group a parameter is reported under by `model-info`; parameters whose
                    dotted name has a `classifier` segment are the identity classifiers (not counted)
    load_backbone_weights(path) -> dict
                    optional: ImageNet weights for the backbone from a local file (--backbone-weights)

and its registration carries `ModelDefaults`: input sizes, normalisation, the recommended optimiser,
learning-rate schedule, epochs, batch size, sampler and loss settings; `TrainConfig` fields left unset take
these values. The loss settings every model can use (`LossSettings`: label smoothing, batch-hard triplet) are
handed to the model at build time; `ReidModel.standard_loss` applies them to any model's logits / features.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import nn

from reidkit.errors import ReidError

SizeGroup = Literal["body", "part"]


class BackboneWeightsError(ReidError, ValueError):
    """A --backbone-weights file that cannot be read or does not fit the model's backbone."""


class ModelInputError(ReidError, ValueError):
    """The inputs dict does not match `model.inputs` or holds a tensor of the wrong shape."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: read from cache column `column`, resized to `size` = (height, width)."""

    column: str
    size: tuple[int, int]
    group: SizeGroup = "body"


class ModelOutput(NamedTuple):
    """`logits`: classifier name -> (B, num_classes) (empty without classifiers); `features`: the ReID feature
    (B, feature_dim); `extras`: further tensors a loss needs (e.g. "triplet": the feature the triplet loss uses)."""

    logits: dict[str, torch.Tensor]
    features: torch.Tensor
    extras: dict[str, torch.Tensor] = {}


@dataclass(frozen=True)
class OptimizerSpec:
    """name: "sgd" | "adam" | "adamw"; momentum / nesterov only for SGD."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleSpec:
    """Per-epoch learning-rate schedule, with an optional linear warm-up over the first `warmup_epochs` epochs
    (from `warmup_factor` x lr to lr).

    step:      lr x gamma every `step` epochs (torch StepLR)
    multistep: lr x gamma at each epoch of `milestones` (torch MultiStepLR)
    cosine:    cosine decay from lr to 0 over the run's epochs (torch CosineAnnealingLR)
    """

    name: Literal["step", "multistep", "cosine"] = "step"
    step: int = 40
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    warmup_epochs: int = 0
    warmup_factor: float = 0.01


@dataclass(frozen=True)
class LossSettings:
    """Loss settings every model can use: label-smoothed cross-entropy (`label_smoothing` = epsilon, 0 = plain)
    and a batch-hard triplet loss (Hermans et al. 2017) weighted `triplet_weight` (0 = off) with `triplet_margin`
    (None: soft-margin log(1 + exp(d_ap - d_an)))."""

    label_smoothing: float = 0.0
    triplet_weight: float = 0.0
    triplet_margin: float | None = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.triplet_weight < 0:
            raise ValueError(f"triplet_weight must be >= 0, got {self.triplet_weight}")
        if self.triplet_margin is not None and self.triplet_margin < 0:
            raise ValueError(f"triplet_margin must be >= 0 (or None: soft margin), got {self.triplet_margin}")


@dataclass(frozen=True)
class ModelDefaults:
    """What a model recommends; TrainConfig fields left unset (None) take these values."""

    inputs: dict[str, InputSpec]
    normalize: Literal["channel-mean", "imagenet"] = "channel-mean"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    losses: LossSettings = field(default_factory=LossSettings)
    epochs: int = 100
    batch_size: int = 32
    sampler: Literal["random", "identity"] = "random"
    instances_per_id: int = 4
    sizes_from_crop: bool = False
    """True: in a recipe, the crop stage's body / part sizes are this model's input sizes unless [train] sets
    them (the five-branch net, designed around the crops); False: the model keeps its own sizes."""


class ReidModel(nn.Module):
    """Base class of every registered model (see the module docstring for the contract).

    Subclasses call `super().__init__(name, inputs, num_classes, losses)`, set `feature_dim` (and optionally
    `feature_layout`) and implement `forward`. `loss` defaults to `standard_loss`.
    """

    min_onnx_opset: int = 0
    """The lowest ONNX opset the model's operators export and verify at (`export` raises a lower --opset to it)."""

    def __init__(self, name: str, inputs: dict[str, InputSpec], num_classes: int,
                 losses: LossSettings | None = None) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifiers), got {num_classes}")
        self.model_name = name
        self.inputs = dict(inputs)
        self.num_classes = num_classes
        self.losses = losses or LossSettings()
        self.feature_dim = 0
        self.feature_layout: tuple[tuple[str, int], ...] = ()

    # -- inputs -------------------------------------------------------------------------------------------
    @property
    def input_keys(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def example_inputs(self, batch: int = 1, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Zero inputs of the configured sizes (for size reports, export and benchmarks)."""
        return {k: torch.zeros(batch, 3, *spec.size, device=device) for k, spec in self.inputs.items()}

    def single_input(self, key: str, min_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """For a model of one input: check that it is `key` (and at least `min_size`); returns its (h, w)."""
        if self.input_keys != (key,):
            raise ModelInputError(f"model {self.model_name!r} has one input {key!r}, got {self.input_keys}")
        size = (int(self.inputs[key].size[0]), int(self.inputs[key].size[1]))
        if min_size is not None and (size[0] < min_size[0] or size[1] < min_size[1]):
            raise ModelInputError(f"model {self.model_name!r} needs inputs of at least {min_size[0]}x{min_size[1]}, "
                                  f"got {size[0]}x{size[1]}")
        return size

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> int:
        """Check `inputs` against `self.inputs` (keys, (B, 3, H, W), one batch size); returns the batch size."""
        if not isinstance(inputs, dict):
            raise ModelInputError(f"model {self.model_name!r} expects a dict with keys {self.input_keys}, "
                                  f"got {type(inputs).__name__}")
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise ModelInputError(f"model {self.model_name!r} expects inputs {self.input_keys}; missing {missing}")
        batch = None
        for k in self.input_keys:
            x = inputs[k]
            if x.dim() != 4 or x.shape[1] != 3:
                raise ModelInputError(f"input {k!r} must be (B, 3, H, W), got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ModelInputError(f"input {k!r} has batch {x.shape[0]}, other inputs have {batch}")
            batch = x.shape[0]
        return int(batch or 0)

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.standard_loss(output, labels)

    def standard_loss(self, output: ModelOutput, labels: torch.Tensor,
                      logits: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy (label-smoothed per `self.losses`) summed over `logits` (default: every classifier) as
        term "ce", plus the batch-hard triplet term "triplet" on `output.extras["triplet"]` (else the features)
        when `self.losses.triplet_weight` > 0."""
        from ..losses import batch_hard_triplet, cross_entropy

        logits = output.logits if logits is None else logits
        if not logits:
            raise ModelInputError(f"model {self.model_name!r} was built without classifiers (num_classes=0): "
                                  f"nothing to train")
        terms = {"ce": sum(cross_entropy(v, labels, self.losses.label_smoothing) for v in logits.values())}
        if self.losses.triplet_weight > 0:
            feats = output.extras.get("triplet", output.features)
            terms["triplet"] = self.losses.triplet_weight * batch_hard_triplet(feats, labels,
                                                                               self.losses.triplet_margin)
        return terms

    def accuracy_logits(self, output: ModelOutput) -> torch.Tensor | None:
        """The logits whose arg-max is the training accuracy (default: the first classifier)."""
        return next(iter(output.logits.values()), None)

    def load_backbone_weights(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """Load ImageNet weights for the backbone from a local state-dict file (`train --backbone-weights`;
        torchvision- or timm-format keys, mapped by the model). Returns {"loaded": [...], "missing": [...],
        "unexpected": [...]} (parameter names); raise BackboneWeightsError naming the file and the keys when
        the file does not fit. Called by the training loop on a fresh run only, never by evaluate / export."""
        raise BackboneWeightsError(f"{path}: model {self.model_name!r} has no ImageNet backbone to load weights into")

    # -- reports ------------------------------------------------------------------------------------------
    def attention_maps(self) -> dict[str, list[torch.Tensor]]:
        """Name -> attention maps (B, 1, h, w) in [0, 1] of the last forward, detached; {} if the model has none."""
        return {}

    def complexity_group(self, name: str) -> str:
        """Group of a parameter / module name in size reports (default: its top-level child)."""
        return name.split(".")[0]
