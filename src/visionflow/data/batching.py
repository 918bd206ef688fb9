"""Batching helpers shared by data modules (torch only): seeded epochs, loaders, collate.

Training randomness is a function of (seed, epoch, sample index) alone: the
sampler draws each epoch's order from (seed, epoch) and hands every index its
own augmentation seed, which the dataset applies before drawing (``reseed``).
So an epoch is the same whether the run was resumed, and whatever the number
of loader processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key (numpy's SeedSequence hashing), e.g. (seed, epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for one epoch: a permutation drawn from (seed, epoch)
    (or ``0..n-1`` unshuffled) and each index's augmentation seed, from (seed, epoch, index).

    The epoch is all the state there is. Lightning calls ``set_epoch`` before every epoch, but
    a resumed run's loader processes draw their first batches before that call: whoever
    resumes sets the epoch first (``training.train_task`` does).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        for index in order:
            yield index, derived_seed(self.seed, self.epoch, index)


class Reseedable(Protocol):
    """A training dataset whose random augmentation can be reseeded before an item is drawn."""

    def reseed(self, seed: int) -> None: ...

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: reseed ``dataset``'s augmentation with ``seed``, then draw item ``index``."""

    def __init__(self, dataset: Reseedable):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        self.dataset.reseed(seed)
        return self.dataset[index]


def reseed_albumentations(transform: Any, seed: int) -> None:
    """Reseed an albumentations pipeline; None is left alone.

    Every transform in it draws from one new pair of generators (``set_random_state``): a
    fifth of the cost of ``set_random_seed``, which builds a pair per transform, and it is
    paid for every sample.
    """
    if transform is not None:
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def loader_options(num_workers: int, pin_memory: bool, seed: int) -> dict[str, Any]:
    """DataLoader keywords for ``num_workers`` loader processes: workers are kept across
    epochs and prefetch 4 batches each; ``pin_memory`` on CUDA (asynchronous copies). The
    loader's own generator (seeded) keeps it from drawing on torch's global one, so starting
    workers at a resumed epoch changes no other random draw."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory,
                               "generator": torch.Generator().manual_seed(seed)}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


class TrainValLoaders:
    """``train_dataloader()`` and ``val_dataloader()`` over ``self.train`` and ``self.val``: what
    ``training.train_task`` needs from a family's data object. Plain torch, so stages that only
    read data do not pay for importing Lightning.

    Subclasses set ``train`` (a :class:`Reseedable` dataset), ``val``, ``batch_size``,
    ``num_workers`` and ``seed`` (and ``pin_memory`` on CUDA); class attributes choose the collate
    function and the validation batch size (a multiple of ``batch_size``: validation keeps no
    activations for backward). The training loader's order and augmentation come from
    :class:`EpochSampler`.
    """

    train: Reseedable
    val: Dataset
    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0
    collate: Callable[[list], Any] | None = None  # set with staticmethod(...)
    val_batch_multiplier: int = 2

    def train_dataloader(self) -> DataLoader:
        # Drops a last partial batch, unless that would leave none.
        return DataLoader(SeededSamples(self.train), batch_size=self.batch_size,
                          sampler=EpochSampler(len(self.train), self.seed),
                          drop_last=len(self.train) > self.batch_size, collate_fn=self.collate,
                          **loader_options(self.num_workers, self.pin_memory, self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.val_batch_multiplier * self.batch_size, shuffle=False,
                          collate_fn=self.collate, **loader_options(self.num_workers, self.pin_memory, self.seed))
