"""Semantic segmentation metrics from a confusion matrix. Pure torch.

``confusion[t, p]`` counts pixels of true class t predicted as class p.
"""

from __future__ import annotations

import torch

from visionflow.constants import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, target: int64 (N, H, W) class indices -> int64 (C, C); IGNORE_INDEX pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != IGNORE_INDEX
    if (target[valid] >= num_classes).any() or (target[valid] < 0).any():
        raise ValueError(f"target holds class ids outside [0, {num_classes})")
    flat = target[valid] * num_classes + pred[valid]
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """float64 (C,): TP / (TP + FP + FN); NaN for a class absent from target and prediction."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean of the per-class IoUs, over classes present in target or prediction."""
    return float(iou_per_class(confusion).nanmean())


def pixel_accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum()
    return float(confusion.diag().sum().double() / total) if total > 0 else float("nan")
