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

import torch
from torch import nn

from posecrop.regions import REGION_NAMES

from ..losses import batch_hard_triplet, cross_entropy
from .attention import AttentionHeads, InterAttention, IntraAttentionBlock
from .base import (GLOBAL_SPEC, PART_SPEC, BranchSpec, Embedding, IdentityClassifier, init_conv_weights,
                   residual_stage, stem)
from .contract import InputSpec, LossSettings, ModelDefaults, ModelInputError, ModelOutput, ReidModel
from .registry import PaperRow, register_model

ATTENTION_POOLS: tuple[int, ...] = (0, 2, 1, 1)
"""Max-pool levels of the attention path in blocks 1..4 (Sec. 3.3: twice in block 2, once in blocks 3-4)."""
GLOBAL_BRANCH = REGION_NAMES[0]
PART_BRANCHES = REGION_NAMES[1:]
FUSED = "fused"


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


@dataclass
class FiveBranchOptions:
    """Options of the five-branch variants (`[model.NAME]` in a recipe, `--model-option` on the CLI).

    lambda_intra: weight of the five branch losses in Eq. 11 (Sec. 4.4 tunes it per dataset).
    attention_norm: batch norm of the intra-attention mask logits before the sigmoid (False: the paper's
        m = sigmoid(conv(S * C)) as written, which saturates on real images; reidtrain.model.attention).
    dropout: before every identity classifier (Table 1's FC row)."""

    lambda_intra: float = 0.5
    attention_norm: bool = True
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.lambda_intra < 0:
            raise ValueError(f"lambda_intra must be >= 0, got {self.lambda_intra}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


BODY_SIZE = (384, 192)
PART_SIZE = (96, 192)


def five_branch_inputs(variant: Variant) -> dict[str, InputSpec]:
    """Default inputs of a variant: `baseline` reads the unaligned source image (`whole`) as its "body" input
    and cuts its own strips; the others read the five pose-aligned crops."""
    if variant.strips:
        return {GLOBAL_BRANCH: InputSpec("whole", BODY_SIZE, "body")}
    return {name: InputSpec(name, BODY_SIZE if name == GLOBAL_BRANCH else PART_SIZE,
                            "body" if name == GLOBAL_BRANCH else "part") for name in REGION_NAMES}


class FiveBranchNet(ReidModel):
    """Five branches sharing Conv1 only (Sec. 3.1), intra- / inter-attention per `variant`; Eq. 11 loss."""

    def __init__(self, variant: Variant, num_classes: int, inputs: dict[str, InputSpec] | None = None,
                 options: FiveBranchOptions | None = None, losses: LossSettings | None = None) -> None:
        super().__init__(variant.name, inputs or five_branch_inputs(variant), num_classes, losses)
        options = options or FiveBranchOptions()
        expected = tuple(five_branch_inputs(variant))
        if self.input_keys != expected:
            raise ModelInputError(f"model {variant.name!r} has inputs {expected}, got {self.input_keys}")
        self.variant = variant
        self.options = options
        self.lambda_intra = options.lambda_intra
        self.attention_norm = options.attention_norm
        self.body_size = tuple(self.inputs[GLOBAL_BRANCH].size)
        self.part_size = tuple(self.inputs[PART_BRANCHES[0]].size) if not variant.strips else None
        self.branch_names: tuple[str, ...] = REGION_NAMES
        global_spec = BranchSpec(GLOBAL_BRANCH, **GLOBAL_SPEC)
        part_specs = [BranchSpec(name, **PART_SPEC) for name in PART_BRANCHES]
        self.stem = stem()
        self.branches = nn.ModuleDict({s.name: Branch(s, variant.intra, options.attention_norm)
                                       for s in (global_spec, *part_specs)})
        part_dim = part_specs[0].embed_dim
        self.inter = InterAttention(len(PART_BRANCHES), part_dim, enabled=variant.inter)
        self.feature_dim = global_spec.embed_dim + len(PART_BRANCHES) * part_dim
        self.feature_layout = (("E_g", global_spec.embed_dim),
                               (f"E_l = {len(PART_BRANCHES)} x {part_dim}: {', '.join(PART_BRANCHES)}",
                                len(PART_BRANCHES) * part_dim))
        dims = {s.name: s.embed_dim for s in (global_spec, *part_specs)} | {FUSED: self.feature_dim}
        self.classifier = nn.ModuleDict(
            {k: IdentityClassifier(d, num_classes, options.dropout) for k, d in dims.items()} if num_classes else {})
        init_conv_weights(self)
        for module in self.modules():
            if isinstance(module, AttentionHeads):
                module.reset_parameters()

    # -- inputs -------------------------------------------------------------------------------------------
    def branch_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check `inputs` against `input_keys` and return one image batch per branch."""
        self.check_inputs(inputs)
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
        return ModelOutput(logits, features, {})

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 10-11: {"intra": lambda * sum_j CE(branch j), "inter": CE(fused)} (+ "triplet" on [E_g, E_l] when
        the loss settings ask for it); cross-entropy label-smoothed per the settings (0 in the paper)."""
        missing = [k for k in (*self.branch_names, FUSED) if k not in output.logits]
        if missing:
            raise ModelInputError(f"model output lacks the classifier logits {missing} needed by Eq. 11 "
                                  f"(built with num_classes=0?)")
        eps = self.losses.label_smoothing
        intra = sum(cross_entropy(output.logits[k], labels, eps) for k in self.branch_names)
        terms = {"intra": self.lambda_intra * intra, "inter": cross_entropy(output.logits[FUSED], labels, eps)}
        if self.losses.triplet_weight > 0:
            terms["triplet"] = self.losses.triplet_weight * batch_hard_triplet(output.features, labels,
                                                                               self.losses.triplet_margin)
        return terms

    def accuracy_logits(self, output: ModelOutput) -> torch.Tensor | None:
        return output.logits.get(FUSED)

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


# ------------------------------------------------------------------------------------------------ registration
def _register(variant: Variant) -> None:
    full = variant.intra
    paper = PaperRow("Yang et al., Pattern Recognition 2019, Table 12 (" + ("Full model" if full else "Basemodel")
                     + ")", params_m=10.4 if full else 6.8, macs_g=2.69 if full else 2.26,
                     reported=REPORTED[variant.name])

    def build(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings,
              options: FiveBranchOptions) -> FiveBranchNet:
        return FiveBranchNet(variant, num_classes, inputs, options, losses)

    build.__qualname__ = f"build_{variant.name}"
    register_model(variant.name, defaults=ModelDefaults(inputs=five_branch_inputs(variant), sizes_from_crop=True),
                   options=FiveBranchOptions, paper=paper, summary=VARIANT_SUMMARIES[variant.name])(build)


REPORTED: dict[str, dict[str, dict[str, float]]] = {
    # Table 6 (lambda 0.5, beta 5H/48; CUHK03: R1 only, the paper gives no mAP there)
    "baseline": {"market": {"R1": 86.63, "mAP": 66.25}, "duke": {"R1": 75.98, "mAP": 57.23},
                 "cuhk03-labeled": {"R1": 85.46}, "cuhk03-detected": {"R1": 80.02}},
    "aligned": {"market": {"R1": 89.98, "mAP": 72.46}, "duke": {"R1": 76.71, "mAP": 60.67},
                "cuhk03-labeled": {"R1": 89.15}, "cuhk03-detected": {"R1": 84.47}},
    "intra": {"market": {"R1": 92.04, "mAP": 78.92}, "duke": {"R1": 80.12, "mAP": 63.75},
              "cuhk03-labeled": {"R1": 91.50}, "cuhk03-detected": {"R1": 88.38}},
    "inter": {"market": {"R1": 92.07, "mAP": 78.46}, "duke": {"R1": 79.62, "mAP": 64.27},
              "cuhk03-labeled": {"R1": 91.76}, "cuhk03-detected": {"R1": 89.53}},
    # Tables 3-5 ("Ours": the best beta / lambda per dataset, Table 6's starred row; Table 6's lambda 0.5 row has
    # Market 94.65 / 85.22, Duke 84.78 / 71.92, CUHK03-L 94.96, CUHK03-D 93.45)
    "intra-inter": {"market": {"R1": 94.99, "R5": 98.25, "R10": 99.12, "mAP": 86.47},
                    "duke": {"R1": 86.04, "mAP": 74.57},
                    "cuhk03-labeled": {"R1": 96.43, "R5": 99.73, "R10": 99.91},
                    "cuhk03-detected": {"R1": 93.58, "R5": 98.91, "R10": 99.42}},
}
"""Accuracy the paper reports per variant and dataset (PaperRow.reported), in percent."""

VARIANT_SUMMARIES = {
    "baseline": "five-branch net, whole image + four fixed strips, no attention (Table 6)",
    "aligned": "five-branch net on the pose-aligned crops, no attention (Table 6)",
    "intra": "aligned + intra-attention in blocks 2-4 (Table 6)",
    "inter": "aligned + inter-attention fusion (Table 6)",
    "intra-inter": "the full model: intra- and inter-attention (Table 6)",
}
for _v in VARIANTS.values():
    _register(_v)
