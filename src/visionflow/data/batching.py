"""Batching helpers shared by data modules (torch only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


class TrainValLoaders:
    """``train_dataloader()`` and ``val_dataloader()`` over ``self.train`` and ``self.val``: what
    ``training.train_task`` needs from a family's data object. Plain torch, so stages that only
    read data do not pay for importing Lightning.

    Subclasses set ``train``, ``val``, ``batch_size``, ``num_workers`` and ``seed``; class
    attributes choose the collate function and the validation batch size (a multiple of
    ``batch_size``: validation keeps no activations for backward).
    """

    train: Dataset
    val: Dataset
    batch_size: int
    num_workers: int = 0
    seed: int = 0
    collate: Callable[[list], Any] | None = None  # set with staticmethod(...)
    val_batch_multiplier: int = 2

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # Shuffled (training) loaders drop a last partial batch, unless that would leave none.
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          drop_last=shuffle and len(dataset) > batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate, generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.val_batch_multiplier * self.batch_size, shuffle=False)
