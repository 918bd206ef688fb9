"""OKS, PCK and keypoint distances: hand-computed values and pycocotools' computeOks."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionflow.tasks.pose.metrics import keypoint_distances, oks, oks_matrix, pck


def test_identical_keypoints_have_oks_one():
    gt = np.array([[[10.0, 20.0, 2], [30.0, 40.0, 1], [0.0, 0.0, 0]]])
    assert oks(gt, gt, np.array([250.0]), np.array([0.05, 0.08, 0.1])) == pytest.approx([1.0])


def test_known_offset_matches_hand_calculation():
    # Area 100, sigma 0.1: 2 * A * (2 sigma)^2 = 8. Keypoint 0 is exact (1), keypoint 1 is 2 px off:
    # exp(-4 / 8) = exp(-0.5); keypoint 2 is unlabelled and left out whatever its error.
    gt = np.array([[[10.0, 10.0, 2], [20.0, 20.0, 2], [0.0, 0.0, 0]]])
    pred = np.array([[[10.0, 10.0, 0.9], [22.0, 20.0, 0.9], [50.0, 50.0, 0.9]]])
    value = oks(pred, gt, np.array([100.0]), np.array([0.1, 0.1, 0.1]))[0]
    assert value == pytest.approx((1 + math.exp(-0.5)) / 2)
    # A 2 px error weighs less for a larger sigma: sigma 0.2 gives exp(-4 / 32).
    value = oks(pred, gt, np.array([100.0]), np.array([0.1, 0.2, 0.1]))[0]
    assert value == pytest.approx((1 + math.exp(-0.125)) / 2)


def test_no_labelled_keypoint_is_nan_and_shapes_are_checked():
    gt = np.zeros((1, 2, 3))
    assert np.isnan(oks(np.ones((1, 2, 2)), gt, np.array([10.0]), np.array([0.1, 0.1]))[0])
    with pytest.raises(ValueError, match="expected 2 sigmas"):
        oks_matrix(np.ones((1, 2, 2)), gt, np.array([10.0]), np.array([0.1]))
    with pytest.raises(ValueError, match=r"pred \(N, K, 2\|3\) and gt \(M, K, 3\)"):
        oks_matrix(np.ones((1, 3, 2)), gt, np.array([10.0]), np.array([0.1, 0.1]))


def test_oks_matrix_equals_pycocotools_compute_oks():
    rng = np.random.default_rng(0)
    k = 5
    sigmas = np.array([0.03, 0.05, 0.07, 0.09, 0.11])
    gts, dts = [], []
    for i in range(4):
        x, y, w, h = *rng.uniform(0, 50, 2), *rng.uniform(20, 40, 2)
        points = np.stack([rng.uniform(x, x + w, k), rng.uniform(y, y + h, k), rng.integers(0, 3, k)], 1)
        points[0, 2] = 2  # at least one labelled keypoint (pycocotools uses box distances otherwise)
        points[points[:, 2] == 0, :2] = 0
        gts.append({"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "area": w * h * 0.6,
                    "iscrowd": 0, "keypoints": points.ravel().tolist(),
                    "num_keypoints": int((points[:, 2] > 0).sum())})
    for i in range(6):
        source = np.reshape(gts[i % 4]["keypoints"], (-1, 3)).copy()
        source[:, :2] += rng.normal(0, 3, (k, 2))
        source[:, 2] = 1
        dts.append({"image_id": 1, "category_id": 1, "keypoints": source.ravel().tolist(),
                    "score": float(rng.uniform(0.1, 1.0))})
    dataset = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}], "annotations": gts,
               "categories": [{"id": 1, "name": "thing", "keypoints": [f"k{j}" for j in range(k)],
                               "skeleton": []}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dts), "keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.params.catIds = [1]
        evaluator.evaluate()
    reference = np.asarray(evaluator.ious[(1, 1)])  # (D, G), detections by descending score
    by_score = sorted(dts, key=lambda d: -d["score"])
    pred = np.array([np.reshape(d["keypoints"], (-1, 3)) for d in by_score])
    gt = np.array([np.reshape(g["keypoints"], (-1, 3)) for g in gts])
    ours = oks_matrix(pred, gt, np.array([g["area"] for g in gts]), sigmas)
    assert ours == pytest.approx(reference, abs=1e-12)
    assert 0.2 < ours.max() < 0.99  # the exponent is exercised, not just its limits 0 and 1


def test_pck_and_distances_by_hand():
    gt = np.array([[[0.0, 0.0, 2], [10.0, 0.0, 2], [5.0, 5.0, 0]],
                   [[0.0, 0.0, 1], [10.0, 0.0, 2], [5.0, 5.0, 2]]])
    pred = gt.copy()
    pred[0, 1, 0] += 3.0  # 3 px off
    pred[1, 2, 1] += 8.0  # 8 px off
    distances = keypoint_distances(pred, gt)
    assert distances[0, 1] == 3.0 and distances[1, 2] == 8.0 and np.isnan(distances[0, 2])
    box = np.array([50.0, 100.0])  # thresholds: 0.05 -> 2.5 px and 5 px; 0.1 -> 5 px and 10 px
    assert pck(distances, box, 0.05) == pytest.approx(3 / 5)  # the 3 px and 8 px errors miss
    assert pck(distances, box, 0.1) == pytest.approx(5 / 5)
    assert math.isnan(pck(np.full((1, 2), np.nan), np.array([10.0]), 0.1))
