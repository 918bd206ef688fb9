"""Our COCO evaluation against pycocotools run directly, and against hand calculations."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionflow.coco_eval import CocoResultsError, evaluate_coco
from visionflow.data.coco import encode_mask

PYCOCO_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR@1", "AR@10", "AR@100", "AR_small", "AR_medium", "AR_large"]
KEYPOINT_NAMES = ["AP", "AP50", "AP75", "AP_medium", "AP_large", "AR@20", "AR50", "AR75", "AR_medium",
                  "AR_large"]


def random_dataset(seed: int = 0, n_images: int = 12, keypoints: int = 0):
    """Ground truth with boxes, masks (and keypoints), and noisy results with false positives."""
    rng = np.random.default_rng(seed)
    size = 96
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    if keypoints:
        for c in categories:
            c["keypoints"], c["skeleton"] = [f"k{j}" for j in range(keypoints)], []
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": size, "height": size})
        for _ in range(rng.integers(0, 6)):  # some images stay empty
            w, h = rng.uniform(4, 50, size=2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            mask = np.zeros((size, size), bool)
            mask[int(y):int(y + h), int(x):int(x + w)] = True
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 4)),
                   "bbox": [x, y, w, h], "area": float(mask.sum()), "iscrowd": int(rng.random() < 0.05),
                   "segmentation": encode_mask(mask)}
            if keypoints:
                pts = np.stack([rng.uniform(x, x + w, keypoints), rng.uniform(y, y + h, keypoints),
                                rng.integers(0, 3, keypoints)], 1)
                ann["keypoints"] = pts.ravel().tolist()
                ann["num_keypoints"] = int((pts[:, 2] > 0).sum())
            annotations.append(ann)
            if rng.random() < 0.85:  # a detection of it, jittered
                jitter = rng.normal(0, 3, size=4)
                dx, dy = int(round(jitter[0])), int(round(jitter[1]))
                det_mask = np.roll(mask, (dy, dx), axis=(0, 1))
                result = {"image_id": image_id, "score": float(rng.uniform(0.3, 1)),
                          "category_id": ann["category_id"] if rng.random() < 0.9 else int(rng.integers(1, 4)),
                          "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])],
                          "segmentation": encode_mask(det_mask)}
                if keypoints:
                    det = np.array(ann["keypoints"], float).reshape(-1, 3)
                    det[:, :2] += rng.normal(0, 2, (keypoints, 2))
                    det[:, 2] = 1
                    result["keypoints"] = det.ravel().tolist()
                results.append(result)
        for _ in range(rng.integers(0, 2)):  # false positives, also on empty images
            x, y = rng.uniform(0, size - 20, 2)
            mask = np.zeros((size, size), bool)
            mask[int(y):int(y) + 15, int(x):int(x) + 15] = True
            fp = {"image_id": image_id, "category_id": int(rng.integers(1, 4)), "score": float(rng.uniform(0, 0.6)),
                  "bbox": [x, y, 15.0, 15.0], "segmentation": encode_mask(mask)}
            if keypoints:
                fp["keypoints"] = np.stack([rng.uniform(x, x + 15, keypoints), rng.uniform(y, y + 15, keypoints),
                                            np.ones(keypoints)], 1).ravel().tolist()
            results.append(fp)
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_stats(gt: dict, results: list, iou_type: str, sigmas=None) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        dt = coco.loadRes(json.loads(json.dumps(results)))
        evaluator = COCOeval(coco, dt, iou_type)
        if iou_type == "keypoints":
            evaluator.params.catIds = [c["id"] for c in gt["categories"]]
            if sigmas is not None:
                evaluator.params.kpt_oks_sigmas = np.array(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_pycocotools_run_directly(iou_type, backend, tmp_path):
    gt, results = random_dataset(seed=1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    ours = evaluate_coco(tmp_path / "gt.json", tmp_path / "results.json", iou_type, backend=backend)
    reference = pycocotools_stats(gt, results, iou_type)
    assert [ours.stats[name] for name in PYCOCO_NAMES] == pytest.approx(reference, abs=1e-12)
    assert 0 < ours.stats["AP"] < 1


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_keypoints_equal_pycocotools_with_custom_sigmas(backend):
    gt, results = random_dataset(seed=2, keypoints=5)
    sigmas = [0.05, 0.08, 0.1, 0.06, 0.07]
    ours = evaluate_coco(gt, results, "keypoints", sigmas=sigmas, backend=backend)
    reference = pycocotools_stats(gt, results, "keypoints", sigmas=sigmas)
    assert [ours.stats[name] for name in KEYPOINT_NAMES] == pytest.approx(reference, abs=1e-12)


def one_box_gt(boxes, size=100):
    return {"images": [{"id": 1, "file_name": "a.png", "width": size, "height": size}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for i, b in enumerate(boxes)],
            "categories": [{"id": 1, "name": "thing"}]}


def test_perfect_predictions_score_one():
    gt, _ = random_dataset(seed=3)
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt["annotations"]]
    ours = evaluate_coco(gt, perfect, "bbox")
    assert ours.stats["AP"] == 1.0 and ours.stats["AP50"] == 1.0 and ours.stats["AR@100"] == 1.0


def test_shifted_box_hand_calculation():
    # A 10x10 box detected 2 px to the right: IoU = 80 / 120 = 2/3. It matches at the IoU
    # thresholds 0.50, 0.55, 0.60, 0.65 (4 of 10) with precision 1, and at no higher one.
    gt = one_box_gt([[20.0, 20.0, 10.0, 10.0]])
    ours = evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [22.0, 20.0, 10.0, 10.0],
                               "score": 0.9}], "bbox")
    assert ours.stats["AP"] == pytest.approx(0.4)
    assert ours.stats["AP50"] == 1.0 and ours.stats["AP75"] == 0.0


def test_more_than_100_objects_with_max_dets_from_params():
    boxes = [[float(x * 10), float(y * 10), 8.0, 8.0] for x in range(15) for y in range(10)]  # 150
    gt = one_box_gt(boxes, size=160)
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - i / 1000}
               for i, b in enumerate(boxes)]
    capped = evaluate_coco(gt, results, "bbox")
    assert capped.stats["AR@100"] == pytest.approx(100 / 150)
    wide = evaluate_coco(gt, results, "bbox", max_dets=[1, 10, 300])
    assert wide.stats["AP"] == 1.0 and wide.stats["AR@300"] == 1.0 and wide.stats["AR@1"] == pytest.approx(1 / 150)


def test_no_results_and_results_on_empty_images():
    gt = one_box_gt([[20.0, 20.0, 10.0, 10.0]])
    assert evaluate_coco(gt, [], "bbox").stats["AP"] == 0.0
    gt["images"].append({"id": 2, "file_name": "b.png", "width": 100, "height": 100})
    hit = {"image_id": 1, "category_id": 1, "bbox": [20.0, 20.0, 10.0, 10.0], "score": 0.5}
    false_alarm = {"image_id": 2, "category_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0], "score": 0.9}
    # The higher-scored false alarm comes first: precision 1/2 at recall 1.
    assert evaluate_coco(gt, [hit, false_alarm], "bbox").stats["AP50"] == pytest.approx(0.5)


def test_bad_results_name_the_result():
    gt = one_box_gt([[20.0, 20.0, 10.0, 10.0]])
    with pytest.raises(CocoResultsError, match="result 0: image_id 7 is not in the ground truth"):
        evaluate_coco(gt, [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(CocoResultsError, match="result 0: missing field 'segmentation'"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "segm")


def test_pr_curve_shape_and_values():
    gt = one_box_gt([[20.0, 20.0, 10.0, 10.0]])
    ours = evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [20.0, 20.0, 10.0, 10.0], "score": 1}])
    curve = ours.pr_curve(0.5)
    assert curve.shape == (101,) and (curve == 1.0).all()


def test_cli_prints_the_same_numbers(tmp_path):
    import subprocess
    import sys

    gt, results = random_dataset(seed=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = subprocess.run([sys.executable, "-m", "visionflow.cli", "coco-eval", str(tmp_path / "gt.json"),
                          str(tmp_path / "res.json"), "--iou-type", "segm", "--max-dets", "1", "10", "100"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    printed = json.loads(out.stdout)
    assert [printed[name] for name in PYCOCO_NAMES] == pytest.approx(pycocotools_stats(gt, results, "segm"))
    assert set(printed["per_class_AP"]) == {"c1", "c2", "c3"}


GROUND_TRUTH = {"images": [{"id": 1, "width": 10, "height": 10}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16,
                                 "iscrowd": 0}],
                "categories": [{"id": 1, "name": "thing"}]}
RESULT = {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [1, 1, 4, 4]}


@pytest.mark.parametrize("gt, results, message", [
    (GROUND_TRUTH, [RESULT, "x"], "result 1: must be an object, not str"),
    (GROUND_TRUTH, [{**RESULT, "bbox": [1, 1, 4]}], "result 0: field 'bbox' must be 4 finite numbers"),
    (GROUND_TRUTH, [{**RESULT, "bbox": [1, float("nan"), 4, 4]}], "result 0: field 'bbox' must be 4 finite"),
    (GROUND_TRUTH, [{**RESULT, "bbox": [1, 1, 4, float("inf")]}], "result 0: field 'bbox' must be 4 finite"),
    ({k: v for k, v in GROUND_TRUTH.items() if k != "categories"}, [RESULT], "missing field 'categories'"),
    ({**GROUND_TRUTH, "categories": ["thing"]}, [RESULT], "categories entry 0: must be an object"),
])
def test_unscorable_input_is_an_error_naming_the_record(tmp_path, gt, results, message):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(CocoResultsError, match=message) as caught:
        evaluate_coco(tmp_path / "gt.json", tmp_path / "results.json")
    assert str(tmp_path) in str(caught.value)
    assert evaluate_coco(GROUND_TRUTH, [RESULT]).stats["AP"] == pytest.approx(1.0)  # the fixed input scores
