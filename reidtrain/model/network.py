"""The five-branch network (Fig. 3): shared Conv1, one branch per region, inter-attention fusion, classifiers.

Variants of the ablation (Table 6), selected by name:

    baseline     whole (unaligned) image + four fixed horizontal strips cut by the model, no attention
    aligned      the five pose-aligned region crops, no attention
    intra        crops + intra-attention in blocks 2-4 of every branch
    inter        crops + inter-attention fusion of the part features
    intra-inter  crops + both (the full model)

Every one of these five has the per-branch identity classifiers (the intra losses of Eq. 11) and a "fused"
classifier on the final feature [E_g, E_l] (the inter loss). Without inter-attention E_l is the plain
concatenation [E_1, ..., E_4] (mu_i = 0 in Eq. 9), so Eq. 11 trains every variant the same way.

That is our reading, not the paper's definition of Table 6: its *aligned* row (89.98 / 72.46 on Market-1501)
is exactly Table 9's "concatenation in the testing stage only", i.e. trained without any fused classifier, and
likewise *baseline* and *intra* (no inter-attention module, so no l_inter). The paper's definitions are
registered beside them, and the models of Tables 8-9:

    baseline-paper     baseline, trained with the branch losses only (fused_loss=False): L = lambda sum_j l_j
    aligned-paper      aligned, likewise (= Table 9 "Concatenation")
    intra-paper        intra, likewise
    aligned-fc         aligned + FC fusion trained end to end (Table 9 "FC fusion"): E_l = FC([E_1, ..., E_4])
    intra-inter-joint  intra-inter with attention without the spatial / channel decomposition (Table 8)

(Table 9's "Inter-attention" row is `inter`, Table 8's "With attention decomposition" row `intra-inter`; Table 7
is `evaluate --branches` on `inter` (without intra-attention) and `intra-inter` (with).)

Every variant is one point of three options (FiveBranchOptions; `--model-option KEY=VALUE`, `[model.NAME]`),
whose default None means "the variant's own":

    fusion      how E_l / the final feature is made: "concat" (E_l = [E_1..E_4]), "inter" (Eq. 8-9), "fc"
                (E_l = FC-reduce of [E_1..E_4] to 512: Linear + BN + ReLU, as the branches' FC) or "fc-all" (the
                paper's words read literally, "FC fusion of global and local features": the whole 768-d feature
                = FC-reduce of [E_g, E_1..E_4])
    attention   "decomposed" (Sec. 3.3: S x C) or "joint" (one h x w x c map, Table 8); variants with intra only
    fused_loss  train the fused classifier on the final feature (the l_inter term of Eq. 11); False: no fused
                classifier at all (concatenation at test time only). "inter" / "fc" fusion need it (their
                weights get no gradient otherwise).

The forward returns the per-branch features in `extras` ("branch:global", "branch:head", ..., "branch:part_fusion"
= E_l, "branch:global_part" = the final feature): what `evaluate --branches` scores one by one (Table 7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from posecrop.regions import REGION_NAMES

from ..losses import batch_hard_triplet, cross_entropy
from .attention import ATTENTION_KINDS, AttentionHeads, InterAttention, IntraAttentionBlock, JointAttentionHead
from .base import (GLOBAL_SPEC, PART_SPEC, BranchSpec, Embedding, IdentityClassifier, init_conv_weights,
                   residual_stage, stem)
from .contract import InputSpec, LossSettings, ModelDefaults, ModelInputError, ModelOutput, ReidModel
from .registry import PaperRow, register_model

ATTENTION_POOLS: tuple[int, ...] = (0, 2, 1, 1)
"""Max-pool levels of the attention path in blocks 1..4 (Sec. 3.3: twice in block 2, once in blocks 3-4)."""
GLOBAL_BRANCH = REGION_NAMES[0]
PART_BRANCHES = REGION_NAMES[1:]
FUSED = "fused"
Fusion = Literal["concat", "fc", "fc-all", "inter"]
FUSIONS: tuple[str, ...] = ("concat", "fc", "fc-all", "inter")
BRANCH_PREFIX = "branch:"
"""ModelOutput.extras keys of the features `evaluate --branches` scores one by one (reidtrain.evaluate)."""
BRANCH_LABELS: dict[str, str] = {REGION_NAMES[0]: "global", **{n: n for n in REGION_NAMES[1:]}}
"""Branch (region) name -> its label in the extras / Table 7: the whole-body branch is "global"."""


@dataclass(frozen=True)
class Variant:
    name: str
    strips: bool
    """True: the model gets the whole image as "body" and cuts four horizontal strips for the part branches."""
    intra: bool
    inter: bool
    fused_loss: bool = True
    """Default of the option: train a fused classifier on the final feature (l_inter of Eq. 11)."""
    fusion: Fusion | None = None
    """Default of the option (None: "inter" with `inter`, else "concat")."""
    attention: str = "decomposed"
    """Default of the option for variants with intra-attention: "decomposed" or "joint"."""

    @property
    def default_fusion(self) -> str:
        return self.fusion or ("inter" if self.inter else "concat")


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", strips=True, intra=False, inter=False),
    Variant("aligned", strips=False, intra=False, inter=False),
    Variant("intra", strips=False, intra=True, inter=False),
    Variant("inter", strips=False, intra=False, inter=True),
    Variant("intra-inter", strips=False, intra=True, inter=True),
)}
"""The five networks of Table 6 as this toolkit always trained them (every one with the fused loss)."""

STUDY_VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline-paper", strips=True, intra=False, inter=False, fused_loss=False),
    Variant("aligned-paper", strips=False, intra=False, inter=False, fused_loss=False),
    Variant("intra-paper", strips=False, intra=True, inter=False, fused_loss=False),
    Variant("aligned-fc", strips=False, intra=False, inter=False, fusion="fc"),
    Variant("intra-inter-joint", strips=False, intra=True, inter=True, attention="joint"),
)}
"""The paper's definitions of Table 6 rows 1-3 (no fused loss) and the models of Tables 8-9 (module docstring)."""


