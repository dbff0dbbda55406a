"""Typed config of ImageNet pre-training (`cli.py pretrain`, reidtrain.pretrain); no heavy imports, so that
`cli.py --help` stays fast and the command's help shows these defaults."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reidkit.typedconfig import to_dict

from .config import Normalize, check_size

ModelName = Literal["baseline", "aligned", "intra", "inter", "intra-inter"]   # the five-branch variants

BranchInputs = Literal["strips", "whole"]
MIN_BATCH = 2   # batch norm needs two samples per step (as reidtrain.train)


@dataclass
class PretrainConfig:
    """ImageNet pre-training: the Sec. 4.1 schedule by default (9 epochs, lr 0.01 / 10 every 3, batch 32 per
    process, SGD; momentum 0.9 and weight decay 1e-4 are ours, the paper names SGD only).

    root: the ILSVRC2012-layout folder (reidtrain.imagenet); val_labels: its LOC_val_solution.csv when not found
    beside it; validate: top-1 / top-5 on val/ after every epoch.
    branch_inputs: "strips" - the whole image to the global branch, its four horizontal strips to the part
    branches; "whole" - the whole image to every branch. input_size: (height, width) of the whole image; the
    strips are height/4 x width (384x192 -> 96x192, the paper's sizes).
    augment: "random-resized-crop" (area share scale_min..1, aspect 3/4..4/3 of the output's) or "resize-crop"
    (the validation box at a random position); flip: horizontal flip p=0.5; reduced_decoding: JPEGs decoded at
    1/2-1/8 size when the crop box allows (PIL draft mode).
    lambda_intra: lambda of Eq. 11. normalize / attention_norm: as TrainConfig (keep them equal to the fine-tuning
    run's). channels_last "auto": on CUDA only.
    """

    root: Path | None = None
    out: Path = Path("runs/pretrain")
    model: ModelName = "intra-inter"
    branch_inputs: BranchInputs = "strips"
    input_size: tuple[int, int] = (384, 192)
    val_labels: Path | None = None
    validate: bool = True
    augment: Literal["random-resized-crop", "resize-crop"] = "random-resized-crop"
    scale_min: float = 0.08
    flip: bool = True
    reduced_decoding: bool = True
    lambda_intra: float = 0.5
    epochs: int = 9
    batch_size: int = 32
    lr: float = 0.01
    lr_step: int = 3
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    normalize: Normalize = "channel-mean"
    attention_norm: bool = True
    workers: int = 8
    threads: int = 0
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        check_size("input_size", self.input_size)
        if self.input_size[0] % 4:
            raise ValueError(f"input_size height must be a multiple of 4 (four strips), got {self.input_size[0]}")
        if self.epochs < 1 or self.lr_step < 1:
            raise ValueError(f"epochs and lr_step must be >= 1, got {self.epochs}, {self.lr_step}")
        if self.batch_size < MIN_BATCH:
            raise ValueError(f"batch_size must be >= {MIN_BATCH} (batch norm), got {self.batch_size}")
        if self.lambda_intra < 0 or self.lr <= 0:
            raise ValueError(f"lambda_intra must be >= 0 and lr > 0, got {self.lambda_intra}, {self.lr}")
        if not 0.0 < self.scale_min <= 1.0:
            raise ValueError(f"scale_min must be in (0, 1], got {self.scale_min}")
        if self.workers < 0 or self.threads < 0 or self.seed < 0:
            raise ValueError("workers, threads and seed must be >= 0")


# Fields that do not change the pre-trained weights (a resume may change them).
RESUME_FREE = ("out", "workers", "threads", "device", "tensorboard", "epochs", "root", "val_labels")


def result_config(cfg: PretrainConfig) -> dict:
    d = to_dict(cfg)
    for k in RESUME_FREE:
        d.pop(k, None)
    return d
