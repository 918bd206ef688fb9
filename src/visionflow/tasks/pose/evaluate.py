"""Score a pose model on the test split: OKS AP/AR (COCO), PCK, per-keypoint error, overlays.

Boxes come from the ground truth or from the detection family's model
(``pose.evaluate.boxes``). Every box is cropped, its keypoints predicted and
mapped back to image pixels, and written as a COCO keypoints results file that
``coco_eval.evaluate_coco`` scores with the declared OKS sigmas (the same file
``visionflow coco-eval --iou-type keypoints`` takes).

PCK@t: share of labelled ground-truth keypoints within ``t * max(w, h)`` of the
truth, where w, h is the ground-truth box. With detected boxes each ground
truth is paired with the best-OKS unclaimed prediction in its image (in score
order, as COCO matches); ground truth left unpaired counts as missed in PCK.
"""

from __future__ import annotations

import copy
import csv
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from visionflow.coco_eval import evaluate_coco
from visionflow.config import ConfigError
from visionflow.tasks.pose.params import PoseEvaluateParams
from visionflow.data.batching import image_to_tensor
from visionflow.data.coco import dump_json
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.pose.data import (CocoPoseDataset, CropGeometry, KeypointSchema, crop_image,
                                        crop_transform, keypoint_schema, load_split)
from visionflow.tasks.pose.metrics import (COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, keypoint_distances,
                                           oks_matrix, pck)
from visionflow.viz import draw_keypoints, save_grid

DEFAULT_SIGMA = 0.05
RESULTS_FILE = "keypoint_results.json"


def resolve_sigmas(sigmas: Sequence[float] | dict[str, float] | None, names: Sequence[str],
                   key: str = "pose.evaluate.sigmas") -> np.ndarray:
    """float (K,) OKS sigmas in keypoint order from params; a default (with a warning) when None."""
    names = list(names)
    if sigmas is None:
        if tuple(names) == COCO_PERSON_KEYPOINTS:
            warnings.warn(f"{key} is not set: using COCO's person sigmas (the skeleton is COCO's 17 "
                          f"person keypoints)", stacklevel=2)
            return np.array(COCO_PERSON_SIGMAS)
        warnings.warn(f"{key} is not set: using a uniform {DEFAULT_SIGMA} for all {len(names)} keypoints; "
                      f"declare per-keypoint sigmas for meaningful OKS", stacklevel=2)
        return np.full(len(names), DEFAULT_SIGMA)
    if isinstance(sigmas, dict):
        missing = [n for n in names if n not in sigmas]
        unknown = [n for n in sigmas if n not in names]
        if missing or unknown:
            raise ConfigError(f"{key}: " + "; ".join(
                part for part in (f"no sigma for {', '.join(missing)}" if missing else "",
                                  f"unknown keypoints {', '.join(unknown)}" if unknown else "") if part)
                + f" (the dataset's keypoints: {', '.join(names)})")
        return np.array([sigmas[n] for n in names], np.float64)
    if len(sigmas) != len(names):
        raise ConfigError(f"{key}: {len(sigmas)} sigmas for {len(names)} keypoints ({', '.join(names)})")
    return np.asarray(sigmas, np.float64)


@dataclass
class Instance:
    """One box to predict keypoints in: image id, COCO box, box score, its ground truth (or None)."""

    image_id: int
    bbox: list[float]
    score: float
    annotation: dict | None = None


def ground_truth_boxes(dataset: CocoPoseDataset) -> list[Instance]:
    return [Instance(a["image_id"], list(a["bbox"]), 1.0, a) for a in dataset.instances]


