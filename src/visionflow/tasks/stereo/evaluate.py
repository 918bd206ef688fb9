"""Score a stereo model and OpenCV's StereoSGBM on the same pairs: EPE, bad-1/2/4 %, D1.

Every split the params name (``data.source``'s test split, then ``evaluate.splits``)
is scored over all valid pixels (``all``) and over the non-occluded ones (``noc``,
where the dataset marks occlusion). Both methods get the same disparity range per
pair: the dataset's ``ndisp`` (Middlebury ``calib.txt``) or else the largest true
disparity. SGBM's invalid pixels are filled from their row neighbours (the KITTI
devkit's background interpolation) so both maps are dense; its density before
filling is reported.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from visionflow.tasks.stereo.params import SgbmParams, StereoParams
from visionflow.data.batching import image_to_tensor
from visionflow.data.stereo import StereoPair, StereoRecord, find_pairs, read_pair
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.stereo.data import source_root
from visionflow.tasks.stereo.metrics import DisparityScore, bad_rate_curve, disparity_errors
from visionflow.tasks.stereo.network import StereoInference, infer_disparity
from visionflow.tasks.stereo.viz import disparity_colour, error_colour
from visionflow.viz import save_grid

SGBM_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
              "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}
SGBM_FIXED_POINT = 16.0  # StereoSGBM returns int16 disparities * 16
CURVE_THRESHOLDS = np.round(np.arange(0.25, 8.01, 0.25), 2)
METHODS = ("net", "sgbm")


def sgbm_disparity(left: np.ndarray, right: np.ndarray, max_disparity: float, params: SgbmParams) -> np.ndarray:
    """OpenCV StereoSGBM on uint8 ``(H, W, 3)`` images -> float32 ``(H, W)`` px, ``inf`` invalid.

    ``numDisparities`` is ``max_disparity`` rounded up to a multiple of 16 (OpenCV's rule).
    """
    num_disparities = 16 * max(1, math.ceil(max_disparity / 16))
    block = params.block_size
    matcher = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disparities, blockSize=block,
        P1=8 * 3 * block * block, P2=32 * 3 * block * block, disp12MaxDiff=params.disp12_max_diff,
        uniquenessRatio=params.uniqueness_ratio, speckleWindowSize=params.speckle_window_size,
        speckleRange=params.speckle_range, mode=SGBM_MODES[params.mode])
    fixed = matcher.compute(np.ascontiguousarray(left), np.ascontiguousarray(right))
    disparity = fixed.astype(np.float32) / SGBM_FIXED_POINT
    disparity[fixed < 0] = np.inf  # invalid: (minDisparity - 1) * 16
    return disparity


def fill_invalid_disparity(disparity: np.ndarray) -> np.ndarray:
    """Fill non-finite pixels with the smaller (farther) of their nearest valid row neighbours.

    The KITTI devkit's background interpolation; at a row's ends the nearest valid value is
    extended; rows with no valid pixel take their column neighbours', and 0 if none at all.
    """
    def fill_rows(d: np.ndarray) -> np.ndarray:
        h, w = d.shape
        valid = np.isfinite(d)
        columns = np.arange(w)
        left_index = np.maximum.accumulate(np.where(valid, columns, -1), axis=1)
        right_index = np.minimum.accumulate(np.where(valid, columns, w)[:, ::-1], axis=1)[:, ::-1]
        left_value = np.take_along_axis(d, np.clip(left_index, 0, w - 1), 1)
        right_value = np.take_along_axis(d, np.clip(right_index, 0, w - 1), 1)
        left_value[left_index < 0] = np.inf
        right_value[right_index >= w] = np.inf
        return np.where(valid, d, np.minimum(left_value, right_value))

    filled = fill_rows(np.asarray(disparity, np.float32))
    if not np.isfinite(filled).all():
        filled = fill_rows(filled.T).T
    filled[~np.isfinite(filled)] = 0.0
    return filled


def dense_sgbm(disparity: np.ndarray, params: SgbmParams) -> np.ndarray:
    """SGBM's map as scored: invalid pixels filled along rows (``fill_invalid``) or else set to 0."""
    if params.fill_invalid:
        return fill_invalid_disparity(disparity)
    return np.where(np.isfinite(disparity), disparity, 0.0)


def pair_range(pair: StereoPair) -> float:
    """The disparity range both methods search: ``ndisp`` if the dataset gives it, else the max truth."""
    if pair.max_disparity:
        return float(pair.max_disparity)
    finite = pair.disparity[np.isfinite(pair.disparity)]
    return float(np.ceil(finite.max())) if finite.size else 1.0


def pair_tensor(left: np.ndarray, right: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) images -> the exported model's input ``(1, 6, H, W)`` in [0, 1]."""
    return torch.cat([image_to_tensor(left), image_to_tensor(right)], 0)[None]


def batches_of_alike_pairs(records: list[StereoRecord], batch_size: int
                           ) -> Iterator[list[tuple[StereoRecord, StereoPair]]]:
    """Consecutive pairs read in groups of at most ``batch_size`` sharing one image size and search range.

    The network then matches each group in one batch (on a CPU, 96x160 pairs take about a
    third of the time per pair in batches of 4 as one at a time).
    """
    batch: list[tuple[StereoRecord, StereoPair]] = []
    for record in records:
        pair = read_pair(record)
        if batch and (len(batch) == batch_size or pair.left.shape != batch[0][1].left.shape
                      or pair_range(pair) != pair_range(batch[0][1])):
            yield batch
            batch = []
        batch.append((record, pair))
    if batch:
        yield batch


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _clean(summary: dict[str, float]) -> dict[str, Any]:
    return {k: (v if k == "pixels" else _finite_or_none(v)) for k, v in summary.items()}


def evaluate_split(model: torch.nn.Module, trained_max: float, root: Path, split: str, key: str,
                   params: StereoParams, out: EvalOutputs, device: torch.device) -> dict[str, Any]:
    records = [r for r in find_pairs(root, split) if r.disparity is not None]
    if not records:
        raise FileNotFoundError(f"{root / split}: no pairs with ground-truth disparity to evaluate")
    scores = {m: {"all": DisparityScore(), "noc": DisparityScore()} for m in METHODS}
    errors: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    seconds = {m: 0.0 for m in METHODS}
    densities, per_pair, rows = [], [], []
    has_noc = True
    progress = tqdm(total=len(records), desc=f"evaluate stereo {key}", unit="pair")
    for batch in batches_of_alike_pairs(records, params.evaluate.batch_size):
        search = pair_range(batch[0][1])
        started = time.perf_counter()
        inputs = torch.cat([pair_tensor(pair.left, pair.right) for _, pair in batch]).to(device)
        predictions = infer_disparity(model, inputs, trained_max, search)[:, 0].cpu().numpy()
        seconds["net"] += time.perf_counter() - started
        progress.update(len(batch))
        for (record, pair), net in zip(batch, predictions):
            started = time.perf_counter()
            sgbm_raw = sgbm_disparity(pair.left, pair.right, search, params.evaluate.sgbm)
            sgbm = dense_sgbm(sgbm_raw, params.evaluate.sgbm)
            seconds["sgbm"] += time.perf_counter() - started
            densities.append(float(np.isfinite(sgbm_raw).mean()))
            has_noc &= pair.nonoccluded is not None
            row = {"pair": record.name}
            for method, prediction in (("net", net), ("sgbm", sgbm)):
                scores[method]["all"].add(prediction, pair.disparity)
                if pair.nonoccluded is not None:
                    scores[method]["noc"].add(prediction, pair.disparity, pair.nonoccluded)
                error, _ = disparity_errors(prediction, pair.disparity)
                errors[method].append(error[:: max(1, error.size // 20000)].astype(np.float32))
                row[f"{method}_epe"] = round(float(error.mean()), 4) if error.size else ""
            per_pair.append(row)
            if len(rows) < params.evaluate.overlays:
                top = max(search, 1.0)
                rows.append([pair.left, pair.right, disparity_colour(pair.disparity, top),
                             disparity_colour(net, top), error_colour(net, pair.disparity, pair.nonoccluded),
                             disparity_colour(sgbm, top), error_colour(sgbm, pair.disparity, pair.nonoccluded)])
    progress.close()

    slug = key.replace("/", "_")
    if rows:
        save_grid(out.reports_dir / f"{slug}.png", rows, scale=max(1, 256 // max(rows[0][0].shape[:2])),
                  titles=["left", "right", "truth", "network", "network errors", "SGBM", "SGBM errors"])
    with open(out.plots_dir / f"{slug}_bad_curve.csv", "w", newline="") as f:  # bad-x % vs x, a DVC plot
        writer = csv.writer(f)
        writer.writerow(["threshold_px", "net", "sgbm"])
        curves = {m: bad_rate_curve(np.concatenate(errors[m]), CURVE_THRESHOLDS) for m in METHODS}
        for i, threshold in enumerate(CURVE_THRESHOLDS):
            writer.writerow([f"{threshold:g}", f"{curves['net'][i]:.4f}", f"{curves['sgbm'][i]:.4f}"])
    with open(out.plots_dir / f"{slug}_pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["pair", "net_epe", "sgbm_epe"])
        writer.writeheader()
        writer.writerows(per_pair)
    result: dict[str, Any] = {"pairs": len(records)}
    for method in METHODS:
        result[method] = {"all": _clean(scores[method]["all"].summary()),
                          "noc": _clean(scores[method]["noc"].summary()) if has_noc else None,
                          "seconds_per_pair": round(seconds[method] / len(records), 4)}
    result["sgbm"]["density"] = round(float(np.mean(densities)), 4)
    net_epe, sgbm_epe = result["net"]["all"]["epe"], result["sgbm"]["all"]["epe"]
    result["epe_ratio_to_sgbm"] = _finite_or_none(net_epe / sgbm_epe) if net_epe is not None and sgbm_epe else None
    return result


def evaluate_stereo(module: Any, params: StereoParams, data_root: Path, out: EvalOutputs,
                    device: torch.device) -> dict[str, Any]:
    """Metrics of every named split; the top-level keys are the first split's (the primary one)."""
    out.reports_dir.mkdir(parents=True, exist_ok=True)
    out.plots_dir.mkdir(parents=True, exist_ok=True)
    # an exported copy where the parity check put one (StereoFamily.with_inference_network)
    exported = getattr(module, "inference_network", None)
    model = (StereoInference(module.net) if exported is None else exported).to(device).eval()
    trained_max = float(module.max_disparity)
    refs = [(params.data.source, params.data.test_split)]
    refs += [(s.source, s.split) for s in params.evaluate.splits if (s.source, s.split) not in refs]
    splits = {}
    for source, split in refs:
        root = data_root if source == params.data.source else source_root(data_root, source)
        key = f"{source}/{split}"
        splits[key] = evaluate_split(model, trained_max, root, split, key, params, out, device)
    primary = splits[f"{refs[0][0]}/{refs[0][1]}"]
    net, sgbm = primary["net"], primary["sgbm"]
    metrics: dict[str, Any] = {**{k: v for k, v in net["all"].items() if k != "pixels"}}
    if net["noc"] is not None:
        metrics.update({f"{k}_noc": v for k, v in net["noc"].items() if k != "pixels"})
    metrics.update({"sgbm_epe": sgbm["all"]["epe"], "sgbm_bad1": sgbm["all"]["bad1"],
                    "sgbm_d1": sgbm["all"]["d1"], "epe_ratio_to_sgbm": primary["epe_ratio_to_sgbm"],
                    "test_pairs": primary["pairs"], "splits": splits})
    return metrics
