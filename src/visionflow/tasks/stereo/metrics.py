"""Disparity error metrics (numpy): EPE, bad-x %, KITTI's D1, over chosen pixels.

Arrays are float ``(H, W)`` disparities in px; ground truth is invalid where
non-finite. Errors are pooled over pixels (a split's score sums its pairs'
pixel counts), as the KITTI devkit does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BAD_THRESHOLDS = (1.0, 2.0, 4.0)  # px
D1_ABSOLUTE, D1_RELATIVE = 3.0, 0.05  # KITTI: an outlier is off by > 3 px AND > 5 % of the truth


def disparity_errors(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """|prediction - target| and the target, on valid pixels (finite target, and ``mask`` if given)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    valid = np.isfinite(target)
    if mask is not None:
        valid &= mask.astype(bool)
    prediction = np.asarray(prediction, np.float64)[valid]
    target = np.asarray(target, np.float64)[valid]
    if not np.isfinite(prediction).all():
        raise ValueError("prediction holds non-finite values on valid pixels")
    return np.abs(prediction - target), target


def end_point_error(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute disparity error (px) over valid pixels; NaN if there are none."""
    error, _ = disparity_errors(prediction, target, mask)
    return float(error.mean()) if error.size else float("nan")


def bad_pixel_rate(prediction: np.ndarray, target: np.ndarray, threshold: float,
                   mask: np.ndarray | None = None) -> float:
    """Percentage of valid pixels whose error exceeds ``threshold`` px."""
    error, _ = disparity_errors(prediction, target, mask)
    return float(100.0 * (error > threshold).mean()) if error.size else float("nan")


def d1_rate(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """KITTI D1: percentage of valid pixels with error > 3 px and > 5 % of the true disparity."""
    error, truth = disparity_errors(prediction, target, mask)
    outliers = (error > D1_ABSOLUTE) & (error > D1_RELATIVE * truth)
    return float(100.0 * outliers.mean()) if error.size else float("nan")


@dataclass
class DisparityScore:
    """Pooled sums over many pairs; :meth:`summary` turns them into EPE, bad-x and D1."""

    pixels: int = 0
    error_sum: float = 0.0
    bad: dict[float, int] = field(default_factory=lambda: {t: 0 for t in BAD_THRESHOLDS})
    d1: int = 0

    def add(self, prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> None:
        error, truth = disparity_errors(prediction, target, mask)
        self.pixels += error.size
        self.error_sum += float(error.sum())
        for threshold in self.bad:
            self.bad[threshold] += int((error > threshold).sum())
        self.d1 += int(((error > D1_ABSOLUTE) & (error > D1_RELATIVE * truth)).sum())

    def summary(self) -> dict[str, float]:
        if self.pixels == 0:
            return {"epe": float("nan"), **{f"bad{t:g}": float("nan") for t in self.bad},
                    "d1": float("nan"), "pixels": 0}
        rate = 100.0 / self.pixels
        return {"epe": self.error_sum / self.pixels,
                **{f"bad{t:g}": n * rate for t, n in self.bad.items()},
                "d1": self.d1 * rate, "pixels": self.pixels}


def bad_rate_curve(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Percentage of ``errors`` above each threshold (the error's survival curve)."""
    errors = np.sort(np.asarray(errors, np.float64))
    if errors.size == 0:
        return np.full(len(thresholds), np.nan)
    return 100.0 * (1 - np.searchsorted(errors, thresholds, side="right") / errors.size)
