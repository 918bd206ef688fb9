"""Keypoint augmentation on the training device: one kornia draw per crop, keypoints follow.

``pose.augment_on: device``: the loader hands out crops and their keypoints untouched, and after
the batch reaches the device :class:`KeypointBatchAugment` transforms the crops
(:class:`visionflow.batch_augment.PointAugment`), moves each keypoint with its crop's matrix,
swaps left and right (``flip_index``) where the draw was a reflection, and marks keypoints that
left the crop unlabelled, as the loader path (``data.KeypointAugment``) does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from visionflow.batch_augment import PointAugment, mirrored, move_points


def mark_outside(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """keypoints (N, K, 3) -> a copy where points outside (height, width), or unlabelled, are
    (0, 0, 0) (as COCO writes unlabelled points)."""
    x, y, v = keypoints.unbind(-1)
    outside = (x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5) | (v <= 0)
    return keypoints.masked_fill(outside[..., None], 0.0)


class KeypointBatchAugment:
    """``(crops (N, 3, H, W), keypoints (N, K, 3), info (N, 5))`` -> the same, augmented:
    keypoints x, y in the new crop's pixels; ``info`` (the crop's place in its image) unchanged."""

    def __init__(self, augment: PointAugment, flip_index: Sequence[int]):
        self.augment = augment
        self.flip_index = torch.as_tensor(list(flip_index), dtype=torch.long)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crops, keypoints, info = batch
        out, moved, _ = self.draw(crops, keypoints)
        return out, moved, info

    def draw(self, crops: torch.Tensor, keypoints: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crops, keypoints, mirrored (N,) bool) after one draw."""
        out, matrices = self.augment(crops)
        moved = torch.cat([move_points(keypoints[..., :2], matrices), keypoints[..., 2:]], -1)
        # In a mirror image, the point that was left_x sits where right_x would: swap the slots.
        flipped = mirrored(matrices)
        if self.flip_index.device != moved.device:  # copied once, not every step (a copy waits for the GPU)
            self.flip_index = self.flip_index.to(moved.device)
        moved = torch.where(flipped[:, None, None], moved[:, self.flip_index], moved)
        return out, mark_outside(moved, *out.shape[-2:]), flipped


def keypoint_drift(augment: KeypointBatchAugment, crops: torch.Tensor, keypoints: torch.Tensor,
                   moved: torch.Tensor, flipped: torch.Tensor) -> float:
    """Largest distance (px) between a moved keypoint and where its pixel went, in the draw that
    gave ``moved`` and ``flipped`` (``augment.draw``, the last one); on the CPU (the preview).

    Each labelled keypoint is painted as a small grey Gaussian blob (peak 0.5, so colour
    transforms scale it without clipping and keep its peak where it is) into a probe crop that
    replays the same draw; the blob's peak (``data.blob_peak``) should sit on the keypoint, after
    the left/right swap. 0 if none is labelled.
    """
    from visionflow.tasks.pose.data import blob_peak

    n, _, height, width = crops.shape
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    worst = 0.0
    for k in range(keypoints.shape[1]):
        x, y = keypoints[:, k, 0, None, None], keypoints[:, k, 1, None, None]
        probe = 0.5 * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)  # (N, H, W)
        replayed = augment.augment.replay(probe[:, None].expand(n, 3, height, width).contiguous())[:, 0]
        for i in range(n):
            slot = int(augment.flip_index[k]) if flipped[i] else k
            peak = blob_peak(replayed[i].numpy())
            if keypoints[i, k, 2] <= 0 or moved[i, slot, 2] <= 0 or peak is None:
                continue
            worst = max(worst, float(torch.hypot(peak[0] - moved[i, slot, 0], peak[1] - moved[i, slot, 1])))
    return worst
