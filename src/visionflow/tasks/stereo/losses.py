"""Stereo losses as free functions (pure torch, and kornia's SSIM), beside the network they train.

Shapes: images ``(N, 3, H, W)`` float in ``[0, 1]``; disparities ``(N, 1, H, W)`` in
left-image px (``x_right = x_left - d``); ground truth with non-finite values
where invalid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from visionflow.tasks.stereo.network import warp_right_to_left

EDGE_SHARPNESS = 10.0  # smoothness weight exp(-10 |dI|): an image step of 0.1 (of [0, 1]) halves it ~3x


def valid_disparity_mask(target: torch.Tensor, max_disparity: float) -> torch.Tensor:
    """bool: finite ground truth in ``[0, max_disparity)`` (outside the range no match is possible)."""
    return torch.isfinite(target) & (target >= 0) & (target < max_disparity)


def supervised_disparity_loss(predictions: Sequence[torch.Tensor], target: torch.Tensor,
                              weights: Sequence[float], max_disparity: float, beta: float = 1.0) -> torch.Tensor:
    """Weighted smooth L1 (quadratic below ``beta`` px) of each prediction against ``target`` on valid pixels.

    predictions: each ``(N, 1, H, W)``; target ``(N, 1, H, W)``. With no valid pixel the
    loss is a zero still tied to the graph.
    """
    if len(predictions) != len(weights):
        raise ValueError(f"{len(predictions)} predictions but {len(weights)} weights")
    valid = valid_disparity_mask(target, max_disparity)
    if not valid.any():
        return sum(p.sum() * 0.0 for p in predictions)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    return sum(w * F.smooth_l1_loss(p[valid], safe_target[valid], beta=beta)
               for w, p in zip(weights, predictions))


def volume_distribution_loss(cost: torch.Tensor, target: torch.Tensor, max_disparity: float,
                             spread: float) -> torch.Tensor:
    """Cross-entropy of the cost volume's distribution against a unimodal one around the truth.

    cost: ``(N, D, h, w)`` matching cost at 1/4 of the target's resolution, candidate ``k``
    meaning ``4 k`` px; target ``(N, 1, H, W)`` px (``h >= H / 4``, ``w >= W / 4``; a padded
    cost is cropped). Each 1/4 cell takes the truth of its 4x4 block's pixel ``(2, 2)``, one
    surface's value even at a depth edge; the wanted distribution is
    ``softmax(-|k - t / 4| / spread)``. The soft-argmin loss alone is also satisfied by two
    peaks whose mean is right, which at a depth edge puts weight on both surfaces; this
    pulls the volume to one peak (AcfNet's unimodal supervision). Averaged over the cells
    with valid truth; with none, a zero still tied to the graph.
    """
    sampled = target[..., 2::4, 2::4]
    cost = cost[..., : sampled.shape[-2], : sampled.shape[-1]]
    valid = valid_disparity_mask(sampled, max_disparity)
    if not valid.any():
        return cost.sum() * 0.0
    steps = torch.arange(cost.shape[1], dtype=cost.dtype, device=cost.device).view(1, -1, 1, 1)
    truth = torch.where(valid, sampled, torch.zeros_like(sampled)) / 4
    wanted = F.softmax(-(steps - truth).abs() / spread, dim=1)
    cross_entropy = F.cross_entropy(-cost, wanted, reduction="none")  # (N, h, w)
    return cross_entropy[valid[:, 0]].mean()


def photometric_error(left: torch.Tensor, reconstructed: torch.Tensor, ssim_weight: float = 0.85
                      ) -> torch.Tensor:
    """Per-pixel ``w * (1 - SSIM) / 2 + (1 - w) * |L1|`` averaged over channels: ``(N, 1, H, W)``."""
    from kornia.losses import ssim_loss

    l1 = (left - reconstructed).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    dssim = ssim_loss(left, reconstructed, window_size=7, reduction="none").mean(1, keepdim=True)
    return ssim_weight * dssim + (1 - ssim_weight) * l1


def smoothness_loss(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of ``d / mean(d)``: gradients cost less where the image has edges."""
    d = disparity / (disparity.mean(dim=(2, 3), keepdim=True) + 1e-3)
    dx, dy = (d[..., :, 1:] - d[..., :, :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
    ix = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-EDGE_SHARPNESS * ix)).mean() + (dy * torch.exp(-EDGE_SHARPNESS * iy)).mean()


def self_supervised_losses(disparity_left: torch.Tensor, disparity_right: torch.Tensor,
                           left: torch.Tensor, right: torch.Tensor, ssim_weight: float,
                           max_disparity: float) -> dict[str, torch.Tensor]:
    """Photometric, smoothness and left-right consistency terms for an unlabelled pair.

    disparity_left: the left view's disparity (``x_r = x_l - d``); disparity_right: the right
    view's (``x_l = x_r + d``), e.g. from the network run on the mirrored, swapped pair.
    Each photometric term counts only pixels whose match lies inside the other image;
    the left-right term is in units of ``max_disparity``.
    """
    right_in_left, inside_left = warp_right_to_left(right, disparity_left)
    # The left image seen from the right: mirror both, then the same warp.
    left_in_right, inside_right = (t.flip(-1) for t in warp_right_to_left(left.flip(-1),
                                                                          disparity_right.flip(-1)))
    photo_left = photometric_error(left, right_in_left, ssim_weight)
    photo_right = photometric_error(right, left_in_right, ssim_weight)
    photometric = ((photo_left * inside_left).sum() / inside_left.sum().clamp_min(1)
                   + (photo_right * inside_right).sum() / inside_right.sum().clamp_min(1)) / 2

    right_disparity_in_left, _ = warp_right_to_left(disparity_right, disparity_left)
    left_right = ((disparity_left - right_disparity_in_left).abs() * inside_left).sum() \
        / inside_left.sum().clamp_min(1) / max_disparity
    smoothness = (smoothness_loss(disparity_left, left) + smoothness_loss(disparity_right, right)) / 2
    return {"photometric": photometric, "smoothness": smoothness, "left_right": left_right}
