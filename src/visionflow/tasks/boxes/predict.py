"""Detect objects in user images with an exported model: COCO results JSON and overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from visionflow.data.batching import image_to_tensor
from visionflow.data.images import read_rgb, write_png
from visionflow.tasks.base import output_stems
from visionflow.tasks.boxes.results import detections_to_results, write_results
from visionflow.viz import draw_boxes, overlay_instances, palette

OVERLAY_SCORE = 0.3


@torch.no_grad()
def detect_image(model: torch.nn.Module, image: np.ndarray, device: torch.device
                 ) -> tuple[torch.Tensor, list[int]]:
    """uint8 RGB (H, W, 3) -> the model's rows ``(D, 6 [+ M*M])`` on the CPU and the COCO category id
    of each class index (the model's ``category_ids`` when it carries them, else class index + 1)."""
    rows = model(image_to_tensor(image)[None].to(device))[0].cpu()
    num_classes = int(rows[:, 5].max().item()) + 1 if len(rows) else 1
    return rows, list(getattr(model, "category_ids", None) or range(1, max(num_classes, 1) + 1))


def answer_detections(model: torch.nn.Module, image: np.ndarray, device: torch.device,
                      with_masks: bool = False) -> dict:
    """The served answer: every detection (padding dropped) as box xyxy px, score, class index, name and
    COCO category id, with ``with_masks`` its mask as COCO RLE; numbers rounded as in ``results.json``."""
    height, width = image.shape[:2]
    rows, category_ids = detect_image(model, image, device)
    results = detections_to_results(rows, 0, category_ids, height, width, with_masks)
    kept = rows[rows[:, 4] >= 0].float()
    names = list(getattr(model, "class_names", None) or [])
    detections = []
    for row, result in zip(kept.numpy(), results):
        index = int(row[5])
        detection = {"box": [round(float(v), 2) for v in row[:4]], "score": result["score"],
                     "class_index": index, "class_name": names[index] if index < len(names) else f"class_{index}",
                     "category_id": result["category_id"]}
        if with_masks:
            detection["mask"] = result["segmentation"]
        detections.append(detection)
    return {"height": int(height), "width": int(width), "detections": detections}


@torch.no_grad()
def predict_detections(model: torch.nn.Module, images: list[Path], out_dir: Path, device: torch.device,
                       with_masks: bool = False) -> list[Path]:
    """Writes ``results.json`` (COCO results; image ids index ``images.json``), ``images.json``
    (id, file_name, width, height) and ``<stem>_overlay.png`` (detections scoring >= 0.3; stems
    made distinct by :func:`~visionflow.tasks.base.output_stems`).

    ``model``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, D, 6 [+ M*M])`` (``visionflow.models.detector_outputs``).
    Category ids come from the model's ``category_ids`` when it carries them, else class index + 1.
    """
    from visionflow.models.detector_outputs import paste_box_masks

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    results, records, written = [], [], []
    for (image_id, path), stem in zip(enumerate(images, start=1), output_stems(images)):
        image = read_rgb(path)
        height, width = image.shape[:2]
        rows, category_ids = detect_image(model, image, device)
        results += detections_to_results(rows, image_id, category_ids, height, width, with_masks)
        records.append({"id": image_id, "file_name": str(path), "width": width, "height": height})
        shown = rows[rows[:, 4] >= OVERLAY_SCORE]
        classes = shown[:, 5].long().numpy()
        colours = palette(len(category_ids) + 1)[1:]
        picture = image
        if with_masks and len(shown):
            picture = overlay_instances(image, paste_box_masks(shown, height, width).numpy() > 0.5, classes,
                                        colours)
        overlay = out_dir / f"{stem}_overlay.png"
        write_png(overlay, draw_boxes(picture, shown[:, :4].numpy(), classes, colours, shown[:, 4].numpy()))
        written.append(overlay)
    written.insert(0, write_results(out_dir / "results.json", results))
    index = out_dir / "images.json"
    index.write_text(json.dumps(records, indent=1) + "\n")
    written.insert(1, index)
    return written

