"""The augment stage for stereo: a preview grid, and a check that the geometry keeps pairs consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visionflow.tasks.stereo.params import StereoParams
from visionflow.data.batching import image_to_tensor
from visionflow.data.stereo import StereoPair, find_pairs, read_pair
from visionflow.tasks.stereo.data import StereoAugmenter
from visionflow.tasks.stereo.network import warp_right_to_left
from visionflow.tasks.stereo.viz import disparity_colour
from visionflow.viz import save_grid

PREVIEW_PAIRS = 8
DRAWS_PER_PAIR = 4


def warp_error(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> tuple[float, int]:
    """Sum and count of |left - right warped by disparity| (mean over RGB, [0, 1]) on finite pixels."""
    d = torch.from_numpy(np.where(np.isfinite(disparity), disparity, 0).astype(np.float32))[None, None]
    warped, inside = warp_right_to_left(image_to_tensor(right)[None], d)
    error = (image_to_tensor(left)[None] - warped).abs().mean(1, keepdim=True)
    valid = torch.from_numpy(np.isfinite(disparity))[None, None] & (inside > 0)
    return float(error[valid].sum()), int(valid.sum())


def _visible_only(pair: StereoPair) -> np.ndarray:
    disparity = pair.disparity.copy()
    if pair.nonoccluded is not None:
        disparity[~pair.nonoccluded] = np.inf
    return disparity


def preview_and_check(params: StereoParams, data_root: Path, preview_png: Path) -> dict:
    """Columns: left | right | disparity, raw then augmented. Returns the geometry check's numbers.

    The check: warp error of the right image into the left by the ground truth on visible
    pixels, through the augmentation's geometry only (crop, flip), pooled over draws,
    divided by the same error on the raw pairs. ~1 when disparity follows the images.
    """
    records = find_pairs(data_root, params.data.train_split)[:PREVIEW_PAIRS]
    with torch.random.fork_rng(devices=[]):  # the augmenter's draws mix in torch's seed: fix it
        torch.manual_seed(params.train.seed)
        augmenter = StereoAugmenter(params.augment, seed=params.train.seed)
        augmenter.rng  # seeds the draws now, inside the fixed torch seed
    rows, raw_sum, raw_count, aug_sum, aug_count = [], 0.0, 0, 0.0, 0
    for record in records:
        pair = read_pair(record)
        left, right, disparity = augmenter(pair.left, pair.right, pair.disparity)
        finite = pair.disparity[np.isfinite(pair.disparity)]
        top = float(finite.max()) if finite.size else 1.0  # one colour scale per pair
        rows.append([pair.left, pair.right, disparity_colour(pair.disparity, top),
                     left, right, disparity_colour(disparity, top)])
        s, n = warp_error(pair.left, pair.right, _visible_only(pair))
        raw_sum, raw_count = raw_sum + s, raw_count + n
        for _ in range(DRAWS_PER_PAIR):
            geo = augmenter.geometry(pair.left, pair.right, _visible_only(pair), params.augment.crop)
            s, n = warp_error(*geo)
            aug_sum, aug_count = aug_sum + s, aug_count + n
    if rows:
        height = max(r[0].shape[0] for r in rows)
        save_grid(preview_png, rows, scale=max(1, 192 // height))
    raw = raw_sum / max(raw_count, 1)
    augmented = aug_sum / max(aug_count, 1)
    return {"samples": len(records), "raw_warp_error": round(raw, 5),
            "augmented_warp_error": round(augmented, 5),
            "max_warp_error_ratio": round(augmented / raw, 4) if raw > 0 else 1.0}
