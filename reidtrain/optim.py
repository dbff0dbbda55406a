"""Optimiser and learning-rate schedule from a resolved TrainConfig (reidtrain.resolve).

    build_optimizer(params, cfg)       SGD (momentum, nesterov) | Adam | AdamW, weight decay on every parameter
    build_scheduler(optimizer, cfg)    per-epoch schedule, stepped once at the end of every epoch:
        step       lr x lr_gamma every lr_step epochs          (torch StepLR)
        multistep  lr x lr_gamma at each epoch of milestones   (torch MultiStepLR)
        cosine     cosine decay from lr to 0 over the epochs   (torch CosineAnnealingLR)
      with warmup_epochs > 0, one LambdaLR over `lr_factor`: linear warm-up from warmup_factor x lr to lr over
      the first warmup_epochs epochs, then the schedule's factor. Without warm-up the torch schedulers are used
      as they are (the five-branch recipe's lr values stay bit-identical to earlier releases).
    lr_factor(epoch, cfg)              the multiplier of the base lr in (0-based) epoch `epoch`; pure
"""
from __future__ import annotations

import bisect
import math
from functools import partial

import torch

from .config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _schedule_factor(epoch: int, cfg: TrainConfig) -> float:
    if cfg.schedule == "step":
        return cfg.lr_gamma ** (epoch // cfg.lr_step)
    if cfg.schedule == "multistep":
        return cfg.lr_gamma ** bisect.bisect_right(list(cfg.milestones), epoch)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate during 0-based epoch `epoch` (warm-up, then the schedule)."""
    factor = _schedule_factor(epoch, cfg)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        alpha = epoch / cfg.warmup_epochs
        factor *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.warmup_epochs:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg=cfg))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.lr_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