def detection_boxes(dataset: CocoPoseDataset, params: PoseEvaluateParams, project_root: Path,
                    data_root: Path, device: torch.device) -> list[Instance]:
    """Boxes from the detection family's best checkpoint (``models/detection/best.ckpt``).

    Its exported module takes images float (N, 3, H, W) in [0, 1] and returns detections
    float (N, max_det, 6) = x1, y1, x2, y2 (pixels), score, class, padded with -1.
    """
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task

    if len(dataset.coco.categories) > 1 and params.detection_classes is None:
        warnings.warn("pose.evaluate.detection_classes is not set: every detected box is taken as a "
                      f"{dataset.schema.category_name!r}", stacklevel=2)
    try:
        family = get_task("detection")
    except KeyError:
        raise FileNotFoundError("pose.evaluate.boxes is 'detection' but no 'detection' task family is "
                                "registered; set pose.evaluate.boxes: ground_truth") from None
    checkpoint = TaskPaths("detection", project_root).best_checkpoint
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: pose.evaluate.boxes is 'detection' but the detection "
                                f"model is missing; run `visionflow train --task detection` first "
                                f"(or set pose.evaluate.boxes: ground_truth)")
    detector = family.export(family.load_module(checkpoint), data_root).module.to(device).eval()
    instances = []
    for image_id in tqdm(sorted(dataset.images), desc="detect boxes", unit="img"):
        with torch.no_grad():
            rows = detector(image_to_tensor(dataset.image(image_id))[None].to(device))[0].cpu().numpy()
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise ValueError(f"{checkpoint}: detection output per image must be (max_det, 6), "
                             f"got {rows.shape}")
        for x1, y1, x2, y2, score, cls in rows:
            if cls < 0 or score < params.detection_min_score:
                continue
            if params.detection_classes is not None and int(cls) not in params.detection_classes:
                continue
            instances.append(Instance(image_id, [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                      float(score)))
    return instances


@torch.no_grad()
def predict_instances(module: Any, dataset: CocoPoseDataset, instances: list[Instance],
                      geometry: CropGeometry, batch_size: int, device: torch.device) -> np.ndarray:
    """float (N, K, 3): x, y in image pixels and keypoint scores, one row per instance."""
    out = []
    for start in tqdm(range(0, len(instances), batch_size), desc="evaluate pose", unit="batch"):
        chunk = instances[start: start + batch_size]
        maps = [crop_transform(instance.bbox, geometry) for instance in chunk]
        crops = torch.stack([image_to_tensor(crop_image(dataset.image(i.image_id), *m, geometry))
                             for i, m in zip(chunk, maps)])
        keypoints = module.predict_keypoints(crops.to(device)).float().cpu().numpy()
        for row, (x0, y0, scale) in zip(keypoints, maps):
            row[:, 0] = row[:, 0] / scale + x0
            row[:, 1] = row[:, 1] / scale + y0
            out.append(row)
    return np.stack(out) if out else np.zeros((0, dataset.schema.num_keypoints, 3), np.float32)


def instance_score(box_score: float, keypoint_scores: np.ndarray, threshold: float) -> float:
    """Box score times the mean score of keypoints above ``threshold`` (0 if none is)."""
    confident = keypoint_scores[keypoint_scores > threshold]
    return float(box_score * confident.mean()) if confident.size else 0.0


def results_json(instances: list[Instance], keypoints: np.ndarray, category_id: int,
                 threshold: float) -> list[dict]:
    """COCO keypoint results: ``keypoints`` [x, y, score] * K, instance ``score``, and the ``bbox`` used."""
    return [{"image_id": int(instance.image_id), "category_id": int(category_id),
             "keypoints": [round(float(v), 3) for v in row.ravel()],
             "score": round(instance_score(instance.score, row[:, 2], threshold), 6),
             "bbox": [round(float(v), 3) for v in instance.bbox]}
            for instance, row in zip(instances, keypoints)]


def pair_with_ground_truth(dataset: CocoPoseDataset, instances: list[Instance], keypoints: np.ndarray,
                           sigmas: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """(ground truths with labelled keypoints, predictions float (G, K, 3) paired with them; NaN = none).

    Ground-truth boxes pair by construction; detections greedily by OKS in score order.
    """
    truths = [a for a in dataset.instances if a["num_keypoints"] > 0] if all(
        "num_keypoints" in a for a in dataset.instances) else [
        a for a in dataset.instances if any(v > 0 for v in a["keypoints"][2::3])]
    paired = np.full((len(truths), dataset.schema.num_keypoints, 3), np.nan)
    row_of = {id(a): g for g, a in enumerate(truths)}
    if all(instance.annotation is not None for instance in instances):
        for instance, row in zip(instances, keypoints):
            if id(instance.annotation) in row_of:
                paired[row_of[id(instance.annotation)]] = row
        return truths, paired
    by_image: dict[int, list[int]] = defaultdict(list)
    for d, instance in enumerate(instances):
        by_image[instance.image_id].append(d)
    truths_by_image: dict[int, list[int]] = defaultdict(list)
    for g, a in enumerate(truths):
        truths_by_image[a["image_id"]].append(g)
    for image_id, gts in truths_by_image.items():
        dets = sorted(by_image.get(image_id, []), key=lambda d: -instances[d].score)
        if not dets:
            continue
        gt = np.array([np.reshape(truths[g]["keypoints"], (-1, 3)) for g in gts], np.float64)
        areas = np.array([truths[g].get("area", truths[g]["bbox"][2] * truths[g]["bbox"][3]) for g in gts])
        similarity = oks_matrix(keypoints[dets], gt, areas, sigmas)
        claimed: set[int] = set()
        for row, d in enumerate(dets):
            options = [(similarity[row, j], j) for j in range(len(gts)) if j not in claimed]
            if options:
                best, j = max(options)
                if best > 0:
                    claimed.add(j)
                    paired[gts[j]] = keypoints[d]
    return truths, paired


def evaluate_pose(module: Any, data_root: Path, out: EvalOutputs, device: torch.device,
                  params: PoseEvaluateParams) -> dict[str, Any]:
    coco = load_split(data_root, "test")
    schema: KeypointSchema = module.schema
    test_schema = keypoint_schema(coco, flip_pairs=None)
    if test_schema.names != schema.names:
        raise ValueError(f"{coco.path}: keypoints {list(test_schema.names)} differ from the model's "
                         f"{list(schema.names)}")
    sigmas = resolve_sigmas(params.sigmas, schema.names)
    model = module.model_params
    geometry = CropGeometry(model.crop_height, model.crop_width, model.box_margin)
    dataset = CocoPoseDataset(coco, test_schema, geometry, labelled_only=False)
    module = module.to(device).eval()

    if params.boxes == "ground_truth":
        instances = ground_truth_boxes(dataset)
    else:
        instances = detection_boxes(dataset, params, out.project_root, data_root, device)
    keypoints = predict_instances(module, dataset, instances, geometry, params.batch_size, device)

    out.reports_dir.mkdir(parents=True, exist_ok=True)
    results_path = out.reports_dir / RESULTS_FILE
    dump_json(results_path, results_json(instances, keypoints, schema.category_id,
                                         params.keypoint_score_threshold))
    gt = copy.deepcopy(json.loads(coco.path.read_text()))
    for annotation in gt["annotations"]:  # COCO keypoint evaluation reads num_keypoints
        if "keypoints" in annotation and "num_keypoints" not in annotation:
            annotation["num_keypoints"] = sum(1 for v in annotation["keypoints"][2::3] if v > 0)
    evaluation = evaluate_coco(gt, results_path, "keypoints", max_dets=[params.max_dets],
                               sigmas=sigmas.tolist())

    truths, paired = pair_with_ground_truth(dataset, instances, keypoints, sigmas)
    gt_keypoints = np.array([np.reshape(a["keypoints"], (-1, 3)) for a in truths], np.float64).reshape(
        -1, schema.num_keypoints, 3)
    distances = keypoint_distances(np.nan_to_num(paired, nan=1e9), gt_keypoints)
    box_size = np.array([max(a["bbox"][2], a["bbox"][3]) for a in truths], np.float64)
    found = ~np.isnan(paired[:, 0, 0])
    stats = evaluation.stats
    metrics: dict[str, Any] = {
        "AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"],
        "AR": stats[f"AR@{params.max_dets}"], "AR50": stats["AR50"], "AR75": stats["AR75"],
        "AP_medium": stats["AP_medium"], "AP_large": stats["AP_large"],
    }
    for threshold in params.pck_thresholds:
        metrics[f"PCK@{threshold:g}"] = pck(distances, box_size, threshold)
    matched = distances[found]
    metrics["mean_error_px"] = float(np.nanmean(matched)) if np.isfinite(matched).any() else None
    metrics["error_px"] = {name: (float(np.nanmean(matched[:, k])) if (~np.isnan(matched[:, k])).any()
                                  else None) for k, name in enumerate(schema.names)}
    metrics.update({
        "boxes": params.boxes, "pck_normaliser": "max(w, h) of the ground-truth box",
        "test_images": len(coco.images), "test_instances": len(truths),
        "unmatched_instances": int((~found).sum()), "predicted_instances": len(instances),
        "sigmas": dict(zip(schema.names, sigmas.round(4).tolist())),
    })

    _write_plots(out.plots_dir, schema.names, matched, box_size[found], params.pck_thresholds, evaluation)
    _write_overlays(out.reports_dir / "overlays.png", dataset, schema, instances, keypoints, params)
    return metrics


def _write_plots(plots_dir: Path, names: Sequence[str], distances: np.ndarray, box_size: np.ndarray,
                 thresholds: Sequence[float], evaluation: Any) -> None:
    plots_dir.mkdir(parents=True, exist_ok=True)
    with open(plots_dir / "per_keypoint.csv", "w", newline="") as f:  # bar charts in `dvc plots`
        writer = csv.writer(f)
        writer.writerow(["keypoint", "error_px", *(f"PCK@{t:g}" for t in thresholds)])
        for k, name in enumerate(names):
            column = distances[:, k:k + 1]
            labelled = ~np.isnan(column[:, 0])
            error = f"{np.nanmean(column):.4f}" if labelled.any() else ""
            writer.writerow([name, error, *(f"{pck(column, box_size, t):.4f}" if labelled.any() else ""
                                            for t in thresholds)])
    with open(plots_dir / "pr.csv", "w", newline="") as f:  # precision-recall at OKS 0.5 and 0.75
        writer = csv.writer(f)
        writer.writerow(["recall", "precision_oks50", "precision_oks75"])
        for recall, p50, p75 in zip(evaluation.recall_thresholds, evaluation.pr_curve(0.5),
                                    evaluation.pr_curve(0.75)):
            writer.writerow([f"{recall:.2f}", f"{max(p50, 0):.4f}", f"{max(p75, 0):.4f}"])


def _write_overlays(path: Path, dataset: CocoPoseDataset, schema: KeypointSchema, instances: list[Instance],
                    keypoints: np.ndarray, params: PoseEvaluateParams) -> None:
    """Columns: image | ground truth (hollow dots: occluded) | prediction.

    Dots: the first keypoint of each mirror pair green, its partner magenta, unpaired ones white.
    """
    image_ids = sorted(dataset.images)[: params.overlays]
    rows = []
    for image_id in image_ids:
        image = dataset.image(image_id)
        scale = max(1, 256 // max(image.shape[:2]))
        truth = predicted = np.kron(image, np.ones((scale, scale, 1), np.uint8))
        for annotation in dataset.coco.annotations_of(image_id):
            if annotation["category_id"] == schema.category_id and "keypoints" in annotation:
                truth = draw_keypoints(truth, _scaled(np.reshape(annotation["keypoints"], (-1, 3)), scale),
                                       schema.skeleton, flip_index=schema.flip_index, visibility=True)
        for instance, row in zip(instances, keypoints):
            if instance.image_id == image_id:
                predicted = draw_keypoints(predicted, _scaled(row, scale), schema.skeleton,
                                           min_score=params.keypoint_score_threshold,
                                           flip_index=schema.flip_index)
        rows.append([np.kron(image, np.ones((scale, scale, 1), np.uint8)), truth, predicted])
    if rows:
        save_grid(path, rows, titles=["image", "ground truth", "prediction"])


def _scaled(keypoints: np.ndarray, scale: int) -> np.ndarray:
    out = np.asarray(keypoints, np.float64).copy()
    out[:, :2] = (out[:, :2] + 0.5) * scale - 0.5
    return out
