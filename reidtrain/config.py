"""Typed configs of the reidtrain stage: TrainConfig (Sec. 4.1 recipe) and EvalConfig (Sec. 4.1 protocols).

Filled from defaults <- recipe TOML ([train] / [eval] tables) <- CLI flags with reidkit.typedconfig, which
rejects unknown keys and wrong types naming the key. No heavy imports here: `cli.py --help` stays fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reidkit.typedconfig import to_dict

# the five-branch variants (reidtrain.model.FIVE_BRANCH_NAMES), repeated here without importing torch
# (tests/test_recipe.py checks); any registered model name is accepted (reidtrain.model.list_models)
MODEL_CHOICES: tuple[str, ...] = ("baseline", "aligned", "intra", "inter", "intra-inter")
OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["step", "multistep", "cosine"]
Normalize = Literal["channel-mean", "imagenet"]
CropSource = Literal["recrop", "stored"]


def check_size(name: str, size: object) -> None:
    """An input size is (height, width), two integers >= 8; ValueError otherwise."""
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)):
        raise ValueError(f"{name} must be (height, width) with both integers >= 8, got {size!r}")


@dataclass
class AugmentConfig:
    """Training augmentation (albumentations), applied per crop after resizing to the input size.

    flip: horizontal flip with p=0.5 - ONE decision per sample, applied to all five crops alike (a flipped body
          with unflipped parts would describe a different person).
    pad: padding-crop - zero-pad each crop by `pad` pixels on every side, then crop back to the input size at a
         random offset (0 = off). `pad` is in body pixels; a part crop is padded in proportion to its size per
         axis (96x192 parts of a 384x192 body: 2 px vertically, 10 px horizontally).
    erasing: random-erasing probability per crop (Zhong et al.; random pixel values; 0 = off).
    color_jitter: probability of a mild brightness/contrast/saturation jitter per sample (0 = off).
    """

    flip: bool = True
    pad: int = 10
    erasing: float = 0.5
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"augment.pad must be >= 0, got {self.pad}")
        for name in ("erasing", "color_jitter"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")


@dataclass
class TrainConfig:
    """Training of one registered model on a crop cache (every value settable; see `reidtrain.model`).

    Fields left None take the model's defaults (its registration's ModelDefaults; `resolve` fills them): input
    sizes (`body_size` / `part_size` set the inputs of that size group), normalisation, optimiser and
    schedule, epochs, batch size, sampler, loss settings. For the five-branch variants these are the paper's
    Sec. 4.1 recipe: SGD lr 0.01 (momentum 0.9 and weight decay 5e-4: the paper names SGD only, these are the
    usual ReID values) divided by 10 every 40 epochs, 100 epochs, batch 32 (per process under DDP: the global
    batch is batch_size * world_size), the Eq. 11 loss, inputs 384x192 / 96x192 normalised by subtracting the
    channel means of the sample's whole-body image (data.normalize_inputs); "imagenet" uses the ImageNet
    mean/std instead (for ImageNet-initialised weights).
    `model_options`: the model's own options (the recipe's `[model.NAME]` table, `--model-option KEY=VALUE`);
    `lambda_intra` / `attention_norm` are kept as shorthands for the five-branch options of the same names.
    Optimiser: `optimizer` sgd | adam | adamw (`momentum` / `nesterov` for SGD only); schedule: step (every
    `lr_step` epochs x `lr_gamma`), multistep (x `lr_gamma` at each epoch of `milestones`) or cosine, with a
    linear warm-up over `warmup_epochs` from `warmup_factor` x lr (reidtrain.optim). Losses: `label_smoothing`,
    `triplet_weight` (batch-hard triplet, 0 = off), `triplet_margin` (LossSettings; any model).
    `sampler` "identity" draws P x K batches (`instances_per_id` = K), what a triplet loss needs.
    `backbone_weights`: a local ImageNet state-dict file loaded into the model's backbone on a fresh run.
    `threads`: torch intra-op threads (0 = automatic: torch's default lowered to the free cores,
    reidtrain.threads); 1 is often fastest for small inputs on a busy CPU.
    `crops`: where the five region crops come from - "recrop" (default): cut by the loader from the cached source
    image (`whole`) and the cached Eq. 1-2 boxes, straight at the input sizes with the crop stage's own function
    (one resample, no JPEG loss on the enlarged crops, about half the decoding for Market-size sources); "stored":
    decode the stored JPEG/PNG crops (caches whose crops came from elsewhere). Evaluation uses the checkpoint's.
    `beta`: None (default) - the cache's Eq. 1-2 boxes; a fraction of the body height H - the loader recomputes
    the boxes from the cache's stored (repaired) keypoints at that overlap (posecrop.rebox, the crops="recrop"
    path), so a Table 11 sweep needs one crop cache. Evaluation uses the checkpoint's beta.
    """

    cache: Path | None = None
    out: Path = Path("runs/train")
    model: str = "intra-inter"
    model_options: dict[str, Any] = field(default_factory=dict)
    crops: CropSource = "recrop"
    beta: float | None = None
    body_size: tuple[int, int] | None = None
    part_size: tuple[int, int] | None = None
    lambda_intra: float | None = None
    attention_norm: bool | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: OptimizerName | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    nesterov: bool | None = None
    schedule: ScheduleName | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    milestones: tuple[int, ...] | None = None
    warmup_epochs: int | None = None
    warmup_factor: float | None = None
    label_smoothing: float | None = None
    triplet_weight: float | None = None
    triplet_margin: float | None = None
    sampler: Literal["random", "identity"] | None = None
    instances_per_id: int | None = None
    normalize: Normalize | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone_weights: Path | None = None
    workers: int = 4
    threads: int = 0
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    init_from: Path | None = None
    keep_every: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("body_size", "part_size"):
            if getattr(self, name) is not None:
                check_size(name, getattr(self, name))
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be a fraction of the body height H in [0, 1], got {self.beta}")
        if self.beta is not None and self.crops != "recrop":
            raise ValueError(f"beta = {self.beta} re-places the regions in the loader: it needs crops = 'recrop'")
        if (self.epochs is not None and self.epochs < 1) or (self.lr_step is not None and self.lr_step < 1):
            raise ValueError(f"epochs and lr_step must be >= 1, got {self.epochs}, {self.lr_step}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if (self.lambda_intra is not None and self.lambda_intra < 0) or (self.lr is not None and self.lr <= 0):
            raise ValueError(f"lambda_intra must be >= 0 and lr > 0, got {self.lambda_intra}, {self.lr}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_factor is not None and not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.milestones is not None and list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing epochs, got {list(self.milestones)}")
        if (self.sampler == "identity" and self.instances_per_id is not None and self.batch_size is not None
                and (self.instances_per_id < 1 or self.batch_size % self.instances_per_id)):
            raise ValueError(f"identity sampler: batch_size ({self.batch_size}) must be a multiple of "
                             f"instances_per_id ({self.instances_per_id})")
        if self.workers < 0 or self.keep_every < 0 or self.threads < 0:
            raise ValueError("workers, threads and keep_every must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def resolved(self) -> bool:
        """True once `resolve` filled every model default (what train() runs on)."""
        return None not in (self.epochs, self.batch_size, self.optimizer, self.lr, self.schedule, self.sampler,
                            self.normalize, self.label_smoothing)


# Fields that change what a training run computes: a resume or an up-to-date check must see the same values.
# (epochs may grow on resume; workers / device / amp / out / tensorboard / keep_every do not change the result
# on CPU, or are bookkeeping.)
RESULT_FIELDS_EXCLUDED = ("out", "workers", "threads", "device", "tensorboard", "keep_every", "epochs")


def result_config(cfg: TrainConfig) -> dict:
    """The part of a TrainConfig that determines the trained weights (see RESULT_FIELDS_EXCLUDED)."""
    d = to_dict(cfg)
    for k in RESULT_FIELDS_EXCLUDED:
        d.pop(k, None)
    if d.get("beta") is None:   # the cache's boxes: keeps the keys of runs made before the field existed
        d.pop("beta", None)
    return d


def config_hash(data: object) -> str:
    """Stable short hash of a JSON-able value (dict keys sorted)."""
    raw = json.dumps(to_dict(data) if not isinstance(data, (dict, list, str)) else data, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class EvalConfig:
    """Evaluation of a trained model on the query / gallery splits of a cache.

    protocol "auto" picks from the cache's dataset name: market / duke / msmt17 / folder and the CUHK03 767/700
    split -> the Market-1501 protocol (CMC + mAP, same-camera matches ignored); CUHK03 classic 1,367/100 split ->
    single-gallery-shot CMC averaged over `repeats` seeded gallery samplings; CUHK01 -> "cuhk01-single-shot" (one
    query and one gallery image per identity, averaged over `repeats` seeded draws); "cuhk01-multi-shot" (all
    camera-A against all camera-B images) and "cuhk01-multi-query" (per identity the mean camera-A feature) on
    request.
    Features are [E_g, E_l] (Eq. 9); `flip_average` adds the features of the mirrored crops (not in the paper).
    `branches` (Table 7): also score every per-branch feature the model exposes alone (reidtrain.evaluate).
    `rerank_convention`: "zhong" re-ranks squared Euclidean distances (Zhong et al.); "torchreid" gives the numbers
    of torchreid's re_ranking, which squares the squared distances it is given (reidtrain/rerank.py).
    """

    checkpoint: Path | None = None
    cache: Path | None = None
    out: Path | None = None
    distance: Literal["euclidean", "cosine"] = "euclidean"
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    rerank_convention: Literal["zhong", "torchreid"] = "zhong"
    flip_average: bool = False
    protocol: Literal["auto", "market", "cuhk03-classic", "cuhk01-single-shot", "cuhk01-multi-shot",
                      "cuhk01-multi-query"] = "auto"
    repeats: int = 10
    seed: int = 0
    batch_size: int = 64
    workers: int = 2
    threads: int = 0
    device: str = "auto"
    ranked_queries: int = 4
    topk: int = 5
    attention_samples: int = 2
    reports: bool = True
    branches: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.repeats < 1 or self.topk < 1:
            raise ValueError("batch_size, repeats and topk must be >= 1")
        if min(self.workers, self.threads, self.ranked_queries, self.attention_samples) < 0:
            raise ValueError("workers, threads, ranked_queries and attention_samples must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
