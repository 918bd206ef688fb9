"""Self-supervision data: unlabelled image folders, two augmented views, labelled probe folders.

The synthetic set (written by :mod:`visionflow.data.synth.selfsup`) is laid out as a user's
own data would be::

    <root>/index.json                         what was written (counts, classes)
    <root>/unlabelled/000000.png ...          pretraining images (any image folder)
    <root>/probe/train/<class>/000000.png     labelled probe set: one subfolder per class
    <root>/probe/test/<class>/000000.png
    <root>/segmentation/{train,test}.json     COCO scenes for the label-efficiency report
    <root>/segmentation/images/{train,test}/000000.png

An acquired ``image_folder`` dataset can stand in for the unlabelled images
(``selfsup.data.source`` / ``extra_unlabelled``) or the probe set
(``selfsup.data.probe``); a probe folder either has ``train/`` and ``test/``
subfolders or is split in half per class (sorted file names, alternate files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visionflow.batch_augment import TwoViews
from visionflow.data.batching import TrainValLoaders, image_to_tensor, reseed_albumentations
from visionflow.data.images import list_images, read_rgb

def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB: the file, resized (area interpolation) if it is another size."""
    image = read_rgb(path)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def unlabelled_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted); an error names an empty folder."""
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(f"{folder}: no images found (png, jpg, ...) for self-supervision")
    return images


@dataclass(frozen=True)
class ProbeSet:
    """A labelled image folder split in two. ``labels`` index ``class_names``."""

    class_names: list[str]
    train_paths: list[Path]
    train_labels: list[int]
    test_paths: list[Path]
    test_labels: list[int]


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_probe_set(root: Path) -> ProbeSet:
    """One subfolder per class, either under ``train/`` and ``test/`` or split in half here."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: probe image folder not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = sorted({p.name for split in ("train", "test") for p in _class_folders(root / split)})
        split_files = {split: [(path, names.index(folder.name)) for folder in _class_folders(root / split)
                               for path in list_images(folder)] for split in ("train", "test")}
    else:
        folders = _class_folders(root)
        names = [f.name for f in folders]
        split_files = {"train": [], "test": []}
        for label, folder in enumerate(folders):
            files = list_images(folder)
            split_files["train"] += [(p, label) for p in files[0::2]]
            split_files["test"] += [(p, label) for p in files[1::2]]
    if len(names) < 2:
        raise ValueError(f"{root}: a probe set needs at least 2 class subfolders, found {names}")
    for split, files in split_files.items():
        if not files:
            raise ValueError(f"{root}: the probe's {split} split has no images")
    return ProbeSet(names, [p for p, _ in split_files["train"]], [y for _, y in split_files["train"]],
                    [p for p, _ in split_files["test"]], [y for _, y in split_files["test"]])


def resolve_sources(data_root: Path, raw_dir: Path, source: str, extra: list[str]) -> list[Path]:
    """Folders of unlabelled images: the synthetic ``unlabelled/`` or acquired datasets by name."""
    folders = []
    for index, name in enumerate([source, *extra]):
        key = "selfsup.data.source" if index == 0 else f"selfsup.data.extra_unlabelled[{index - 1}]"
        folder = data_root / "unlabelled" if name == "synthetic" else raw_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}: {folder} not found; declare {name!r} under acquire.datasets "
                                    f"with format: image_folder and run `visionflow acquire`")
        folders.append(folder)
    return folders


def probe_root(data_root: Path, raw_dir: Path, probe: str) -> Path:
    return data_root / "probe" if probe == "synthetic" else raw_dir / probe


# --- two views ----------------------------------------------------------------------------------


