"""Intra-attention (Sec. 3.3, Eq. 3-7) and inter-attention (Sec. 3.4, Eq. 8-9).

Reading of Fig. 5 taken here (the figure is not reproduced in the text; DESIGN.md section 5):

- Blocks B_1..B_4 are the stages Conv2x..Conv5x of Table 1; B_2..B_4 carry an attention path.
- The first residual unit of a block (the one that changes width / resolution) is shared by both paths, like
  the pre-processing unit of the Residual Attention Network [28]: x = U_1(v_i). The feature-extraction path is
  the block's remaining units, a_i = F(v_i) = U_3(U_2(x)) (Eq. 3), and the attention path M (Eq. 4) starts
  from x, so that m_i and a_i have the same h x w x c without any extra resampling.
- Encoder-decoder: max-pool (3x3, stride 2) twice in B_2 and once in B_3 and B_4, each pool followed by one
  residual unit (bottleneck of the block's own widths); the decoder up-samples symmetrically (bilinear, to the
  exact size of the skip, so odd sizes work), adds the encoder feature of the same resolution (additive skip),
  and refines every intermediate resolution with one more residual unit. B_2: 3 units, B_3 / B_4: 1 unit.
- Heads: spatial attention S = 3x3 conv (c -> 1) of A (Eq. 6); channel attention C = 1x1 conv (c -> c) of
  the average-pooled A; m = sigmoid(BN(1x1 conv (c -> c) of S * C)). The batch norm before the sigmoid is ours
  (`norm=True`, the default; `norm=False` is the text as written): A is a ReLU output, so S has a large non-zero
  mean, and the product S * C of two unnormalised maps reaches logits of +-10..70 on real images. Without the norm
  the sigmoid saturates - measured on CUHK01 (64x32 body) after 10 epochs: every channel of m is 0 or 1 to 1e-7,
  identical at every position, so the "attention" is a fixed per-channel gain of 1 or 2 that gets no gradient.
- Residual attention v_{i+1} = (1 + m_i) * a_i (Eq. 7).
- Table 8's "without attention decomposition" (`attention="joint"`, JointAttentionHead): the same encoder-decoder
  A, but one h x w x c map straight from it, as the mask head of the Residual Attention Network [28] (the
  "traditional attention estimation" the paper builds on): 1x1 conv (c -> c) + BN + ReLU, then the same 1x1 mix
  conv (c -> c), norm and sigmoid. It is as deep as the decomposed heads (two convolutions between A and m) and
  about as large (2 c^2 weights against 2 c^2 + 10 c), so Table 8 compares the decomposition, not the size; every
  (position, channel) score is free instead of the rank-one S x C. `JointAttentionHead(kernel=3)` is the variant
  that sees S's 3x3 neighbourhood (10 c^2 weights: +5.5 M parameters on the full model).

With this reading the attention paths add 53 % parameters and 17 % MACs to the base network (Table 12:
+53 % / +19 %); the full model counts 11.1 M parameters / 2.40 G MACs at 384x192 against Table 12's
10.4 M / 2.69 G (`python cli.py model-info`; how they are counted: `reidtrain.model.complexity`). The
1x1 "mix" convolution is run literally on S * C as the paper describes it, although S * C has rank one per
sample and the factorised form S * (W C) would give the same m for 0.17 G fewer MACs.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Bottleneck, residual_stage


AttentionKind = Literal["decomposed", "joint"]
"""How an attention path turns A into m: "decomposed" (S x C, Sec. 3.3) or "joint" (one h x w x c map, Table 8)."""
ATTENTION_KINDS: tuple[str, ...] = ("decomposed", "joint")


def residual_attention(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. 7: v = (1 + m) * a, element-wise (m broadcast over a)."""
    return (1.0 + m) * a


