"""HA-CNN: the Harmonious Attention CNN (Li, Zhu, Gong, "Harmonious Attention Network for Person
Re-Identification", CVPR 2018), a comparison model of Tables 3-5, trained from scratch on the whole image.

Architecture (paper Sec. 3, Fig. 2-4; input 160x64):

    stem      3x3 conv, stride 2, 32 channels (+ BN + ReLU)                                     80x32
    level i   global: Inception-A -> Inception-B (stride 2), width d_i = 128 / 256 / 384     40x16 .. 10x4
              harmonious attention (HA) on the block output:
                soft   spatial (channel mean -> 3x3/2 conv -> bilinear up-sampling back -> 1x1 conv) times
                       channel (squeeze-excitation: global pooling -> 1x1 -> 1x1, reduction 16), fused by a
                       1x1 conv + BN and a sigmoid; the block output is multiplied by it
                hard   global pooling -> linear -> tanh: the translations (t_x, t_y) of 4 horizontal regions
                       with fixed scales (s_w, s_h) = (1, 1/4), initialised as the 4 stripes of the image
              local:  each region is sampled from the level's *input* (the stem output at level 1, the
                      previous level's attended output above) with affine_grid / grid_sample at a fixed size
                      (24x28, 12x14, 6x7 at 160x64), added to the region's output of the previous level and
                      passed through an Inception-B block of width d_i shared by the 4 regions (grid_sample on the
              affine grid of the region's matrix, built in `region_grid`: the same grid as affine_grid, and
              exportable to ONNX opset 17)
    features  global: average pooling -> FC 512 (+ BN + ReLU); local: the 4 pooled region streams concatenated
              -> FC 512 (+ BN + ReLU); one identity classifier each
    test      [global / |global|, local / |local|]: 1,024-d

Defects of torchreid's widely used re-implementation that this one avoids: hard-coded `.cuda()` (every tensor
here is created on its input's device), the ReLU before the attention sigmoid (which confines the soft
attention to [0.5, 1): here the 1x1 fusion is conv + BN, no ReLU, so the attention spans (0, 1)), the deprecated
`F.upsample` and the missing `align_corners` (F.interpolate / affine_grid / grid_sample with
align_corners=False throughout), and tanh applied to the stripe initialisation (torchreid initialises the
linear bias to the stripe centres (-0.75, -0.25, 0.25, 0.75) and then applies tanh, so its initial regions sit
at tanh(0.75) = 0.64 and overlap; here the bias is atanh of the centres, so the initial regions are exactly the
four stripes). The four regions of a level go through the shared local block as one batch (4B samples), so
its batch-norm statistics cover all regions (torchreid calls the block once per region).

Readings where the paper leaves a choice: Inception-A = {1x1; 1x1-3x3; 1x1-3x3-3x3; 3x3 avg-pool-1x1}, d/4
channels each; Inception-B = {1x1-3x3/2; 1x1-3x3-3x3/2; 3x3/2 max-pool-1x1}, with d/4, d/4, d/2 channels
(Fig. 3); every convolution is followed by BN and ReLU, except the attention fusion (BN only, then sigmoid);
the squeeze-excitation convolutions carry biases and no BN (they see 1x1 maps); the spatial attention is
up-sampled to the block's exact size (x2 of the 3x3/2 conv output for even sizes), which lets any input size
work. Region sizes scale with the input: (round(0.15 H), round(0.4375 W)) at level 1 (24x28 at 160x64), halved
(rounding up) at each further level, which is what the shared stride-2 local blocks produce.

Parameter count (`python cli.py model-info hacnn`): the paper reports 2.7 M. Our counter counts every
parameter once - the local Inception-B blocks shared by the 4 regions once - and excludes the identity
classifiers (`classifier.*`), as for every model of the toolkit: 2.92 M (+8 %), 0.54 G MACs at 160x64.
Counting the shared local blocks once per region (4 x 0.52 M) gives 4.50 M, the "4.5 M" torchreid lists;
with both classifiers for Market's 751 identities counted once instead it would be 3.69 M.

Minimum input size: 32x16 (the level-3 maps must be at least 1x1, and the regions at least 4x4 at level 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .contract import (InputSpec, LossSettings, ModelDefaults, ModelOutput, OptimizerSpec,
                       ReidModel, ScheduleSpec)
from .registry import PaperRow, register_model

INPUT_KEY = "body"
DEFAULT_SIZE = (160, 64)
MIN_SIZE = (32, 16)
STEM_CHANNELS = 32
WIDTHS: tuple[int, int, int] = (128, 256, 384)
"""d_1, d_2, d_3: widths of the three Inception-A/B levels (paper Sec. 4, "Implementation details")."""
NUM_REGIONS = 4
REGION_SCALE = (1.0, 1.0 / NUM_REGIONS)
"""(s_w, s_h): fixed scales of the hard-attention regions: full width, a quarter of the height."""
STRIPE_CENTRES: tuple[float, ...] = tuple(-1.0 + (2 * r + 1) / NUM_REGIONS for r in range(NUM_REGIONS))
"""Vertical centres of the 4 stripes in affine_grid's normalised coordinates: -0.75, -0.25, 0.25, 0.75."""
REGION_FRACTION = (24 / 160, 28 / 64)
"""Level-1 region size relative to the input: 24x28 at the paper's 160x64."""
FEATURE_DIM = 512
SE_REDUCTION = 16


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class InceptionA(nn.Module):
    """Four streams of out/4 channels at the input resolution: 1x1; 1x1-3x3; 1x1-3x3-3x3; avg-pool-1x1."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.streams = nn.ModuleList([
            conv_bn_relu(in_ch, mid, 1),
            nn.Sequential(conv_bn_relu(in_ch, mid, 1), conv_bn_relu(mid, mid, 3)),
            nn.Sequential(conv_bn_relu(in_ch, mid, 1), conv_bn_relu(mid, mid, 3), conv_bn_relu(mid, mid, 3)),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn_relu(in_ch, out_ch - 3 * mid, 1)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(x) for s in self.streams], dim=1)


class InceptionB(nn.Module):
    """Reduction (stride 2): 1x1-3x3/2 (out/4); 1x1-3x3-3x3/2 (out/4); max-pool/2-1x1 (out/2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.streams = nn.ModuleList([
            nn.Sequential(conv_bn_relu(in_ch, mid, 1), conv_bn_relu(mid, mid, 3, stride=2)),
            nn.Sequential(conv_bn_relu(in_ch, mid, 1), conv_bn_relu(mid, mid, 3), conv_bn_relu(mid, mid, 3, 2)),
            nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), conv_bn_relu(in_ch, out_ch - 2 * mid, 1)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(x) for s in self.streams], dim=1)


