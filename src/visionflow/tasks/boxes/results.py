"""Detections as COCO results: what a detector's tensor output becomes on disk.

A detector's output rows are ``(D, 6 [+ M*M])`` = x1, y1, x2, y2 px, score, class
index 0..C-1 (and box-relative mask probabilities), -1 rows for padding (see
``visionflow.models.detector_outputs``). COCO results are ``{"image_id", "category_id",
"bbox": [x, y, w, h], "score"}`` plus ``"segmentation"`` (RLE) for masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from visionflow.data.coco import encode_mask

MASK_THRESHOLD = 0.5  # mask probability above which a pixel belongs to the object


def detections_to_results(detections: torch.Tensor, image_id: int, category_ids: list[int],
                          height: int, width: int, with_masks: bool = False) -> list[dict]:
    """One image's rows -> COCO result dicts (padding rows dropped).

    ``category_ids[c]`` is the COCO id of class index c. With ``with_masks`` the
    rows' mask columns are pasted into a ``height`` x ``width`` image and RLE-encoded.
    """
    from visionflow.models.boxes import xyxy_to_coco
    from visionflow.models.detector_outputs import paste_box_masks

    detections = detections[detections[:, 4] >= 0].float().cpu()
    if len(detections) == 0:
        return []
    boxes = xyxy_to_coco(detections[:, :4]).numpy()
    masks = paste_box_masks(detections, height, width).numpy() > MASK_THRESHOLD if with_masks else None
    results = []
    for k, row in enumerate(detections.numpy()):
        result = {"image_id": int(image_id), "category_id": int(category_ids[int(row[5])]),
                  "bbox": [round(float(v), 2) for v in boxes[k]], "score": round(float(row[4]), 5)}
        if masks is not None:
            result["segmentation"] = encode_mask(masks[k])
        results.append(result)
    return results


def write_results(path: Path, results: list[dict]) -> Path:
    """COCO results JSON (a list), one result per line for readable diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in results) + "]\n")
    return path


def read_results(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def results_without_masks(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]

