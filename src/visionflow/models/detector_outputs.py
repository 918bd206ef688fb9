"""What every box model's exported module returns, and the helpers that build and read it.

Exported modules take images ``(N, 3, H, W)`` float in [0, 1] and return one tensor
``(N, D, 6 [+ M*M])``: per detection x1, y1, x2, y2 (pixels), score, class index 0..C-1
(the category's position in the dataset), sorted by score; rows past the detections found
are -1. Mask R-CNN adds M*M columns: the mask probabilities on an M x M grid over the box
(Mask R-CNN's native mask output; :func:`paste_box_masks` puts them into the image).

Pure torch + torchvision, no model: the box tasks' evaluation and predict read detections
through this module without importing any detector (so editing one detector touches only
the family that trains it).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # torchvision detectors' input normalisation
MASK_SIZE = 28  # Mask R-CNN's mask predictor output, M


def pad_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``(K, F)`` -> ``(count, F)``: cut or padded with -1."""
    # No size computed from K: a traced (ONNX) graph would keep the example's K as a constant.
    return torch.cat([rows, rows.new_full((count, rows.shape[1]), -1.0)])[:count]


def torchvision_detections(outputs: list[dict[str, torch.Tensor]], max_detections: int,
                           first_label: int = 1) -> torch.Tensor:
    """torchvision's per-image dicts (labels from ``first_label``) -> ``(N, max_detections, 6)``,
    class 0..C-1."""
    rows = [torch.cat([o["boxes"], o["scores"][:, None], (o["labels"] - first_label)[:, None].float()], 1)
            for o in outputs]
    return torch.stack([pad_rows(r, max_detections) for r in rows]) if rows else \
        torch.zeros(0, max_detections, 6)


def paste_box_masks(detections: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One image's exported rows ``(D, 6 + M*M)`` -> mask probabilities ``(D, height, width)``."""
    size = int(round((detections.shape[1] - 6) ** 0.5))
    masks = detections[:, 6:].reshape(-1, 1, size, size)
    return paste_masks_in_image(masks, detections[:, :4], (height, width))[:, 0]