class SoftAttention(nn.Module):
    """Soft attention of HA: spatial (B,1,h,w) x channel (B,C,1,1), fused by a 1x1 conv + BN, sigmoid -> (0, 1).
    No ReLU before the sigmoid (the re-implementation's defect that confines the attention to [0.5, 1))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.spatial_down = conv_bn_relu(1, 1, 3, stride=2)
        self.spatial_out = conv_bn_relu(1, 1, 1)
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, channels, 1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_down(x.mean(dim=1, keepdim=True))
        spatial = F.interpolate(spatial, size=x.shape[-2:], mode="bilinear", align_corners=False)
        spatial = self.spatial_out(spatial)
        return torch.sigmoid(self.fuse(spatial * self.channel(x)))


class HardAttention(nn.Module):
    """Hard regional attention of HA: global pooling -> linear -> tanh -> (B, 4, 2) translations (t_x, t_y) of
    the 4 regions, in affine_grid's normalised coordinates. Initialised (zero weights, bias atanh of the stripe
    centres) so that every image starts with the 4 horizontal stripes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, NUM_REGIONS * 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            centres = torch.tensor([[0.0, math.atanh(c)] for c in STRIPE_CENTRES])
            self.fc.bias.copy_(centres.reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))).view(-1, NUM_REGIONS, 2)


