"""Keypoint metrics: OKS as COCO defines it, PCK, per-keypoint error. Pure numpy.

Keypoints are float (N, K, 2 or 3) arrays of x, y in pixels (a third column,
where present, is COCO visibility for ground truth and ignored for predictions);
ground-truth ``v > 0`` marks a labelled keypoint.

OKS (object keypoint similarity, COCO): for ground truth with area ``A`` and
per-keypoint sigmas ``s_k``,

    OKS = mean over labelled k of exp(-d_k^2 / (2 * A * (2 s_k)^2))

which is what ``pycocotools.cocoeval.COCOeval.computeOks`` computes for ground
truth with labelled keypoints (it falls back to distances to the box for ground
truth without any, which COCO evaluation ignores anyway; here that is NaN).
"""

from __future__ import annotations

import numpy as np

COCO_PERSON_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                         "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                      0.107, 0.107, 0.087, 0.087, 0.089, 0.089)  # pycocotools' kpt_oks_sigmas


def _check(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.ndim != 3 or gt.ndim != 3 or gt.shape[-1] != 3 or pred.shape[-1] not in (2, 3) \
            or pred.shape[1] != gt.shape[1]:
        raise ValueError(f"expected pred (N, K, 2|3) and gt (M, K, 3), got {pred.shape} and {gt.shape}")


def oks_matrix(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """float (D, G): OKS of every prediction with every ground truth.

    pred: (D, K, 2|3); gt: (G, K, 3); areas: (G,) ground-truth areas in px^2; sigmas: (K,).
    NaN for ground truth with no labelled keypoint.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    _check(pred, gt)
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.shape != (gt.shape[1],):
        raise ValueError(f"expected {gt.shape[1]} sigmas, got {sigmas.shape}")
    variances = (2 * sigmas) ** 2  # (K,)
    d2 = ((pred[:, None, :, :2] - gt[None, :, :, :2]) ** 2).sum(-1)  # (D, G, K)
    e = d2 / variances / (np.asarray(areas, np.float64)[None, :, None] + np.spacing(1)) / 2
    labelled = gt[None, :, :, 2] > 0  # (1, G, K)
    count = labelled.sum(-1)
    total = np.where(labelled, np.exp(-e), 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def oks(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """float (N,): OKS of prediction i with ground truth i (same shapes as :func:`oks_matrix`)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    _check(pred, gt)
    if len(pred) != len(gt) or len(np.asarray(areas)) != len(gt):
        raise ValueError(f"pred, gt and areas differ in length: {len(pred)}, {len(gt)}, {len(areas)}")
    return np.array([oks_matrix(pred[i:i + 1], gt[i:i + 1], np.asarray(areas)[i:i + 1], sigmas)[0, 0]
                     for i in range(len(pred))])


def keypoint_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float (N, K) Euclidean distances in pixels; NaN where the ground truth is not labelled."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    _check(pred, gt)
    distances = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1)
    return np.where(gt[..., 2] > 0, distances, np.nan)


def pck(distances: np.ndarray, normaliser: np.ndarray, threshold: float) -> float:
    """Share of labelled keypoints within ``threshold * normaliser`` of the truth.

    distances: (N, K) from :func:`keypoint_distances` (NaN = not labelled);
    normaliser: (N,) per-instance length in pixels (e.g. the longer side of its box).
    NaN when nothing is labelled.
    """
    distances = np.asarray(distances, np.float64)
    labelled = ~np.isnan(distances)
    if not labelled.any():
        return float("nan")
    within = distances <= threshold * np.asarray(normaliser, np.float64)[:, None]
    return float(within[labelled].mean())
