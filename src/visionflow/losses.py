"""Losses as free functions on tensors. Pure torch (and kornia's focal loss).

Shapes: ``logits (N, C, H, W)`` float, ``target (N, H, W)`` int64 class indices
in ``[0, C)`` or :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from visionflow.constants import IGNORE_INDEX


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (N, C, H, W) and target (N, H, W), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check(logits, target)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Softmax focal loss ``-(1 - p_t)^gamma log p_t``, mean over valid pixels."""
    from kornia.losses import focal_loss as kornia_focal_loss

    _check(logits, target)
    valid = target != IGNORE_INDEX
    per_pixel = kornia_focal_loss(logits, target, alpha=None, gamma=gamma, reduction="none",
                                  ignore_index=IGNORE_INDEX)
    # kornia's "mean" also counts ignored pixels and the C slices: normalise by valid pixels.
    return per_pixel.sum() / valid.sum().clamp(min=1)


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 - |PT| / (|P²| + |T²| - |PT|)`` per class over the batch, averaged over classes.

    P is the softmax probability, T the one-hot target; ignored pixels are left
    out of every sum. A class absent from both P and T scores a loss of 0.
    """
    _check(logits, target)
    num_classes = logits.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # (N, 1, H, W)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    union = (probs**2).sum(dims) + (onehot**2).sum(dims) - intersection
    return (1 - (intersection + eps) / (union + eps)).mean()


SEGMENTATION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": cross_entropy_loss,
    "focal": focal_loss,
    "soft_jaccard": soft_jaccard_loss,
}


def weighted_segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                               weights: Mapping[str, float], focal_gamma: float = 2.0
                               ) -> dict[str, torch.Tensor]:
    """Each named loss and their weighted sum under ``"loss"``."""
    terms = {}
    for name, weight in weights.items():
        kwargs = {"gamma": focal_gamma} if name == "focal" else {}
        terms[name] = SEGMENTATION_LOSSES[name](logits, target, **kwargs)
    terms["loss"] = sum(weights[name] * terms[name] for name in weights)
    return terms


# --- self-supervised ------------------------------------------------------------------------


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy (NT-Xent), mean over 2N anchors.

    ``z1, z2 (N, D)``: embeddings of two views; row i of ``z1`` and row i of ``z2``
    are a positive pair, every other of the 2N rows is a negative. With cosine
    similarity ``s`` and temperature ``t``, anchor i with positive j scores
    ``-log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t))``.
    """
    if z1.ndim != 2 or z1.shape != z2.shape or len(z1) < 2:
        raise ValueError(f"expected two (N, D) batches with N >= 2, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)
