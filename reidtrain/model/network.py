"""The five-branch network (Fig. 3): shared Conv1, one branch per region, inter-attention fusion, classifiers.

Variants of the ablation (Table 6), selected by name:

    baseline     whole (unaligned) image + four fixed horizontal strips cut by the model, no attention
    aligned      the five pose-aligned region crops, no attention
    intra        crops + intra-attention in blocks 2-4 of every branch
    inter        crops + inter-attention fusion of the part features
    intra-inter  crops + both (the full model)

Every variant has the per-branch identity classifiers (the intra losses of Eq. 11) and a "fused" classifier
on the final feature [E_g, E_l] (the inter loss). Without inter-attention E_l is the plain concatenation
[E_1, ..., E_4] (mu_i = 0 in Eq. 9), so Eq. 11 trains every variant the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from reidkit.errors import ReidError
from posecrop.regions import REGION_NAMES

from .attention import AttentionHeads, InterAttention, IntraAttentionBlock
from .base import (GLOBAL_SPEC, PART_SPEC, BranchSpec, Embedding, IdentityClassifier, init_conv_weights,
                   residual_stage, stem)

ATTENTION_POOLS: tuple[int, ...] = (0, 2, 1, 1)
"""Max-pool levels of the attention path in blocks 1..4 (Sec. 3.3: twice in block 2, once in blocks 3-4)."""
GLOBAL_BRANCH = REGION_NAMES[0]
PART_BRANCHES = REGION_NAMES[1:]
FUSED = "fused"


class ModelInputError(ReidError, ValueError):
    """The inputs dict does not match `model.input_keys` or holds a tensor of the wrong shape."""


class ModelOutput(NamedTuple):
    """`logits`: branch name / "fused" -> (B, num_classes) (empty without classifiers);
    `features`: the ReID feature [E_g, E_l] (B, feature_dim)."""

    logits: dict[str, torch.Tensor]
    features: torch.Tensor


@dataclass(frozen=True)
class Variant:
    name: str
    strips: bool
    """True: the model gets the whole image as "body" and cuts four horizontal strips for the part branches."""
    intra: bool
    inter: bool


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", strips=True, intra=False, inter=False),
    Variant("aligned", strips=False, intra=False, inter=False),
    Variant("intra", strips=False, intra=True, inter=False),
    Variant("inter", strips=False, intra=False, inter=True),
    Variant("intra-inter", strips=False, intra=True, inter=True),
)}


class Branch(nn.Module):
    """One branch after Conv1: max-pool, blocks 1-4 (Conv2x-Conv5x, with intra-attention in 2-4 if asked),
    average pooling and FC-reduce -> its feature E (B, embed_dim)."""

    def __init__(self, spec: BranchSpec, intra: bool, attention_norm: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.pool = nn.MaxPool2d(3, stride=spec.pool_stride, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_ch, mid, out, stride) in enumerate(spec.stage_widths()):
            if intra and ATTENTION_POOLS[i] > 0:
                blocks.append(IntraAttentionBlock(in_ch, mid, out, stride, pools=ATTENTION_POOLS[i],
                                                  norm=attention_norm))
            else:
                blocks.append(residual_stage(in_ch, mid, out, stride=stride))
        self.blocks = nn.Sequential(*blocks)
        self.embedding = Embedding(spec.out_channels, spec.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.blocks(self.pool(x)))

    def attention_maps(self) -> list[torch.Tensor]:
        return [b.last_map for b in self.blocks if isinstance(b, IntraAttentionBlock) and b.last_map is not None]


def horizontal_strips(image: torch.Tensor, count: int = 4) -> list[torch.Tensor]:
    """Cut (B, C, H, W) into `count` horizontal strips of (nearly) equal height, top to bottom."""
    h = image.shape[-2]
    bounds = [(i * h + count // 2) // count for i in range(count + 1)]  # integer arithmetic: traceable for ONNX
    return [image[..., bounds[i]:bounds[i + 1], :] for i in range(count)]


class FiveBranchNet(nn.Module):
    """Five branches sharing Conv1 only (Sec. 3.1), intra- / inter-attention per `variant`."""

    def __init__(self, variant: Variant, num_classes: int, body_size: tuple[int, int] = (384, 192),
                 part_size: tuple[int, int] = (96, 192), dropout: float = 0.5, attention_norm: bool = True) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifiers), got {num_classes}")
        self.variant = variant
        self.num_classes = num_classes
        self.attention_norm = attention_norm
        self.body_size = tuple(body_size)
        self.part_size = tuple(part_size)
        self.branch_names: tuple[str, ...] = REGION_NAMES
        self.input_keys: tuple[str, ...] = (GLOBAL_BRANCH,) if variant.strips else REGION_NAMES
        global_spec = BranchSpec(GLOBAL_BRANCH, **GLOBAL_SPEC)
        part_specs = [BranchSpec(name, **PART_SPEC) for name in PART_BRANCHES]
        self.stem = stem()
        self.branches = nn.ModuleDict({s.name: Branch(s, variant.intra, attention_norm) for s in (global_spec, *part_specs)})
        part_dim = part_specs[0].embed_dim
        self.inter = InterAttention(len(PART_BRANCHES), part_dim, enabled=variant.inter)
        self.feature_dim = global_spec.embed_dim + len(PART_BRANCHES) * part_dim
        dims = {s.name: s.embed_dim for s in (global_spec, *part_specs)} | {FUSED: self.feature_dim}
        self.classifier = nn.ModuleDict(
            {k: IdentityClassifier(d, num_classes, dropout) for k, d in dims.items()} if num_classes else {})
        init_conv_weights(self)
        for module in self.modules():
            if isinstance(module, AttentionHeads):
                module.reset_parameters()

    # -- inputs -------------------------------------------------------------------------------------------
    def example_inputs(self, batch: int = 1, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Zero inputs of the configured sizes (for size reports, export and benchmarks)."""
        sizes = {k: self.body_size if k == GLOBAL_BRANCH else self.part_size for k in self.input_keys}
        return {k: torch.zeros(batch, 3, *hw, device=device) for k, hw in sizes.items()}

    def branch_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check `inputs` against `input_keys` and return one image batch per branch."""
        if not isinstance(inputs, dict):
            raise ModelInputError(f"model {self.variant.name!r} expects a dict with keys {self.input_keys}, "
                                  f"got {type(inputs).__name__}")
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise ModelInputError(f"model {self.variant.name!r} expects inputs {self.input_keys}; missing {missing}")
        batch = None
        for k in self.input_keys:
            x = inputs[k]
            if x.dim() != 4 or x.shape[1] != 3:
                raise ModelInputError(f"input {k!r} must be (B, 3, H, W), got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ModelInputError(f"input {k!r} has batch {x.shape[0]}, other inputs have {batch}")
            batch = x.shape[0]
        if self.variant.strips:
            whole = inputs[GLOBAL_BRANCH]
            return {GLOBAL_BRANCH: whole, **dict(zip(PART_BRANCHES, horizontal_strips(whole, len(PART_BRANCHES))))}
        return {k: inputs[k] for k in self.branch_names}

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        images = self.branch_inputs(inputs)
        embeddings = {name: self.branches[name](self.stem(images[name])) for name in self.branch_names}
        e_g = embeddings[GLOBAL_BRANCH]
        e_l = self.inter([embeddings[name] for name in PART_BRANCHES])
        features = torch.cat([e_g, e_l], dim=1)
        logits: dict[str, torch.Tensor] = {}
        if self.num_classes:
            logits = {name: self.classifier[name](e) for name, e in embeddings.items()}
            logits[FUSED] = self.classifier[FUSED](features)
        return ModelOutput(logits, features)

    def attention_maps(self) -> dict[str, list[torch.Tensor]]:
        """Branch -> attention maps of blocks 2-4 from the last forward: channel means of m_i, (B, 1, h, w) in
        [0, 1], detached. Empty lists for variants without intra-attention (or before the first forward)."""
        return {name: self.branches[name].attention_maps() for name in self.branch_names}

    def complexity_group(self, name: str) -> str:
        """Group of a parameter / module name in size reports: 'conv1 (shared)', a branch, 'inter-attention'."""
        head, _, rest = name.partition(".")
        if head == "stem":
            return "conv1 (shared)"
        if head == "branches":
            return rest.split(".")[0]
        return {"inter": "inter-attention", "classifier": "classifiers"}.get(head, head)