class Branch(nn.Module):
    """One branch after Conv1: max-pool, blocks 1-4 (Conv2x-Conv5x, with intra-attention in 2-4 if asked),
    average pooling and FC-reduce -> its feature E (B, embed_dim)."""

    def __init__(self, spec: BranchSpec, intra: bool, attention_norm: bool = True,
                 attention: str = "decomposed") -> None:
        super().__init__()
        self.spec = spec
        self.pool = nn.MaxPool2d(3, stride=spec.pool_stride, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_ch, mid, out, stride) in enumerate(spec.stage_widths()):
            if intra and ATTENTION_POOLS[i] > 0:
                blocks.append(IntraAttentionBlock(in_ch, mid, out, stride, pools=ATTENTION_POOLS[i],
                                                  norm=attention_norm, attention=attention))
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
    dropout: before every identity classifier (Table 1's FC row).
    fusion / attention / fused_loss: see the module docstring; None (the default) takes the variant's own
        (e.g. `aligned` concat + fused loss, `aligned-paper` concat without it, `inter` inter-attention)."""

    lambda_intra: float = 0.5
    attention_norm: bool = True
    dropout: float = 0.5
    fusion: Fusion | None = None
    attention: Literal["decomposed", "joint"] | None = None
    fused_loss: bool | None = None

    def __post_init__(self) -> None:
        if self.lambda_intra < 0:
            raise ValueError(f"lambda_intra must be >= 0, got {self.lambda_intra}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.attention is not None and self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")


class FCFusion(nn.Module):
    """Table 9's "FC fusion": Linear (no bias) + batch norm + ReLU over concatenated branch features, `out_dim`
    wide (the branches' own FC-reduce layout); trained end to end by the fused classifier on its output."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        self.bn = nn.BatchNorm1d(out_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(self.bn(self.fc(torch.cat(features, dim=1))))


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
        self.fusion: str = options.fusion or variant.default_fusion
        self.attention_kind: str = options.attention or variant.attention
        self.fused_loss: bool = variant.fused_loss if options.fused_loss is None else options.fused_loss
        if not self.fused_loss and self.fusion != "concat":
            raise ValueError(f"model {variant.name!r}: fusion {self.fusion!r} is trained by the fused loss only; "
                             f"with fused_loss=false its weights would get no gradient (use fusion='concat')")
        if options.attention == "joint" and not variant.intra:
            raise ValueError(f"model {variant.name!r} has no intra-attention: attention='joint' would change nothing")
        if not self.fused_loss and self.lambda_intra == 0:
            raise ValueError(f"model {variant.name!r}: fused_loss=false and lambda_intra=0 leave no loss to train")
        self.body_size = tuple(self.inputs[GLOBAL_BRANCH].size)
        self.part_size = tuple(self.inputs[PART_BRANCHES[0]].size) if not variant.strips else None
        self.branch_names: tuple[str, ...] = REGION_NAMES
        global_spec = BranchSpec(GLOBAL_BRANCH, **GLOBAL_SPEC)
        part_specs = [BranchSpec(name, **PART_SPEC) for name in PART_BRANCHES]
        self.stem = stem()
        self.branches = nn.ModuleDict({s.name: Branch(s, variant.intra, options.attention_norm, self.attention_kind)
                                       for s in (global_spec, *part_specs)})
        part_dim = part_specs[0].embed_dim
        parts_dim = len(PART_BRANCHES) * part_dim
        self.inter = InterAttention(len(PART_BRANCHES), part_dim, enabled=self.fusion == "inter")
        self.feature_dim = global_spec.embed_dim + parts_dim
        self.fc_fusion: FCFusion | None = None
        if self.fusion == "fc":
            self.fc_fusion = FCFusion(parts_dim, parts_dim)
        elif self.fusion == "fc-all":
            self.fc_fusion = FCFusion(self.feature_dim, self.feature_dim)
        how = {"concat": "[E_1, ..., E_4]", "inter": "Eq. 9", "fc": "FC([E_1, ..., E_4])"}.get(self.fusion, "")
        self.feature_layout = ((("E_g", global_spec.embed_dim),
                                (f"E_l = {how} of {len(PART_BRANCHES)} x {part_dim}: {', '.join(PART_BRANCHES)}",
                                 parts_dim)) if self.fusion != "fc-all"
                               else ((f"FC([E_g, E_1, ..., E_4]): {', '.join(REGION_NAMES)}", self.feature_dim),))
        dims = {s.name: s.embed_dim for s in (global_spec, *part_specs)}
        if self.fused_loss:
            dims[FUSED] = self.feature_dim
        self.classifier = nn.ModuleDict(
            {k: IdentityClassifier(d, num_classes, options.dropout) for k, d in dims.items()} if num_classes else {})
        init_conv_weights(self)
        for module in self.modules():
            if isinstance(module, (AttentionHeads, JointAttentionHead)):
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
        parts = [embeddings[name] for name in PART_BRANCHES]
        extras = {BRANCH_PREFIX + BRANCH_LABELS[name]: e for name, e in embeddings.items()}
        if self.fusion == "fc-all":
            features = self.fc_fusion([e_g, *parts])
        else:
            e_l = self.fc_fusion(parts) if self.fusion == "fc" else self.inter(parts)
            features = torch.cat([e_g, e_l], dim=1)
            extras[BRANCH_PREFIX + "part_fusion"] = e_l
        extras[BRANCH_PREFIX + "global_part"] = features
        logits: dict[str, torch.Tensor] = {}
        if self.num_classes:
            logits = {name: self.classifier[name](e) for name, e in embeddings.items()}
            if self.fused_loss:
                logits[FUSED] = self.classifier[FUSED](features)
        return ModelOutput(logits, features, extras)

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 10-11: {"intra": lambda * sum_j CE(branch j), "inter": CE(fused)} (+ "triplet" on [E_g, E_l] when
        the loss settings ask for it); cross-entropy label-smoothed per the settings (0 in the paper). Without
        the fused loss (fused_loss=False) there is no "inter" term: L = lambda * sum_j CE(branch j)."""
        needed = (*self.branch_names, FUSED) if self.fused_loss else self.branch_names
        missing = [k for k in needed if k not in output.logits]
        if missing:
            raise ModelInputError(f"model output lacks the classifier logits {missing} needed by Eq. 11 "
                                  f"(built with num_classes=0?)")
        eps = self.losses.label_smoothing
        intra = sum(cross_entropy(output.logits[k], labels, eps) for k in self.branch_names)
        terms = {"intra": self.lambda_intra * intra}
        if self.fused_loss:
            terms["inter"] = cross_entropy(output.logits[FUSED], labels, eps)
        if self.losses.triplet_weight > 0:
            terms["triplet"] = self.losses.triplet_weight * batch_hard_triplet(output.features, labels,
                                                                               self.losses.triplet_margin)
        return terms

    def accuracy_logits(self, output: ModelOutput) -> torch.Tensor | None:
        """The fused classifier's logits; without the fused loss the global branch's."""
        return output.logits.get(FUSED, output.logits.get(GLOBAL_BRANCH))

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
        return {"inter": "inter-attention", "fc_fusion": "FC fusion", "classifier": "classifiers"}.get(head, head)


# ------------------------------------------------------------------------------------------------ registration
def _register(variant: Variant) -> None:
    full = variant.intra
    paper = PaperRow("Yang et al., Pattern Recognition 2019, Table 12 (" + ("Full model" if full else "Basemodel")
                     + ")", params_m=10.4 if full else 6.8, macs_g=2.69 if full else 2.26,
                     reported=REPORTED.get(variant.name.removesuffix("-paper"), {}))
    if variant.attention != "decomposed" or variant.fusion is not None:   # Tables 8-9: no size reported
        paper = None

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
    "baseline-paper": "baseline as the paper defines it: no fused classifier / l_inter (Table 6)",
    "aligned-paper": "aligned as the paper defines it: concatenation at test time only (Tables 6, 9)",
    "intra-paper": "intra as the paper defines it: no fused classifier / l_inter (Table 6)",
    "aligned-fc": "aligned + FC fusion of the part features trained end to end (Table 9)",
    "intra-inter-joint": "intra-inter, attention without spatial/channel decomposition (Table 8)",
}
for _v in (*VARIANTS.values(), *STUDY_VARIANTS.values()):
    _register(_v)
