"""A TrainConfig completed from the model's registration: every field left None takes the model's default.

    resolve(cfg) -> Resolved(cfg, entry, options, losses, inputs)

`cfg` of the result has no None left among the model-dependent fields (TrainConfig.resolved is True); its
`model_options` hold every option of the model (defaults included) and the five-branch shorthands
`lambda_intra` / `attention_norm` are folded into them, so a resume or an up-to-date check compares complete
settings. Needs torch (it imports the model registry); reidtrain.config does not.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from reidkit.typedconfig import ConfigError, to_dict

from .config import TrainConfig
from .model.contract import InputSpec, LossSettings
from .model.registry import ModelEntry, get_model, resolve_inputs

LEGACY_OPTIONS = ("lambda_intra", "attention_norm")
"""TrainConfig fields that are shorthands for the model option of the same name (five-branch models)."""


@dataclass(frozen=True)
class Resolved:
    cfg: TrainConfig
    entry: ModelEntry
    options: Any
    losses: LossSettings
    inputs: dict[str, InputSpec]


def _group_size(inputs: dict[str, InputSpec], group: str) -> tuple[int, int] | None:
    return next((tuple(s.size) for s in inputs.values() if s.group == group), None)


def model_options(cfg: TrainConfig, entry: ModelEntry) -> Any:
    """The model's options dataclass from cfg.model_options plus the shorthand fields."""
    values = dict(cfg.model_options or {})
    for name in LEGACY_OPTIONS:
        value = getattr(cfg, name)
        if value is None:
            continue
        if name not in entry.option_names():
            raise ConfigError(f"{name}: model {entry.name!r} has no option {name!r} "
                              f"(its options: {', '.join(entry.option_names()) or 'none'})")
        if name in values and values[name] != value:
            raise ConfigError(f"{name} = {value!r} and model option {name} = {values[name]!r} disagree; set one")
        values[name] = value
    return entry.parse_options(values)


def resolve(cfg: TrainConfig) -> Resolved:
    """Fill every None of `cfg` from model cfg.model's defaults (unknown model: UnknownModelError)."""
    entry = get_model(cfg.model)
    d = entry.defaults
    options = model_options(cfg, entry)
    inputs = resolve_inputs(d.inputs, cfg.body_size, cfg.part_size)
    o, s, ls = d.optimizer, d.schedule, d.losses

    def pick(value, default):
        return default if value is None else value

    losses = LossSettings(label_smoothing=pick(cfg.label_smoothing, ls.label_smoothing),
                          triplet_weight=pick(cfg.triplet_weight, ls.triplet_weight),
                          triplet_margin=pick(cfg.triplet_margin, ls.triplet_margin))
    try:
        full = replace(
            cfg, model_options=to_dict(options) if options is not None else {},
            lambda_intra=None, attention_norm=None,
            body_size=_group_size(inputs, "body"), part_size=_group_size(inputs, "part"),
            epochs=pick(cfg.epochs, d.epochs), batch_size=pick(cfg.batch_size, d.batch_size),
            optimizer=pick(cfg.optimizer, o.name), lr=pick(cfg.lr, o.lr), momentum=pick(cfg.momentum, o.momentum),
            weight_decay=pick(cfg.weight_decay, o.weight_decay), nesterov=pick(cfg.nesterov, o.nesterov),
            schedule=pick(cfg.schedule, s.name), lr_step=pick(cfg.lr_step, s.step),
            lr_gamma=pick(cfg.lr_gamma, s.gamma), milestones=tuple(pick(cfg.milestones, s.milestones)),
            warmup_epochs=pick(cfg.warmup_epochs, s.warmup_epochs),
            warmup_factor=pick(cfg.warmup_factor, s.warmup_factor),
            label_smoothing=losses.label_smoothing, triplet_weight=losses.triplet_weight,
            triplet_margin=losses.triplet_margin,
            sampler=pick(cfg.sampler, d.sampler), instances_per_id=pick(cfg.instances_per_id, d.instances_per_id),
            normalize=pick(cfg.normalize, d.normalize))
    except ValueError as e:
        raise ConfigError(f"model {cfg.model!r}: {e}") from e
    if full.schedule == "multistep" and not full.milestones:
        raise ConfigError(f"model {cfg.model!r}: schedule 'multistep' needs milestones (e.g. --milestones 40,70)")
    return Resolved(full, entry, options, losses, inputs)
