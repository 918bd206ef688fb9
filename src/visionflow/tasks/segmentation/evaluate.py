"""Score a segmentation model on the test split: per-class IoU, mIoU, pixel accuracy."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from visionflow.config import EvaluateParams
from visionflow.data.batching import pad_collate
from visionflow.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.segmentation.data import CocoSemanticDataset, load_split
from visionflow.viz import overlay_labels, palette, save_confusion_matrix, save_grid


def evaluate_segmentation(module: Any, data_root: Path, out: EvalOutputs, device: torch.device,
                          params: EvaluateParams) -> dict[str, Any]:
    dataset = CocoSemanticDataset(load_split(data_root, "test"))
    class_names = module.class_names
    if dataset.class_names != class_names:
        raise ValueError(f"{data_root}/test.json categories {dataset.class_names[1:]} differ from "
                         f"the model's {class_names[1:]}")
    module = module.to(device).eval()
    loader = DataLoader(dataset, batch_size=params.batch_size, collate_fn=pad_collate)
    confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)
    shown: list[tuple[np.ndarray, np.ndarray]] = []  # (labels, prediction) for the overlays
    for images, labels in tqdm(loader, desc="evaluate segmentation", unit="batch"):
        prediction = module.predict_labels(images.to(device)).cpu()
        confusion += confusion_matrix(prediction, labels, len(class_names))
        for i in range(min(len(images), params.overlays - len(shown))):
            shown.append((labels[i].numpy(), prediction[i].numpy()))

    ious = iou_per_class(confusion)
    metrics = {
        "mIoU": mean_iou(confusion),
        "pixel_accuracy": pixel_accuracy(confusion),
        "iou": {name: (None if torch.isnan(v) else float(v)) for name, v in zip(class_names, ious)},
        "test_images": len(dataset),
    }

    out.reports_dir.mkdir(parents=True, exist_ok=True)
    save_confusion_matrix(out.reports_dir / "confusion.png", confusion.numpy(), class_names)
    colours = palette(len(class_names))
    rows = []
    for index, (labels, prediction) in enumerate(shown):
        image, _ = dataset.raw(index)
        labels = labels[: image.shape[0], : image.shape[1]]
        prediction = prediction[: image.shape[0], : image.shape[1]]
        errors = np.where(((prediction != labels) & (labels != 255))[..., None], [255, 0, 0], [0, 0, 0])
        rows.append([image, overlay_labels(image, labels, colours),
                     overlay_labels(image, prediction, colours), errors.astype(np.uint8)])
    if rows:
        save_grid(out.reports_dir / "overlays.png", rows, scale=max(1, 192 // max(rows[0][0].shape[:2])),
                  titles=["image", "ground truth", "prediction", "errors (red)"])

    out.plots_dir.mkdir(parents=True, exist_ok=True)
    with open(out.plots_dir / "iou.csv", "w", newline="") as f:  # a bar chart in `dvc plots`
        writer = csv.writer(f)
        writer.writerow(["class", "iou"])
        for name, value in metrics["iou"].items():
            writer.writerow([name, "" if value is None else f"{value:.6f}"])
    return metrics
