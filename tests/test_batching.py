"""Seeded epochs: order and augmentation are functions of (seed, epoch, index) alone."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visionflow.data.batching import EpochSampler, SeededSamples, derived_seed


class NoisyItems(Dataset):
    """Item i is i plus a random draw from the augmentation stream (like an albumentations pipeline)."""

    def __init__(self, size: int):
        self.size, self.rng = size, np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, self.rng.random()], dtype=torch.float64)


def epoch_of(sampler: EpochSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_permutation_drawn_from_seed_and_epoch():
    sampler = EpochSampler(20, seed=3)
    first, second = epoch_of(sampler, 0), epoch_of(sampler, 1)
    assert sorted(i for i, _ in first) == list(range(20))
    assert [i for i, _ in first] != [i for i, _ in second]
    assert epoch_of(EpochSampler(20, seed=3), 1) == second  # a resumed run's epoch 1
    assert epoch_of(EpochSampler(20, seed=4), 1) != second
    assert len({s for _, s in first + second}) == 40  # every (epoch, index) draws its own stream
    assert dict(first)[5] == derived_seed(3, 0, 5)


def loaded(num_workers: int, epoch: int) -> torch.Tensor:
    sampler = EpochSampler(24, seed=1)
    sampler.set_epoch(epoch)
    loader = DataLoader(SeededSamples(NoisyItems(24)), batch_size=5, sampler=sampler, num_workers=num_workers)
    return torch.cat(list(loader))


def test_samples_do_not_depend_on_the_number_of_loader_processes():
    in_process = loaded(0, epoch=2)
    torch.testing.assert_close(loaded(2, epoch=2), in_process, rtol=0, atol=0)
    assert not torch.equal(loaded(0, epoch=3), in_process)
