"""Score a detector on the test split through COCO results JSON written to disk.

Writes ``reports/<task>/eval/results.json`` (COCO results), reads it back and
scores it with :func:`visionflow.coco_eval.evaluate_coco` (``bbox``, and ``segm``
with masks): AP, AP50, AP75, AP small/medium/large, AR, per-class AP. PR curves
go to ``plots/<task>/eval/*.csv`` (DVC plots) and ``pr_<iou type>.png``; overlays
of predictions next to the ground truth to ``overlays.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from visionflow.coco_eval import CocoEvaluation, evaluate_coco
from visionflow.tasks.boxes.params import DetectionEvaluateParams
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.boxes.data import CocoDetectionDataset, detection_collate, load_split
from visionflow.tasks.boxes.results import (detections_to_results, read_results, results_without_masks,
                                                write_results)
from visionflow.viz import draw_boxes, overlay_instances, palette, save_grid, save_pr_curves

RESULTS_FILE = "results.json"


def evaluate_detection(module: Any, data_root: Path, out: EvalOutputs, device: torch.device,
                       params: DetectionEvaluateParams) -> dict[str, Any]:
    """Metrics: bbox stats at top level (``AP``, ``AP50``, ...); with masks ``mask_*`` and ``box_*``."""
    with_masks = module.with_masks
    gt_path = Path(data_root) / "test.json"
    dataset = CocoDetectionDataset(load_split(data_root, "test"))
    if dataset.class_names != module.class_names:
        raise ValueError(f"{gt_path} categories {dataset.class_names} differ from the model's "
                         f"{module.class_names}")
    category_ids = dataset.coco.category_ids
    module = module.to(device).eval()
    detector = module.detector
    loader = DataLoader(dataset, batch_size=params.batch_size, collate_fn=detection_collate)
    records = {record["id"]: record for record in dataset.coco.images}
    results: list[dict] = []
    shown: list[torch.Tensor] = []  # detections of the first images, for the overlays
    for images, targets in tqdm(loader, desc="evaluate detection", unit="batch"):
        with torch.no_grad():
            detections = detector(images.to(device)).cpu()
        for rows, target in zip(detections, targets):
            image_id = int(target["image_id"])
            record = records[image_id]
            results += detections_to_results(rows, image_id, category_ids, record["height"], record["width"],
                                             with_masks)
            shown.append(rows if len(shown) < params.overlays else rows[:0])

    results_path = write_results(out.reports_dir / RESULTS_FILE, results)
    on_disk = read_results(results_path)  # score what a user would get from the file
    kinds = [("bbox", results_without_masks(on_disk))] + ([("segm", on_disk)] if with_masks else [])
    evaluations = {kind: evaluate_coco(gt_path, res, kind, params.max_dets) for kind, res in kinds}

    metrics: dict[str, Any] = {}
    for kind, evaluation in evaluations.items():
        prefix = "" if not with_masks else ("mask_" if kind == "segm" else "box_")
        metrics.update({f"{prefix}{k}": round(v, 6) for k, v in evaluation.stats.items()})
        metrics[f"{prefix}per_class_AP"] = {k: round(v, 6) for k, v in evaluation.per_class_ap.items()}
        _write_plots(out, kind, evaluation)
    # maxDets show in the AR@<n> keys; AP is read at the largest
    metrics.update({"test_images": len(dataset), "detections": len(on_disk)})
    _write_overlays(out.reports_dir / "overlays.png", dataset, shown[: params.overlays],
                    module.class_names, params.overlay_score, with_masks)
    return metrics


def _write_plots(out: EvalOutputs, kind: str, evaluation: CocoEvaluation) -> None:
    """PR curves (mean over classes at IoU 0.5, 0.75, and per class at 0.5) and per-class AP."""
    out.plots_dir.mkdir(parents=True, exist_ok=True)
    recall = evaluation.recall_thresholds
    curves = {"all@0.50": evaluation.pr_curve(0.5), "all@0.75": evaluation.pr_curve(0.75)}
    for name in evaluation.category_names:
        curves[f"{name}@0.50"] = evaluation.pr_curve(0.5, name)
    with open(out.plots_dir / f"pr_{kind}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["recall", *(f"precision_{name}" for name in curves)])
        for r, value in enumerate(recall):
            writer.writerow([f"{value:.2f}", *(f"{c[r]:.6f}" if c[r] >= 0 else "" for c in curves.values())])
    with open(out.plots_dir / f"ap_per_class_{kind}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "AP"])
        for name, value in evaluation.per_class_ap.items():
            writer.writerow([name, f"{value:.6f}"])
    save_pr_curves(out.reports_dir / f"pr_{kind}.png", recall, curves,
                   f"{kind} precision-recall (AP {evaluation.stats['AP']:.3f})")


def _write_overlays(path: Path, dataset: CocoDetectionDataset, shown: list[torch.Tensor],
                    class_names: list[str], min_score: float, with_masks: bool) -> None:
    """Rows: image | ground truth | predictions with score >= ``min_score``."""
    from visionflow.models.detector_outputs import paste_box_masks

    if not shown:
        return
    colours = palette(len(class_names) + 1)[1:]
    truth = CocoDetectionDataset(dataset.coco, with_masks=with_masks)
    rows = []
    for index, detections in enumerate(shown):
        sample = truth.raw(index)
        image = sample["image"]
        height, width = image.shape[:2]
        gt_boxes = np.concatenate([sample["bboxes"][:, :2], sample["bboxes"][:, :2] + sample["bboxes"][:, 2:]], 1)
        gt_classes = sample["labels"] - 1
        kept = detections[detections[:, 4] >= min_score]
        gt_view, pred_view = image, image
        if with_masks:
            gt_view = overlay_instances(image, sample["masks"], gt_classes, colours)
            pred_masks = paste_box_masks(kept, height, width).numpy() > 0.5 if len(kept) else \
                np.zeros((0, height, width), bool)
            pred_view = overlay_instances(image, pred_masks, kept[:, 5].long().numpy(), colours)
        rows.append([image, draw_boxes(gt_view, gt_boxes, gt_classes, colours),
                     draw_boxes(pred_view, kept[:, :4].numpy(), kept[:, 5].long().numpy(), colours,
                                kept[:, 4].numpy())])
    save_grid(path, rows, scale=max(1, 256 // max(rows[0][0].shape[:2])),
              titles=["image", "ground truth", f"prediction (score >= {min_score:g})"])
