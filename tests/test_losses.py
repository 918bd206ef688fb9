"""Segmentation losses: hand-derived values, ignore index, gradients, error text."""

from __future__ import annotations

import math

import pytest
import torch

from visionflow.constants import IGNORE_INDEX
from visionflow.losses import (cross_entropy_loss, focal_loss, soft_jaccard_loss,
                               weighted_segmentation_loss)


def logits_for(probs: list[list[float]]) -> torch.Tensor:
    """(N=1, C, H=1, W=len(probs)) logits whose softmax over C is ``probs`` (one list per pixel)."""
    p = torch.tensor(probs, dtype=torch.float64).T  # (C, W)
    return p.log()[None, :, None, :]


def test_soft_jaccard_hand_computed():
    # Two classes, two pixels. P = [[0.5, 0.5], [1, 0]] (pixel-wise), T = [class 0, class 0].
    logits = logits_for([[0.5, 0.5], [1 - 1e-12, 1e-12]])
    target = torch.tensor([[[0, 0]]])
    # class 0: |PT| = 1.5, |P²| = 1.25, |T²| = 2 -> J = 1.5 / 1.75
    # class 1: |PT| = 0,   |P²| = 0.25, |T²| = 0 -> J = 0
    expected = 1 - (1.5 / 1.75 + 0.0) / 2
    assert soft_jaccard_loss(logits, target).item() == pytest.approx(expected, abs=1e-5)  # eps 1e-6


def test_soft_jaccard_perfect_prediction_is_zero():
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50
    assert soft_jaccard_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_hand_value_and_gamma_zero_is_cross_entropy():
    logits = logits_for([[0.5, 0.5], [0.25, 0.75]])
    target = torch.tensor([[[0, 1]]])
    # pixel 1: p_t = 0.5, pixel 2: p_t = 0.75; gamma 2: -(1-p)^2 log p, mean over 2 pixels
    expected = (0.25 * math.log(2) + 0.0625 * -math.log(0.75)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        cross_entropy_loss(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("loss", [cross_entropy_loss, focal_loss, soft_jaccard_loss])
def test_ignored_pixels_change_nothing(loss):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4))
    ignored = target.clone()
    ignored[:, :, 2:] = IGNORE_INDEX
    reference = loss(logits[..., :2].contiguous(), target[..., :2].contiguous())
    assert loss(logits, ignored).item() == pytest.approx(reference.item(), rel=1e-9)


@pytest.mark.parametrize("loss", [cross_entropy_loss, focal_loss, soft_jaccard_loss])
def test_gradcheck(loss):
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 3, 3))
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


def test_weighted_mix_sums_terms():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    terms = weighted_segmentation_loss(logits, target, {"cross_entropy": 1.0, "soft_jaccard": 0.5})
    assert terms["loss"].item() == pytest.approx(
        terms["cross_entropy"].item() + 0.5 * terms["soft_jaccard"].item())


def test_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) and \(2, 4\)"):
        cross_entropy_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.long))
