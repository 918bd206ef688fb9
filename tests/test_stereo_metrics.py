"""EPE, bad-x and D1 by hand; OpenCV SGBM wrapped and scaled to pixels."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO
from visionflow.tasks.stereo.evaluate import fill_invalid_disparity, sgbm_disparity
from visionflow.tasks.stereo.params import SgbmParams
from visionflow.tasks.stereo.metrics import (DisparityScore, bad_pixel_rate, bad_rate_curve, d1_rate,
                                             end_point_error)

INF = np.inf
TARGET = np.array([[10.0, 20.0], [INF, 40.0]])
PREDICTION = np.array([[11.0, 20.0], [5.0, 43.5]])  # errors on valid pixels: 1, 0, 3.5


def test_hand_computed_epe_bad_and_d1():
    assert end_point_error(PREDICTION, TARGET) == pytest.approx(1.5)
    assert bad_pixel_rate(PREDICTION, TARGET, 1.0) == pytest.approx(100 / 3)  # 1.0 is not > 1
    assert bad_pixel_rate(PREDICTION, TARGET, 0.5) == pytest.approx(200 / 3)
    assert bad_pixel_rate(PREDICTION, TARGET, 4.0) == 0.0
    assert d1_rate(PREDICTION, TARGET) == pytest.approx(100 / 3)  # 3.5 > 3 and > 5 % of 40


def test_d1_needs_both_the_absolute_and_the_relative_error():
    target = np.array([100.0, 100.0, 10.0])
    prediction = np.array([104.0, 106.0, 13.5])  # 4 < 5 % of 100; 6 > 5; 3.5 > 3 and > 0.5
    assert d1_rate(prediction, target) == pytest.approx(200 / 3)


def test_off_by_one_everywhere_is_epe_one_and_masks_restrict():
    target = np.random.default_rng(0).uniform(0, 40, (6, 9))
    assert end_point_error(target + 1, target) == pytest.approx(1.0)
    mask = np.zeros((2, 2), bool)
    mask[0, 0] = True
    assert end_point_error(PREDICTION, TARGET, mask) == pytest.approx(1.0)
    assert math.isnan(end_point_error(PREDICTION, np.full((2, 2), INF)))


def test_pooled_score_equals_metrics_of_all_pixels_together():
    score = DisparityScore()
    score.add(PREDICTION, TARGET)
    score.add(np.array([[2.0]]), np.array([[0.0]]))
    both_p = np.array([11.0, 20.0, 43.5, 2.0])
    both_t = np.array([10.0, 20.0, 40.0, 0.0])
    summary = score.summary()
    assert summary["pixels"] == 4
    assert summary["epe"] == pytest.approx(end_point_error(both_p, both_t))
    assert summary["bad1"] == pytest.approx(50.0) and summary["d1"] == pytest.approx(25.0)


def test_bad_rate_curve():
    np.testing.assert_allclose(bad_rate_curve(np.array([0.5, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.5])),
                               [100.0, 50.0, 25.0])


def test_fill_invalid_takes_the_farther_row_neighbour():
    row = np.array([[INF, 5.0, INF, INF, 3.0, INF], [INF] * 6])
    np.testing.assert_array_equal(fill_invalid_disparity(row), [[5, 5, 3, 3, 3, 3], [5, 5, 3, 3, 3, 3]])


def _textured_pair(disparity: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (64, 160)).astype(np.float32), (0, 0), 1.0)
    right = np.repeat(np.clip(noise * 1.5 - 60, 0, 255).astype(np.uint8)[..., None], 3, 2)
    left = np.zeros_like(right)
    left[:, disparity:] = right[:, :-disparity]  # left[x] = right[x - d]
    return left, right


def test_sgbm_output_is_scaled_to_pixels_and_matches_opencv():
    left, right = _textured_pair(7)
    params = SgbmParams(**yaml.safe_load((REPO / "params.yaml").read_text())["stereo"]["evaluate"]["sgbm"])
    disparity = sgbm_disparity(left, right, 30, params)
    valid = np.isfinite(disparity)
    assert valid[:, 40:].mean() > 0.9
    assert abs(float(np.median(disparity[valid])) - 7.0) < 0.25
    # Against OpenCV itself: int16 fixed point / 16, negative = invalid, numDisparities 30 -> 32.
    reference = cv2.StereoSGBM_create(0, 32, 5, P1=8 * 3 * 25, P2=32 * 3 * 25, disp12MaxDiff=1,
                                      uniquenessRatio=params.uniqueness_ratio,
                                      speckleWindowSize=params.speckle_window_size, speckleRange=2,
                                      mode=cv2.STEREO_SGBM_MODE_HH).compute(left, right)
    np.testing.assert_array_equal(valid, reference >= 0)
    np.testing.assert_array_equal(disparity[valid], reference[valid] / 16.0)
