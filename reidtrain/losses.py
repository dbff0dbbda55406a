"""Loss functions every model can use: (label-smoothed) identity cross-entropy and the batch-hard triplet loss.

    cross_entropy(logits, labels, epsilon)   CE against (1 - eps) one-hot + eps / C (Szegedy et al. 2016);
                                             eps = 0 is plain cross-entropy, computed in float32 under AMP
    batch_hard_triplet(features, labels, m)  Hermans, Beyer, Leibe 2017: for every anchor the farthest positive
                                             and the nearest negative in the batch (Euclidean distances),
                                             mean of max(0, d_ap - d_an + m); m None = soft margin
                                             log(1 + exp(d_ap - d_an)). Anchors without a positive or without
                                             a negative in the batch are left out (use the identity sampler,
                                             P x K, so every anchor has both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Mean (label-smoothed) cross-entropy of (B, C) logits against integer labels (B,)."""
    if epsilon:
        return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)
    return F.cross_entropy(logits.float(), labels)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances between the rows of x, numerically safe at 0 (gradient finite)."""
    x = x.float()
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss of (B, D) features; 0 (with a gradient path) when no anchor has both a positive
    and a negative in the batch."""
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"batch_hard_triplet: features (B, D) and labels (B,) expected, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    d = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap = torch.where(pos, d, torch.full_like(d, -1.0)).max(1).values
    d_an = torch.where(neg, d, torch.full_like(d, float("inf"))).min(1).values
    diff = (d_ap - d_an)[valid]
    if margin is None:
        return F.softplus(diff).mean()
    return F.relu(diff + margin).mean()
