"""Confusion-matrix metrics against hand-computed values and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

from visionflow.constants import IGNORE_INDEX
from visionflow.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def test_hand_computed_iou():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    confusion = confusion_matrix(pred, target, 2)
    assert confusion.tolist() == [[1, 1], [0, 2]]
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3
    assert iou_per_class(confusion).tolist() == pytest.approx([0.5, 2 / 3])
    assert mean_iou(confusion) == pytest.approx((0.5 + 2 / 3) / 2)
    assert pixel_accuracy(confusion) == pytest.approx(0.75)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    target = pred = torch.tensor([[[0, 1]]])
    ious = iou_per_class(confusion_matrix(pred, target, 3))
    assert ious[:2].tolist() == [1.0, 1.0] and math.isnan(ious[2])
    assert mean_iou(confusion_matrix(pred, target, 3)) == 1.0


def test_ignore_index_pixels_are_skipped():
    target = torch.tensor([[[0, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 1]]])
    assert confusion_matrix(pred, target, 2).tolist() == [[1, 0], [0, 0]]


def test_agrees_with_torchmetrics():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (3, 16, 16))
    target[0, :4] = IGNORE_INDEX
    pred = torch.where(torch.rand(3, 16, 16) < 0.7, target.clamp(max=3), torch.randint(0, 4, (3, 16, 16)))
    confusion = confusion_matrix(pred, target, 4)
    reference = multiclass_jaccard_index(pred, target, 4, average="none", ignore_index=IGNORE_INDEX)
    assert iou_per_class(confusion).float() == pytest.approx(reference, abs=1e-6)
    assert mean_iou(confusion) == pytest.approx(float(reference.mean()), abs=1e-6)
    accuracy = multiclass_accuracy(pred, target, 4, average="micro", ignore_index=IGNORE_INDEX)
    assert pixel_accuracy(confusion) == pytest.approx(float(accuracy), abs=1e-6)


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 5), 3)
