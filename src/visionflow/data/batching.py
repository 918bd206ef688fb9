"""Batching helpers shared by data modules (torch only)."""

from __future__ import annotations

import numpy as np
import torch

from visionflow.constants import IGNORE_INDEX


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image (3, H, W), labels (H, W)) pairs of different sizes.

    Pads on the bottom/right to the largest H and W in the batch: images with 0,
    labels with IGNORE_INDEX so padding counts in no loss or metric.
    Returns images (N, 3, H, W) and labels (N, H, W) int64.
    """
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.zeros(len(batch), 3, height, width)
    labels = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, label) in enumerate(batch):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        labels[i, : label.shape[0], : label.shape[1]] = label
    return images, labels
