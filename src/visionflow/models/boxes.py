"""Box formats and overlap: thin, shape-checked wrappers over ``torchvision.ops``.

One format inside the code: ``xyxy`` corners in pixels, float32 ``(K, 4)``.
COCO files hold ``xywh`` (top-left corner, width, height); convert at the edge.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert
from torchvision.ops import box_iou as _box_iou


def _check(boxes: torch.Tensor, name: str) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be (K, 4), got {tuple(boxes.shape)}")


def coco_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO ``(K, 4)`` x, y, width, height -> ``(K, 4)`` x1, y1, x2, y2 (pixels)."""
    _check(boxes, "boxes")
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_coco(boxes: torch.Tensor) -> torch.Tensor:
    """``(K, 4)`` x1, y1, x2, y2 -> COCO ``(K, 4)`` x, y, width, height (pixels)."""
    _check(boxes, "boxes")
    return box_convert(boxes, "xyxy", "xywh")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: boxes1 ``(N, 4)``, boxes2 ``(M, 4)`` xyxy -> ``(N, M)`` in [0, 1]."""
    _check(boxes1, "boxes1")
    _check(boxes2, "boxes2")
    return _box_iou(boxes1, boxes2)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy ``(..., 4)`` clipped to an image of ``height`` x ``width`` pixels."""
    limits = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``(K, 4)`` of bool/uint8 masks ``(K, H, W)``; (0, 0, 0, 0) for an empty mask.

    ``x2, y2`` are one past the last pixel, so a single pixel at (x, y) gives (x, y, x + 1, y + 1),
    the convention of COCO's ``bbox`` of a mask.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got {tuple(masks.shape)}")
    masks = masks.bool()
    rows, cols = masks.any(2), masks.any(1)  # (K, H), (K, W)
    height, width = masks.shape[1:]
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    big = max(height, width) + 1
    x1 = torch.where(cols, xs, big).amin(1)
    y1 = torch.where(rows, ys, big).amin(1)
    x2 = torch.where(cols, xs + 1, 0).amax(1)
    y2 = torch.where(rows, ys + 1, 0).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes))