class AttentionHeads(nn.Module):
    """Spatial (h x w x 1) and channel (1 x 1 x c) attention, their product, a 1x1 conv and a sigmoid -> m."""

    def __init__(self, channels: int, spatial_kernel: int = 3, norm: bool = True) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(channels, 1, spatial_kernel, padding=spatial_kernel // 2)
        self.channel = nn.Conv2d(channels, channels, 1)
        self.mix = nn.Conv2d(channels, channels, 1)
        # batch norm of the mask logits (see the module docstring); nn.Identity() keeps the literal reading
        self.norm: nn.Module = nn.BatchNorm2d(channels) if norm else nn.Identity()

    def reset_parameters(self) -> None:
        """PyTorch's default (fan-in, uniform) init: He init of these three convolutions saturates the sigmoid
        (> 90 % of m below 0.01 or above 0.99 at init), the default keeps m spread around 0.5."""
        for conv in (self.spatial, self.channel, self.mix):
            conv.reset_parameters()

    def forward(self, attention_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (B, c, h, w) -> (m (B, c, h, w) in [0, 1], S (B, 1, h, w), C (B, c, 1, 1))."""
        s = self.spatial(attention_features)                                    # Eq. 6
        c = self.channel(F.adaptive_avg_pool2d(attention_features, 1))
        m = torch.sigmoid(self.norm(self.mix(s * c)))
        return m, s, c


class JointAttentionHead(nn.Module):
    """Table 8's attention without decomposition: m = sigmoid(norm(1x1 conv(ReLU(BN(k x k conv(A)))))), one
    h x w x c map (see the module docstring; k = 1 by default). Returns (m, None, None): there is no S or C."""

    def __init__(self, channels: int, kernel: int = 1, norm: bool = True) -> None:
        super().__init__()
        self.joint = nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2),
                                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.mix = nn.Conv2d(channels, channels, 1)
        self.norm: nn.Module = nn.BatchNorm2d(channels) if norm else nn.Identity()

    def reset_parameters(self) -> None:
        """PyTorch's default init for the two convolutions, as AttentionHeads (keeps m spread around 0.5)."""
        self.joint[0].reset_parameters()
        self.mix.reset_parameters()

    def forward(self, attention_features: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """A (B, c, h, w) -> (m (B, c, h, w) in [0, 1], None, None)."""
        return torch.sigmoid(self.norm(self.mix(self.joint(attention_features)))), None, None


def attention_head(channels: int, kind: str = "decomposed", norm: bool = True) -> nn.Module:
    """The head that turns the encoder-decoder output A into the mask m: AttentionHeads or JointAttentionHead."""
    if kind == "decomposed":
        return AttentionHeads(channels, norm=norm)
    if kind == "joint":
        return JointAttentionHead(channels, norm=norm)
    raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")


class AttentionPath(nn.Module):
    """Encoder-decoder attention path M: `pools` max-pool / residual-unit levels, symmetric up-sampling with
    additive skips, then the spatial x channel heads (`attention="decomposed"`) or one joint map ("joint")."""

    def __init__(self, channels: int, mid_channels: int, pools: int, norm: bool = True,
                 attention: str = "decomposed") -> None:
        super().__init__()
        if pools < 1:
            raise ValueError(f"an attention path needs at least one pooling level, got pools={pools}")
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), Bottleneck(channels, mid_channels, channels))
            for _ in range(pools))
        self.decoder = nn.ModuleList(Bottleneck(channels, mid_channels, channels) for _ in range(pools - 1))
        self.heads = attention_head(channels, attention, norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        skips = [x]
        y = x
        for level in self.encoder:
            y = level(y)
            skips.append(y)
        skips.pop()  # the lowest resolution has no skip partner
        for k in range(len(skips) - 1, -1, -1):
            skip = skips[k]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            if k > 0:
                y = self.decoder[k - 1](y)
        return self.heads(y)


class IntraAttentionBlock(nn.Module):
    """Block B_i (i = 2..4): shared first unit, feature-extraction path F and attention path M, Eq. 7;
    `attention` "decomposed" (Sec. 3.3) or "joint" (Table 8, without the spatial / channel decomposition).

    After each forward, `last_map` holds the block's attention map for visualisation: the channel mean of m_i,
    (B, 1, h, w) in [0, 1], detached.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, pools: int, units: int = 3,
                 norm: bool = True, attention: str = "decomposed") -> None:
        super().__init__()
        self.entry = Bottleneck(in_ch, mid_ch, out_ch, stride)
        self.trunk = residual_stage(out_ch, mid_ch, out_ch, units=units - 1)
        self.attention = AttentionPath(out_ch, mid_ch, pools, norm=norm, attention=attention)
        self.last_map: torch.Tensor | None = None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = self.entry(v)
        a = self.trunk(x)                       # Eq. 3
        m, _, _ = self.attention(x)             # Eq. 4
        self.last_map = m.detach().mean(dim=1, keepdim=True)
        return residual_attention(a, m)         # Eq. 7


class InterAttention(nn.Module):
    """Eq. 8-9: mu_i = sigmoid(w_i . E_i + b_i) per part, E_l = [(mu_1 + 1) E_1, ..., (mu_4 + 1) E_4].

    With `enabled=False` the module is the plain concatenation E_l = [E_1, ..., E_4] (mu = 0) of the
    variants without inter-attention, and has no parameters.
    """

    def __init__(self, num_parts: int, dim: int, enabled: bool = True) -> None:
        super().__init__()
        self.num_parts = num_parts
        self.weights = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_parts)) if enabled else None

    def part_weights(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """(B, num_parts) weights mu_i (zeros when disabled)."""
        if self.weights is None:
            return parts[0].new_zeros(parts[0].shape[0], self.num_parts)
        return torch.cat([torch.sigmoid(fc(e)) for fc, e in zip(self.weights, parts)], dim=1)   # Eq. 8

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) != self.num_parts:
            raise ValueError(f"inter-attention expects {self.num_parts} part features, got {len(parts)}")
        if self.weights is None:
            return torch.cat(parts, dim=1)
        mu = self.part_weights(parts)
        return torch.cat([(mu[:, i:i + 1] + 1.0) * e for i, e in enumerate(parts)], dim=1)        # Eq. 9
