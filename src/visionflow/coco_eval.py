"""COCO evaluation (bbox, segm, keypoints) through pycocotools or faster-coco-eval.

pycocotools is the reference; faster-coco-eval is a drop-in with the same
matching and accumulation in C++ (identical numbers, several times faster), and
the default. Both fill the same ``precision[T, R, K, A, M]`` and
``recall[T, K, A, M]`` arrays; the summary numbers are read from those arrays
here, the way pycocotools' ``summarize()`` does, but at the largest ``maxDets``
given instead of a hard-coded 100 (pycocotools prints -1 for AP otherwise), so
images with more than 100 objects are scored correctly. As in pycocotools, -1
means "not applicable" (no ground truth in that area range, say).

Used by the evaluate stages and by ``visionflow coco-eval GT RESULTS``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

IouType = Literal["bbox", "segm", "keypoints"]
DEFAULT_MAX_DETS: dict[str, tuple[int, ...]] = {"bbox": (1, 10, 100), "segm": (1, 10, 100),
                                                "keypoints": (20,)}


class CocoResultsError(ValueError):
    """A results file that cannot be scored against its ground truth; names the result."""


@dataclass
class CocoEvaluation:
    """Summary numbers plus the raw arrays, for PR curves and per-class tables.

    precision: float (T, R, K, A, M), -1 where undefined; recall: float (T, K, A, M).
    T: IoU (or OKS) thresholds, R: 101 recall points, K: categories, A: area ranges
    (all, small, medium, large; keypoints: all, medium, large), M: ``max_dets``.
    """

    iou_type: str
    max_dets: tuple[int, ...]
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    category_names: list[str]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)

    def pr_curve(self, iou_threshold: float = 0.5, category: str | None = None) -> np.ndarray:
        """float (R,) precision at each recall point, area all, largest maxDets.

        Averaged over categories with ground truth unless ``category`` names one;
        -1 where undefined.
        """
        t = int(np.argmin(np.abs(self.iou_thresholds - iou_threshold)))
        curves = self.precision[t, :, :, 0, -1]  # (R, K)
        if category is not None:
            return curves[:, self.category_names.index(category)]
        valid = curves[0] > -1
        return curves[:, valid].mean(axis=1) if valid.any() else np.full(len(curves), -1.0)


def _load_json(source: str | Path | dict | list, what: str) -> Any:
    if isinstance(source, (dict, list)):
        return source
    try:
        return json.loads(Path(source).read_text())
    except OSError as exc:
        raise CocoResultsError(f"{source}: cannot read {what} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise CocoResultsError(f"{source}: {what} is not valid JSON: {exc}") from None


def _finite_numbers(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def check_ground_truth(gt: Any, source: str = "ground truth") -> None:
    """What scoring reads from the ground truth: lists of objects with ids, names and boxes."""
    if not isinstance(gt, dict):
        raise CocoResultsError(f"{source}: top level must be an object")
    for key, fields in (("images", ("id",)), ("categories", ("id", "name")),
                        ("annotations", ("id", "image_id", "category_id", "bbox"))):
        if not isinstance(gt.get(key), list):
            raise CocoResultsError(f"{source}: missing field '{key}' (a list)")
        for index, record in enumerate(gt[key]):
            where = f"{source}: {key} entry {index}"
            if not isinstance(record, dict):
                raise CocoResultsError(f"{where}: must be an object, not {type(record).__name__}")
            for field_name in fields:
                if field_name not in record:
                    raise CocoResultsError(f"{where}: missing field '{field_name}'")
            if key == "annotations" and (not _finite_numbers(record["bbox"]) or len(record["bbox"]) != 4):
                raise CocoResultsError(f"{source}: annotation id {record['id']}: field 'bbox' must be "
                                       f"4 finite numbers [x, y, width, height]")


def check_results(results: list, gt: dict, iou_type: str, source: str = "results") -> None:
    """Every result must name a known image and category and carry what ``iou_type`` scores."""
    if not isinstance(results, list):
        raise CocoResultsError(f"{source}: must be a JSON list of results")
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    needed = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    for index, result in enumerate(results):
        where = f"{source}: result {index}"
        if not isinstance(result, dict):
            raise CocoResultsError(f"{where}: must be an object, not {type(result).__name__}")
        for key in ("image_id", "category_id", "score", needed):
            if key not in result:
                raise CocoResultsError(f"{where}: missing field '{key}'")
        # pycocotools reads bbox wherever it is given (and scores a NaN box silently as a miss)
        if "bbox" in result and (not _finite_numbers(result["bbox"]) or len(result["bbox"]) != 4):
            raise CocoResultsError(f"{where}: field 'bbox' must be 4 finite numbers [x, y, width, height], "
                                   f"got {result['bbox']}")
        if "keypoints" in result and (not _finite_numbers(result["keypoints"]) or len(result["keypoints"]) % 3):
            raise CocoResultsError(f"{where}: field 'keypoints' must be finite x, y, score triples")
        if "segmentation" in result and not isinstance(result["segmentation"], (dict, list)):
            raise CocoResultsError(f"{where}: field 'segmentation' must be RLE or polygons")
        if result["image_id"] not in image_ids:
            raise CocoResultsError(f"{where}: image_id {result['image_id']} is not in the ground truth")
        if result["category_id"] not in category_ids:
            raise CocoResultsError(f"{where}: category_id {result['category_id']} is not in the ground truth")
        if not isinstance(result["score"], (int, float)) or not math.isfinite(result["score"]):
            raise CocoResultsError(f"{where}: field 'score' must be a finite number")


def _make_coco(coco_cls: type, dataset: dict) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(gt: str | Path | dict, results: str | Path | list, iou_type: IouType = "bbox",
                  max_dets: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                  backend: Literal["faster", "pycocotools"] = "faster") -> CocoEvaluation:
    """Score COCO ``results`` against ``gt`` (paths or parsed JSON).

    ``sigmas``: per-keypoint OKS sigmas (keypoints only; pycocotools' person
    sigmas when None, which fits only the 17 COCO person keypoints).
    """
    if iou_type not in DEFAULT_MAX_DETS:
        raise ValueError(f"iou_type must be one of {', '.join(DEFAULT_MAX_DETS)}, got {iou_type!r}")
    gt_data = copy.deepcopy(_load_json(gt, "ground truth"))
    results_data = copy.deepcopy(_load_json(results, "results"))
    check_ground_truth(gt_data, str(gt) if isinstance(gt, (str, Path)) else "ground truth")
    check_results(results_data, gt_data, iou_type, str(results) if isinstance(results, (str, Path)) else "results")
    for annotation in gt_data["annotations"]:  # pycocotools needs these; COCO files may omit them
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
    max_dets = tuple(sorted(max_dets or DEFAULT_MAX_DETS[iou_type]))

    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

    coco_gt = _make_coco(COCO, gt_data)
    if results_data:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results_data)
    else:  # pycocotools cannot load an empty list: score "no detections" explicitly
        coco_dt = _make_coco(COCO, {"images": gt_data["images"], "annotations": [],
                                    "categories": gt_data["categories"]})

    kwargs = {"print_function": lambda *a, **k: None} if backend == "faster" else {}
    evaluator = COCOeval(coco_gt, coco_dt, iou_type, **kwargs)
    evaluator.params.maxDets = list(max_dets)
    categories = gt_data["categories"]
    if iou_type == "keypoints":
        categories = [c for c in categories if c.get("keypoints")]
        if not categories:
            raise CocoResultsError("keypoint evaluation needs a category with 'keypoints' in the ground truth")
        # pycocotools fails across several categories unless catIds is set explicitly
        evaluator.params.catIds = [c["id"] for c in categories]
        if sigmas is not None:
            n_keypoints = len(categories[0]["keypoints"])
            if len(sigmas) != n_keypoints:
                raise CocoResultsError(f"{len(sigmas)} OKS sigmas for {n_keypoints} keypoints")
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    else:
        evaluator.params.catIds = [c["id"] for c in categories]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()

    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)
    recall = np.asarray(evaluator.eval["recall"], dtype=np.float64)
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    return CocoEvaluation(
        iou_type=iou_type, max_dets=max_dets,
        stats=_summary(precision, recall, np.asarray(params.iouThrs), list(params.areaRngLbl), max_dets),
        per_class_ap={name: _mean_valid(precision[:, :, k, 0, -1]) for k, name in enumerate(names)},
        category_names=names, iou_thresholds=np.asarray(params.iouThrs),
        recall_thresholds=np.asarray(params.recThrs), precision=precision, recall=recall)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summary(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray,
             area_labels: list[str], max_dets: tuple[int, ...]) -> dict[str, float]:
    """pycocotools' summarize() numbers, at the largest maxDets for AP and per-area AR."""
    def at_iou(threshold: float) -> int:
        return int(np.argmin(np.abs(iou_thresholds - threshold)))

    area = {label: i for i, label in enumerate(area_labels)}
    stats = {
        "AP": _mean_valid(precision[:, :, :, area["all"], -1]),
        "AP50": _mean_valid(precision[at_iou(0.5), :, :, area["all"], -1]),
        "AP75": _mean_valid(precision[at_iou(0.75), :, :, area["all"], -1]),
    }
    for label in ("small", "medium", "large"):
        if label in area:
            stats[f"AP_{label}"] = _mean_valid(precision[:, :, :, area[label], -1])
    for m, max_det in enumerate(max_dets):
        stats[f"AR@{max_det}"] = _mean_valid(recall[:, :, area["all"], m])
    stats["AR50"] = _mean_valid(recall[at_iou(0.5), :, area["all"], -1])
    stats["AR75"] = _mean_valid(recall[at_iou(0.75), :, area["all"], -1])
    for label in ("small", "medium", "large"):
        if label in area:
            stats[f"AR_{label}"] = _mean_valid(recall[:, :, area[label], -1])
    return stats