def two_views(transform: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent draws of ``transform`` (an albumentations pipeline) on one image.

    The pipeline's own seeded generator advances between the calls, so the views
    differ; a pipeline built with the same seed replays the same pairs.
    """
    return transform(image=image)["image"], transform(image=image)["image"]


class TwoViewDataset(Dataset):
    """Items are (view_1, view_2): float32 (3, S, S) in [0, 1], two augmentations of one image."""

    def __init__(self, paths: list[Path], size: int, transform: Any):
        self.paths, self.size, self.transform = list(paths), size, transform
        self._cache: dict[int, np.ndarray] = {}  # decoded once: small images, read every epoch

    def image(self, index: int) -> np.ndarray:
        if index not in self._cache:
            self._cache[index] = load_image(self.paths[index], self.size)
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        reseed_albumentations(self.transform, seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = two_views(self.transform, self.image(index))
        for view in (first, second):
            if view.shape[:2] != (self.size, self.size):
                raise ValueError(f"selfsup.augment: views must stay {self.size}x{self.size} "
                                 f"(selfsup.data.image_size), got {view.shape[1]}x{view.shape[0]} "
                                 f"for {self.paths[index]}")
        return image_to_tensor(first), image_to_tensor(second)


class ImageDataset(Dataset):
    """Items are float32 (3, S, S) images in [0, 1], decoded once: the views are drawn on the
    device, for the whole batch (``selfsup.augment_on: device``)."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = list(paths), size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        """Nothing random happens here."""

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            self._cache[index] = image_to_tensor(load_image(self.paths[index], self.size))
        return self._cache[index]


class FixedPairs(Dataset):
    """Pairs drawn once (seeded) and kept: a validation loss that means the same every epoch."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        self.pairs = pairs

    @classmethod
    def per_image(cls, source: TwoViewDataset) -> "FixedPairs":
        """Each image's two views from the loader's pipeline (seeded when it was built)."""
        return cls([source[i] for i in range(len(source))])

    @classmethod
    def batched(cls, source: ImageDataset, views: TwoViews, seed: int) -> "FixedPairs":
        """Every image's two views from the batched pipeline, drawn from ``seed``."""
        first, second = views.seeded(torch.stack([source[i] for i in range(len(source))]), seed)
        return cls(list(zip(first, second)))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pairs[index]


def split_train_val(paths: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Every k-th image (k = round(1 / val_fraction)) is held out; at least 2 on each side."""
    step = max(2, round(1 / val_fraction))
    val = paths[::step]
    train = [p for i, p in enumerate(paths) if i % step != 0]
    if len(val) < 2 or len(train) < 2:
        raise ValueError(f"selfsup.data: {len(paths)} unlabelled images are too few to hold out a "
                         f"validation share of {val_fraction}")
    return train, val


class SelfsupDataModule(TrainValLoaders):
    """Two views of each unlabelled image for training; fixed pairs for the validation loss.

    With ``batch_views`` (views drawn on the device), training batches are the images alone
    (N, 3, S, S) and ``SelfsupModule`` draws the views; the transforms are then unused.
    """

    def __init__(self, folders: list[Path], size: int, val_fraction: float, batch_size: int,
                 train_transform: Any, val_transform: Any, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False, batch_views: TwoViews | None = None):
        paths = [p for folder in folders for p in unlabelled_images(folder)]
        train_paths, val_paths = split_train_val(paths, val_fraction)
        if len(train_paths) < batch_size:
            raise ValueError(f"selfsup.train.batch_size {batch_size} is larger than the "
                             f"{len(train_paths)} unlabelled training images")
        self.size, self.batch_size = size, batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        if batch_views is None:
            self.train = TwoViewDataset(train_paths, size, train_transform)
            self.val = FixedPairs.per_image(TwoViewDataset(val_paths, size, val_transform))
        else:
            self.train = ImageDataset(train_paths, size)
            self.val = FixedPairs.batched(ImageDataset(val_paths, size), batch_views, seed + 1)

    def val_dataloader(self) -> DataLoader:
        # NT-Xent needs >= 2 rows: never leave a last batch of one.
        batch = max(2, min(2 * self.batch_size, len(self.val)))
        return DataLoader(self.val, batch_size=batch, shuffle=False, drop_last=len(self.val) % batch == 1)

