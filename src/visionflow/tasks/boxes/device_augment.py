"""Box augmentation on the training device: one kornia draw per image of the batch, boxes follow.

``detection.augment_on: device``: the loader hands out cached images and their boxes untouched,
and after the batch reaches the device :class:`BoxBatchAugment` transforms the images
(:class:`visionflow.batch_augment.PointAugment`), moves each box's corners with its image's
matrix, takes the enclosing box (albumentations' ``largest_box``) and applies the same rule for
boxes leaving the image as the loader path (``augment.boxes``: clip, minimum visibility, area,
side).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.ops import box_area, clip_boxes_to_image

from visionflow.batch_augment import PointAugment, move_points
from visionflow.tasks.boxes.params import BoxRuleParams


def move_boxes(boxes: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """boxes (M, 4) xyxy in pixel-edge coordinates (a pixel spans [i, i + 1]), matrices (M, 3, 3)
    in pixel-centre coordinates -> the boxes enclosing the moved corners, (M, 4) xyxy."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack([torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
                           torch.stack([x1, y2], -1), torch.stack([x2, y2], -1)], 1)  # (M, 4, 2)
    moved = move_points(corners - 0.5, matrices) + 0.5
    return torch.cat([moved.amin(1), moved.amax(1)], -1)


def apply_box_rule(boxes: torch.Tensor, height: int, width: int, rule: BoxRuleParams
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (M, 4), keep (M,) bool) for boxes (M, 4) xyxy in an image of (height, width).

    A box stays when its part inside the image keeps at least ``min_visibility`` of its area,
    ``min_area`` px^2 and ``min_side`` px on both sides; boxes are clipped when ``rule.clip``.
    Nothing is selected here (on a GPU that would wait for the device): ``boxes[keep]`` are
    the boxes that stay.
    """
    inside = clip_boxes_to_image(boxes, (height, width))
    area, visible = box_area(boxes), box_area(inside)
    sides = inside[:, 2:] - inside[:, :2]
    keep = ((visible > 0) & (visible >= rule.min_visibility * area) & (visible >= rule.min_area)
            & (sides >= rule.min_side).all(-1))
    return (inside if rule.clip else boxes), keep


class BoxBatchAugment:
    """``(images (N, 3, H, W), targets)`` -> the same, augmented; ``targets`` is a list of N dicts
    with ``boxes`` (K, 4) xyxy (other keys pass through). Each augmented target gets ``keep``
    (K,) bool: the boxes the rule keeps (``boxes[keep]``, ``labels[keep]``). The losses take
    the mask as it is, so no step waits for the device to say how many boxes stayed."""

    def __init__(self, augment: PointAugment, rule: BoxRuleParams):
        self.augment, self.rule = augment, rule

    def __call__(self, batch: tuple[torch.Tensor, list[dict]]) -> tuple[torch.Tensor, list[dict]]:
        images, targets = batch
        out, matrices = self.augment(images)
        return out, self.move(targets, matrices, tuple(out.shape[-2:]))

    def move(self, targets: list[dict], matrices: torch.Tensor, size: tuple[int, int]) -> list[dict]:
        """``targets`` after the draws ``matrices`` (N, 3, 3), in output images of ``size`` (H, W)."""
        moved = []
        for target, matrix in zip(targets, matrices):
            boxes = move_boxes(target["boxes"].reshape(-1, 4), matrix.expand(len(target["boxes"]), 3, 3))
            boxes, keep = apply_box_rule(boxes, *size, self.rule)
            moved.append({**target, "boxes": boxes, "keep": keep})
        return moved

    def with_masks(self, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        """One draw over images and their targets' ``masks`` (K, H, W) (the augment preview's
        check), the boxes that stay selected: masks move with the geometry alone (nearest pixel)
        and leave with their boxes."""
        slots = max([len(t["boxes"]) for t in targets] + [1])
        masks = torch.zeros(len(targets), slots, *images.shape[-2:])
        for i, target in enumerate(targets):
            masks[i, : len(target["masks"])] = target["masks"].float()
        out, masks_out, matrices = self.augment.with_masks(images, masks)
        kept = []
        for target, moved_masks in zip(self.move(targets, matrices, tuple(out.shape[-2:])), masks_out):
            keep = target["keep"]
            kept.append({**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep],
                         "masks": moved_masks[: len(keep)][keep] > 0.5})
        return out, kept


def write_preview(augment: BoxBatchAugment, data_root: Path, count: int, seed: int, preview_png: Path) -> dict:
    """The first ``count`` training images, one draw from ``seed``: a grid (image with boxes |
    augmented image with boxes) written to ``preview_png``, and the check's numbers. Where the
    data has masks, each kept box is measured against its object's mask after the same draw."""
    from visionflow.tasks.boxes import box_misses_mask
    from visionflow.tasks.boxes.data import CocoDetectionDataset, detection_collate, load_split
    from visionflow.viz import draw_boxes, palette, save_grid

    coco = load_split(data_root, "train")
    has_masks = all("segmentation" in a for a in coco.annotations)
    dataset = CocoDetectionDataset(coco, None, with_masks=has_masks)
    images, targets = detection_collate([dataset[i] for i in range(min(count, len(dataset)))])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if has_masks:
            out, moved = augment.with_masks(images, targets)
        else:
            out, moved = augment((images, targets))
            moved = [{**t, "boxes": t["boxes"][t["keep"]], "labels": t["labels"][t["keep"]]} for t in moved]
    colours = palette(len(dataset.class_names) + 1)[1:]
    as_uint8 = lambda t: (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # noqa: E731
    rows, worst_miss = [], 0.0
    for image, target, after_image, after in zip(images, targets, out, moved):
        rows.append([draw_boxes(as_uint8(image), target["boxes"].numpy(), target["labels"].numpy() - 1, colours),
                     draw_boxes(as_uint8(after_image), after["boxes"].numpy(), after["labels"].numpy() - 1,
                                colours)])
        if has_masks:
            worst_miss = max(worst_miss, box_misses_mask(after["boxes"].numpy(), after["masks"].numpy()))
    if rows:
        save_grid(preview_png, rows, scale=max(1, 256 // max(rows[0][0].shape[:2])))
    return {"samples": len(rows), "augment_on": "device", "masks_checked": has_masks,
                  "max_box_miss_px": worst_miss, "boxes_before": sum(len(t["labels"]) for t in targets),
                  "boxes_kept": sum(len(t["labels"]) for t in moved)}