def region_theta(translations: torch.Tensor, scale: tuple[float, float] = REGION_SCALE) -> torch.Tensor:
    """(B, R, 2) translations -> (B, R, 2, 3) affine matrices [[s_w, 0, t_x], [0, s_h, t_y]] (output -> input
    coordinates of affine_grid). Built with tensor ops only (traceable, on the translations' device)."""
    tx, ty = translations[..., 0], translations[..., 1]
    zero = torch.zeros_like(tx)
    row_x = torch.stack([zero + scale[0], zero, tx], dim=-1)
    row_y = torch.stack([zero, zero + scale[1], ty], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def region_grid(translations: torch.Tensor, size: tuple[int, int],
                scale: tuple[float, float] = REGION_SCALE) -> torch.Tensor:
    """(B, 2) translations -> the (B, h, w, 2) sampling grid of `F.affine_grid(region_theta(...), (B, C, h, w),
    align_corners=False)`, built directly: the regions' matrices have no rotation or shear, so the grid is
    separable (x = s_w * x_out + t_x, y = s_h * y_out + t_y). Same numbers (tested), but it exports to ONNX
    opset 17 (the torchscript exporter has affine_grid only from opset 20)."""
    h, w = size
    dev, dtype = translations.device, translations.dtype
    base_x = (2 * torch.arange(w, device=dev, dtype=dtype) + 1) / w - 1
    base_y = (2 * torch.arange(h, device=dev, dtype=dtype) + 1) / h - 1
    gx = scale[0] * base_x.view(1, 1, w) + translations[:, 0].view(-1, 1, 1)     # (B, 1, w)
    gy = scale[1] * base_y.view(1, h, 1) + translations[:, 1].view(-1, 1, 1)     # (B, h, 1)
    return torch.stack([gx.expand(-1, h, -1), gy.expand(-1, -1, w)], dim=-1)


def sample_regions(x: torch.Tensor, translations: torch.Tensor, size: tuple[int, int],
                   scale: tuple[float, float] = REGION_SCALE) -> torch.Tensor:
    """Sample the R regions of `translations` (B, R, 2) from x (B, C, H, W) at `size` (h, w): (R*B, C, h, w),
    region-major (rows r*B .. r*B+B-1 are region r of every image). grid_sample, bilinear, border padding,
    align_corners=False, on the affine grid of `region_grid`."""
    out = []
    for r in range(translations.shape[1]):
        grid = region_grid(translations[:, r], size, scale)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.cat(out, dim=0)


def region_sizes(input_size: tuple[int, int], levels: int = 3) -> list[tuple[int, int]]:
    """Region size of each level: level 1 scales with the input (24x28 at 160x64), then halved rounding up
    (what a stride-2 Inception-B block makes of it)."""
    h = max(4, round(input_size[0] * REGION_FRACTION[0]))
    w = max(4, round(input_size[1] * REGION_FRACTION[1]))
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


@dataclass
class HACNNOptions:
    """Options of `hacnn` (`[model.hacnn]`, `--model-option`).

    learn_region: the hard regional attention and the local branch (False: the global branch only, the
        paper's "HA-CNN w/o local" ablation; the local feature is then zeros).
    dropout: before both identity classifiers (the paper names none: 0)."""

    learn_region: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class FeatureHead(nn.Sequential):
    """Linear -> BN -> ReLU: the 512-d global or local feature."""

    def __init__(self, in_dim: int, dim: int = FEATURE_DIM) -> None:
        super().__init__(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))


