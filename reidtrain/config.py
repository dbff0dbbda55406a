"""Typed configs of the reidtrain stage: TrainConfig (Sec. 4.1 recipe) and EvalConfig (Sec. 4.1 protocols).

Filled from defaults <- recipe TOML ([train] / [eval] tables) <- CLI flags with posecrop.typedconfig, which
rejects unknown keys and wrong types naming the key. No heavy imports here: `cli.py --help` stays fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posecrop.typedconfig import to_dict

ModelName = Literal["baseline", "aligned", "intra", "inter", "intra-inter"]
# the names of reidtrain.model.MODEL_NAMES, repeated here without importing torch (tests/test_recipe.py checks)
MODEL_CHOICES: tuple[str, ...] = ("baseline", "aligned", "intra", "inter", "intra-inter")
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
    """Training of one model on a crop cache (Sec. 3.5 loss, Sec. 4.1 schedule; every value settable).

    The loss is Eq. 11: L = lambda_intra * sum_j CE_intra^j (the five branch classifiers) + CE_inter (fused).
    Optimiser: SGD with momentum 0.9 and weight decay 5e-4 (the paper names SGD only; 0.9 / 5e-4 are the usual
    ReID values), lr 0.01 divided by 10 every 40 epochs, 100 epochs, batch 32 (per process under DDP: the global
    batch is batch_size * world_size). `threads`: torch intra-op threads (0 = automatic: torch's default
    lowered to the free cores, reidtrain.threads); 1 is often fastest for small inputs on a busy CPU. Inputs are
    normalised by subtracting the channel means of the
    sample's whole-body image (Sec. 4.1), the same means for its part crops (data.normalize_inputs);
    `normalize = "imagenet"` uses the ImageNet mean/std instead (for ImageNet-initialised weights).
    `attention_norm`: batch norm of the intra-attention mask logits before the sigmoid (default; False: the paper's
    m = sigmoid(conv(S * C)) as written, which saturates on real images - reidtrain.model.attention).
    `crops`: where the five region crops come from - "recrop" (default): cut by the loader from the cached source
    image (`whole`) and the cached Eq. 1-2 boxes, straight at the input sizes with the crop stage's own function
    (one resample, no JPEG loss on the enlarged crops, about half the decoding for Market-size sources); "stored":
    decode the stored JPEG/PNG crops (caches whose crops came from elsewhere). Evaluation uses the checkpoint's.
    """

    cache: Path | None = None
    out: Path = Path("runs/train")
    model: ModelName = "intra-inter"
    crops: CropSource = "recrop"
    body_size: tuple[int, int] = (384, 192)
    part_size: tuple[int, int] = (96, 192)
    lambda_intra: float = 0.5
    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.01
    lr_step: int = 40
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    sampler: Literal["random", "identity"] = "random"
    instances_per_id: int = 4
    normalize: Normalize = "channel-mean"
    attention_norm: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
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
        check_size("body_size", self.body_size)
        check_size("part_size", self.part_size)
        if self.epochs < 1 or self.lr_step < 1:
            raise ValueError(f"epochs and lr_step must be >= 1, got {self.epochs}, {self.lr_step}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.lambda_intra < 0 or self.lr <= 0:
            raise ValueError(f"lambda_intra must be >= 0 and lr > 0, got {self.lambda_intra}, {self.lr}")
        if self.sampler == "identity" and (self.instances_per_id < 1 or self.batch_size % self.instances_per_id):
            raise ValueError(f"identity sampler: batch_size ({self.batch_size}) must be a multiple of "
                             f"instances_per_id ({self.instances_per_id})")
        if self.workers < 0 or self.keep_every < 0 or self.threads < 0:
            raise ValueError("workers, threads and keep_every must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# Fields that change what a training run computes: a resume or an up-to-date check must see the same values.
# (epochs may grow on resume; workers / device / amp / out / tensorboard / keep_every do not change the result
# on CPU, or are bookkeeping.)
RESULT_FIELDS_EXCLUDED = ("out", "workers", "threads", "device", "tensorboard", "keep_every", "epochs")


def result_config(cfg: TrainConfig) -> dict:
    """The part of a TrainConfig that determines the trained weights (see RESULT_FIELDS_EXCLUDED)."""
    d = to_dict(cfg)
    for k in RESULT_FIELDS_EXCLUDED:
        d.pop(k, None)
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

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.repeats < 1 or self.topk < 1:
            raise ValueError("batch_size, repeats and topk must be >= 1")
        if min(self.workers, self.threads, self.ranked_queries, self.attention_samples) < 0:
            raise ValueError("workers, threads, ranked_queries and attention_samples must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
