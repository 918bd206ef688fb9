"""Semantic segmentation data: COCO instance masks painted into class-label maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visionflow.data.batching import TrainValLoaders, image_to_tensor, pad_collate, reseed_albumentations
from visionflow.data.coco import CocoDataset, check_same_categories, load_coco, semantic_mask


class CocoSemanticDataset(Dataset):
    """Items are (image float32 (3, H, W) in [0, 1], labels int64 (H, W)); 0 is background.

    Class ``i + 1`` is the i-th category of the COCO file, in file order.
    ``transform`` is an albumentations pipeline applied to image and mask together.
    """

    def __init__(self, coco: CocoDataset, transform: Any = None):
        self.coco = coco
        self.transform = transform
        self.label_of_category = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}

    @property
    def class_names(self) -> list[str]:
        return ["background"] + [c["name"] for c in self.coco.categories]

    def __len__(self) -> int:
        return len(self.coco.images)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) image and uint8 (H, W) labels, before any transform."""
        record = self.coco.images[index]
        image = self.coco.read_image(record)
        labels = semantic_mask(self.coco.annotations_of(record["id"]), record["height"],
                               record["width"], self.label_of_category)
        return image, labels

    def reseed(self, seed: int) -> None:
        reseed_albumentations(self.transform, seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.raw(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=labels)
            image, labels = out["image"], out["mask"]
        return image_to_tensor(image), torch.from_numpy(np.ascontiguousarray(labels)).long()


def load_split(data_root: Path, split: str) -> CocoDataset:
    path = data_root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' not found in dataset {data_root}")
    return load_coco(path, root=data_root)


class SegmentationData(TrainValLoaders):
    """The train and validation splits of a COCO segmentation dataset, with their loaders."""

    collate = staticmethod(pad_collate)

    def __init__(self, data_root: Path, batch_size: int, train_transform: Any = None,
                 num_workers: int = 0, seed: int = 0, pin_memory: bool = False):
        self.data_root = Path(data_root)
        self.batch_size = batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        self.train = CocoSemanticDataset(load_split(self.data_root, "train"), train_transform)
        self.train.coco.preload()
        val_split = "val" if (self.data_root / "val.json").is_file() else "test"
        self.val = CocoSemanticDataset(load_split(self.data_root, val_split))
        check_same_categories(self.train.coco, self.val.coco)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names
