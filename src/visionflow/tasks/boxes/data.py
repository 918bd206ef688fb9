"""Detection data: COCO boxes (and masks) as torchvision-style targets, box-aware augmentation.

Shared by ``detection`` and ``instance_segmentation`` (``with_masks``). Every
split file goes through :func:`visionflow.data.coco.load_coco`, so a malformed
annotation (negative size, box outside its image, unknown category) stops with
an error naming the file and the annotation id.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visionflow.tasks.boxes.params import BoxAugmentParams
from visionflow.data.batching import TrainValLoaders, image_to_tensor, reseed_albumentations
from visionflow.data.coco import CocoDataset, CocoFormatError, annotation_mask, check_same_categories, load_coco


def load_split(data_root: Path, split: str) -> CocoDataset:
    path = Path(data_root) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' not found in dataset {data_root}")
    return load_coco(path, root=data_root)


def build_box_transforms(augment: BoxAugmentParams, key_path: str, seed: int | None = None):
    """albumentations pipeline over image, COCO ``bboxes`` (with ``labels`` and ``instance``
    index fields) and ``masks``; boxes leaving the image follow ``augment.boxes``."""
    import albumentations as A

    from visionflow.augment import build_transforms

    rule = augment.boxes
    bbox_params = A.BboxParams(format="coco", label_fields=["labels", "instance"], clip=rule.clip,
                               min_visibility=rule.min_visibility, min_area=rule.min_area,
                               min_width=rule.min_side, min_height=rule.min_side,
                               filter_invalid_bboxes=True)
    return build_transforms(augment.transforms, f"{key_path}.transforms", seed=seed,
                            bbox_params=bbox_params)


class CocoDetectionDataset(Dataset):
    """Items: (image float32 ``(3, H, W)`` in [0, 1], target) with target

    ``boxes`` float32 ``(K, 4)`` xyxy px, ``labels`` int64 ``(K,)`` in 1..C (the category's
    position in the file + 1; 0 is background), ``image_id`` int64, and with ``with_masks``
    ``masks`` uint8 ``(K, H, W)``. Crowd annotations (``iscrowd``) are left out of targets.
    With masks, boxes are re-derived from the transformed masks (tight after any geometry).
    """

    def __init__(self, coco: CocoDataset, transform: Any = None, with_masks: bool = False):
        self.coco, self.transform, self.with_masks = coco, transform, with_masks
        self.label_of_category = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.coco.categories]

    def __len__(self) -> int:
        return len(self.coco.images)

    def image_size(self) -> int:
        """The most common longer image side (what torchvision's models are built for)."""
        sizes = Counter(max(image["height"], image["width"]) for image in self.coco.images)
        return sizes.most_common(1)[0][0] if sizes else 128

    def raw(self, index: int) -> dict[str, np.ndarray]:
        """Before any transform: ``image`` uint8 (H, W, 3), ``bboxes`` float32 (K, 4) COCO xywh,
        ``labels`` int64 (K,), ``masks`` bool (K, H, W) (with_masks only)."""
        record = self.coco.images[index]
        image = self.coco.read_image(record)
        height, width = record["height"], record["width"]
        annotations = [a for a in self.coco.annotations_of(record["id"]) if not a.get("iscrowd", 0)]
        sample = {
            "image": image,
            "bboxes": np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4),
            "labels": np.array([self.label_of_category[a["category_id"]] for a in annotations], np.int64),
        }
        if self.with_masks:
            for annotation in annotations:
                if "segmentation" not in annotation:
                    raise CocoFormatError(f"{self.coco.path}: annotation id {annotation['id']}: missing field "
                                          "'segmentation' (instance masks are needed here)")
            sample["masks"] = np.array([annotation_mask(a, height, width) for a in annotations],
                                       bool).reshape(-1, height, width)
        return sample

    def reseed(self, seed: int) -> None:
        reseed_albumentations(self.transform, seed)

    def transformed(self, index: int) -> dict[str, np.ndarray]:
        """``raw`` through the transform; masks follow their boxes (dropped with them)."""
        sample = self.raw(index)
        if self.transform is None:
            return sample
        masks = sample.get("masks")
        # albumentations crashes on an empty (0, H, W) masks array: pass a list
        out = self.transform(image=sample["image"], bboxes=sample["bboxes"], labels=sample["labels"],
                             instance=np.arange(len(sample["labels"]), dtype=np.int64),
                             masks=list(masks.astype(np.uint8)) if masks is not None else [])
        result = {"image": out["image"], "bboxes": np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
                  "labels": np.asarray(out["labels"], np.int64).reshape(-1)}
        if masks is not None:
            kept = np.asarray(out["instance"], np.int64).reshape(-1)
            height, width = out["image"].shape[:2]
            all_masks = np.asarray(out["masks"], bool).reshape(-1, height, width)
            result["masks"] = all_masks[kept]
        return result

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.ops import box_convert

        from visionflow.models.boxes import mask_boxes

        sample = self.transformed(index)
        image = image_to_tensor(sample["image"])
        boxes = box_convert(torch.from_numpy(sample["bboxes"]), "xywh", "xyxy")
        labels = torch.from_numpy(sample["labels"])
        target = {"boxes": boxes, "labels": labels,
                  "image_id": torch.tensor(self.coco.images[index]["id"], dtype=torch.int64)}
        if self.with_masks:
            masks = torch.from_numpy(np.ascontiguousarray(sample["masks"])).to(torch.uint8)
            keep = masks.flatten(1).amax(1) > 0  # a mask cut away entirely leaves no object
            masks, labels = masks[keep], labels[keep]
            target.update(boxes=mask_boxes(masks), labels=labels, masks=masks)
        return image, target


def detection_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Images padded bottom/right with zeros to ``(N, 3, H_max, W_max)``; targets stay a list."""
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.zeros(len(batch), 3, height, width)
    targets = []
    for i, (image, target) in enumerate(batch):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        if "masks" in target and target["masks"].shape[-2:] != (height, width):
            masks = torch.zeros(len(target["masks"]), height, width, dtype=torch.uint8)
            masks[:, : image.shape[1], : image.shape[2]] = target["masks"]
            target = {**target, "masks": masks}
        targets.append(target)
    return images, targets


class DetectionData(TrainValLoaders):
    """The train and validation splits of a COCO box (and mask) dataset, with their loaders."""

    collate = staticmethod(detection_collate)

    def __init__(self, data_root: Path, batch_size: int, train_transform: Any = None,
                 with_masks: bool = False, num_workers: int = 0, seed: int = 0, pin_memory: bool = False):
        self.data_root = Path(data_root)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory = pin_memory
        self.train = CocoDetectionDataset(load_split(self.data_root, "train"), train_transform, with_masks)
        self.train.coco.preload()
        val_split = "val" if (self.data_root / "val.json").is_file() else "test"
        self.val = CocoDetectionDataset(load_split(self.data_root, val_split), None, with_masks)
        check_same_categories(self.train.coco, self.val.coco)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.train.coco.category_ids

    @property
    def image_size(self) -> int:
        return self.train.image_size()

    @property
    def val_ground_truth(self) -> dict:
        """The validation split as COCO JSON, for the AP computed after every epoch."""
        coco = self.val.coco
        return {"images": coco.images, "annotations": coco.annotations, "categories": coco.categories}