class HACNN(ReidModel):
    """HA-CNN (see the module docstring): global and local 512-d features, one classifier each."""

    min_onnx_opset = 20   # GridSample runs in onnx's reference evaluator (export's check without onnxruntime) from 20

    def __init__(self, num_classes: int, inputs: dict[str, InputSpec] | None = None,
                 options: HACNNOptions | None = None, losses: LossSettings | None = None) -> None:
        super().__init__("hacnn", inputs or default_inputs(), num_classes, losses)
        size = self.single_input(INPUT_KEY, MIN_SIZE)
        self.options = options or HACNNOptions()
        self.region_sizes = region_sizes(size)
        self.stem = conv_bn_relu(3, STEM_CHANNELS, 3, stride=2)
        ins = (STEM_CHANNELS, *WIDTHS[:-1])
        self.blocks = nn.ModuleList([nn.Sequential(InceptionA(i, d), InceptionB(d, d)) for i, d in zip(ins, WIDTHS)])
        self.soft = nn.ModuleList([SoftAttention(d) for d in WIDTHS])
        self.learn_region = self.options.learn_region
        if self.learn_region:
            self.hard = nn.ModuleList([HardAttention(d) for d in WIDTHS])
            self.local_blocks = nn.ModuleList([InceptionB(i, d) for i, d in zip(ins, WIDTHS)])
            self.local_head = FeatureHead(NUM_REGIONS * WIDTHS[-1])
        self.global_head = FeatureHead(WIDTHS[-1])
        self.feature_dim = 2 * FEATURE_DIM
        self.feature_layout = (("global", FEATURE_DIM), ("local", FEATURE_DIM))
        self.classifier = nn.ModuleDict()
        if num_classes:
            for name in ("global", "local") if self.learn_region else ("global",):
                self.classifier[name] = nn.Sequential(nn.Dropout(self.options.dropout),
                                                      nn.Linear(FEATURE_DIM, num_classes))
        self._init_weights()
        self._soft_maps: list[torch.Tensor] = []
        self._translations: list[torch.Tensor] = []

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, HardAttention):
                m.reset_parameters()

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        self.check_inputs(inputs)
        x = self.stem(inputs[INPUT_KEY])
        batch = x.shape[0]
        local = None
        soft_maps, translations = [], []
        for level, (block, soft) in enumerate(zip(self.blocks, self.soft)):
            y = block(x)
            attention = soft(y)
            soft_maps.append(attention.mean(dim=1, keepdim=True).detach())
            if self.learn_region:
                t = self.hard[level](y)
                translations.append(t.detach())
                regions = sample_regions(x, t, self.region_sizes[level])
                local = self.local_blocks[level](regions if local is None else regions + local)
            x = y * attention
        self._soft_maps, self._translations = soft_maps, translations
        f_global = self.global_head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if self.learn_region:
            pooled = torch.flatten(F.adaptive_avg_pool2d(local, 1), 1)            # (R*B, C), region-major
            per_image = pooled.view(NUM_REGIONS, batch, -1).transpose(0, 1).reshape(batch, -1)
            f_local = self.local_head(per_image)
        else:
            f_local = torch.zeros_like(f_global)
        features = torch.cat([F.normalize(f_global, dim=1), F.normalize(f_local, dim=1)], dim=1)
        logits = {"global": self.classifier["global"](f_global)} if self.num_classes else {}
        if self.num_classes and self.learn_region:
            logits["local"] = self.classifier["local"](f_local)
        return ModelOutput(logits, features, {"triplet": torch.cat([f_global, f_local], dim=1)})

    def attention_maps(self) -> dict[str, list[torch.Tensor]]:
        """"soft": the soft attention of levels 1-3 of the last forward (channel means, (B, 1, h, w) in (0, 1))."""
        return {"soft": list(self._soft_maps)} if self._soft_maps else {}

    def hard_attention_boxes(self) -> torch.Tensor | None:
        """The hard-attention regions of the last forward as boxes (B, 3 levels, 4 regions, 4) = (x0, y0, x1, y1)
        in [0, 1] image fractions (None before a forward or without learn_region)."""
        if not self._translations:
            return None
        t = torch.stack(self._translations, dim=1)                   # (B, L, R, 2)
        half = torch.tensor([REGION_SCALE[0], REGION_SCALE[1]], device=t.device)
        lo, hi = (t - half + 1) / 2, (t + half + 1) / 2
        return torch.cat([lo, hi], dim=-1).clamp(0, 1)

    def complexity_group(self, name: str) -> str:
        head = name.split(".")[0]
        return {"stem": "stem", "blocks": "global branch", "soft": "soft attention", "hard": "hard attention",
                "local_blocks": "local branch (shared by 4 regions)", "local_head": "local FC",
                "global_head": "global FC", "classifier": "classifiers"}.get(head, head)


def default_inputs() -> dict[str, InputSpec]:
    return {INPUT_KEY: InputSpec("whole", DEFAULT_SIZE, "body")}


HACNN_DEFAULTS = ModelDefaults(
    inputs=default_inputs(),
    # Fixed ImageNet mean / std rather than the per-sample channel means: HA-CNN sees only the whole image, and
    # subtracting each image's own mean colour would erase the overall clothing colour it has to match on.
    normalize="imagenet",
    # Paper Sec. 4: Adam, lr 5e-4, beta (0.9, 0.999), batch 32, 150 epochs, no schedule named (a step of 150
    # epochs keeps the rate constant); weight decay is not named, 5e-4 is the usual ReID value.
    optimizer=OptimizerSpec(name="adam", lr=5e-4, weight_decay=5e-4),
    schedule=ScheduleSpec(name="step", step=150, gamma=0.1),
    losses=LossSettings(),
    epochs=150,
    batch_size=32,
    sampler="random",
)


@register_model("hacnn", defaults=HACNN_DEFAULTS, options=HACNNOptions,
                paper=PaperRow("Li, Zhu, Gong, CVPR 2018 (HA-CNN), Sec. 4.4 model size", params_m=2.7,
                               note="ours: every parameter once (the local blocks shared by the 4 regions once), "
                                    "classifiers excluded; counting the shared blocks 4x gives torchreid's 4.5 M",
                               reported={"market": {"R1": 91.2, "mAP": 75.7},      # Table 1, single query
                                         "duke": {"R1": 80.5, "mAP": 63.8}}),     # Table 2
                summary="HA-CNN (Li et al. 2018): soft + hard harmonious attention, global + local 512-d")
def build_hacnn(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings,
                options: HACNNOptions | None) -> HACNN:
    """HA-CNN (Li, Zhu, Gong 2018) from scratch on the whole image."""
    return HACNN(num_classes, inputs, options, losses)
