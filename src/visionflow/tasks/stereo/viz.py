"""Stereo pictures: disparity colour maps and KITTI-style error maps (uint8 RGB arrays)."""

from __future__ import annotations

import cv2
import numpy as np

# KITTI devkit's error colours: bins of min(error / 3 px, 20 * error / truth), blue (good) to red.
_KITTI_ERROR_BINS = np.array([0, 0.0625, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16, np.inf])
_KITTI_ERROR_COLOURS = np.array([[49, 54, 149], [69, 117, 180], [116, 173, 209], [171, 217, 233],
                                 [224, 243, 248], [254, 224, 144], [253, 174, 97], [244, 109, 67],
                                 [215, 48, 39], [165, 0, 38]], np.uint8)


def disparity_colour(disparity: np.ndarray, max_disparity: float) -> np.ndarray:
    """float ``(H, W)`` px -> uint8 ``(H, W, 3)`` RGB (turbo: far blue, near red); invalid black."""
    valid = np.isfinite(disparity)
    scaled = np.clip(np.where(valid, disparity, 0) / max(max_disparity, 1e-6), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where(valid[..., None], colour, 0).astype(np.uint8)


def error_colour(prediction: np.ndarray, target: np.ndarray, nonoccluded: np.ndarray | None = None
                 ) -> np.ndarray:
    """KITTI-style error map: blue small, red large; occluded pixels darker; no ground truth black."""
    valid = np.isfinite(target)
    truth = np.where(valid, target, 1.0)
    error = np.abs(np.where(valid, prediction, 0) - truth)
    relative = np.minimum(error / 3.0, 20.0 * error / np.maximum(truth, 1e-6))
    index = np.clip(np.searchsorted(_KITTI_ERROR_BINS, relative, side="right") - 1, 0,
                    len(_KITTI_ERROR_COLOURS) - 1)
    colour = _KITTI_ERROR_COLOURS[index].astype(np.float32)
    if nonoccluded is not None:
        colour[~nonoccluded] *= 0.5
    return np.where(valid[..., None], colour, 0).astype(np.uint8)
