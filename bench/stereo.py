"""Stereo quality and speed: the trained network against OpenCV SGBM, synthetic and real pairs.

    python bench/stereo.py [--checkpoint models/stereo/best.ckpt] [--params params.yaml]

Scores the checkpoint and SGBM (the evaluate stage's settings) on the synthetic test
split, and on two REAL rectified pairs the model has never seen, each written as a
Middlebury-layout dataset and read back through the same reader as acquired data:

- Middlebury 2014 "Motorcycle" (quarter size, 741x500, disparities 7-60 px, ndisp 70),
  which ships with scikit-image (``skimage.data.stereo_motorcycle``), at that size, where
  its range exceeds the model's and inference matches it in disparity windows, and at half
  that size;
- Middlebury 2006 "Aloe" (1282x1110, disparities 0-211 px, integer ground truth), as
  OpenCV's samples ship it (``bench/data/aloe/``), at the benchmark's half and third sizes.

Prints EPE, bad-1/2/4 %, D1 and seconds per pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
MOTORCYCLE_NDISP = 70  # Middlebury's ndisp=280 at full size; the scikit-image copy is 1/4 size
ALOE = Path(__file__).resolve().parent / "data" / "aloe"
ALOE_NDISP = 230  # full size; the ground truth reaches 211 px


def write_pair(scene: Path, left: np.ndarray, right: np.ndarray, disparity: np.ndarray, factor: int,
               ndisp: int) -> None:
    """A rectified pair as a Middlebury scene folder, downscaled by ``factor``.

    left, right: ``(H, W, 3)`` uint8 RGB; disparity ``(H, W)`` float32 px, inf where unknown.
    Downscaled, each pixel's truth is the mean of its block's, divided by ``factor``; a block
    with any unknown pixel stays unknown.
    """
    import cv2

    from visionflow.data.disparity import write_pfm
    from visionflow.data.images import write_png
    from visionflow.data.synth.stereo import write_calib

    if factor > 1:
        size = (left.shape[1] // factor, left.shape[0] // factor)
        left = cv2.resize(left, size, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right, size, interpolation=cv2.INTER_AREA)
        valid = np.isfinite(disparity)
        sums = cv2.resize(np.where(valid, disparity, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        counts = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        disparity = np.where(counts > 0.99, sums / np.maximum(counts, 1e-6) / factor, np.inf).astype(np.float32)
    scene.mkdir(parents=True, exist_ok=True)
    write_png(scene / "im0.png", left)
    write_png(scene / "im1.png", right)
    write_pfm(scene / "disp0.pfm", disparity)
    finite = disparity[np.isfinite(disparity)]
    write_calib(scene / "calib.txt", left.shape[1], left.shape[0], int(np.ceil(ndisp / factor)),
                float(finite.min()), float(finite.max()))


def write_motorcycle(root: Path, factor: int) -> None:
    """The scikit-image Motorcycle pair as ``root/real/motorcycle/`` (downscaled by ``factor``)."""
    from skimage.data import stereo_motorcycle

    left, right, disparity = stereo_motorcycle()
    write_pair(root / "real" / "motorcycle", left, right, disparity, factor, MOTORCYCLE_NDISP)


def write_aloe(root: Path, factor: int) -> None:
    """Middlebury 2006 Aloe as ``root/real/aloe/`` (downscaled by ``factor``).

    ``aloeGT.png`` holds the left view's disparity in whole pixels at full size, 0 unknown.
    """
    import cv2

    from visionflow.data.images import read_rgb

    left, right = read_rgb(ALOE / "aloeL.jpg"), read_rgb(ALOE / "aloeR.jpg")
    truth_file = ALOE / "aloeGT.png"
    truth = cv2.imread(str(truth_file), cv2.IMREAD_UNCHANGED)
    if truth is None or truth.ndim != 2:
        raise ValueError(f"{truth_file}: missing, unreadable or not a one-channel disparity image")
    truth = truth.astype(np.float32)
    write_pair(root / "real" / "aloe", left, right, np.where(truth > 0, truth, np.inf), factor, ALOE_NDISP)


REAL_PAIRS = (  # (name, writer, factor)
    ("motorcycle (741x500)", write_motorcycle, 1),
    ("motorcycle half (370x250)", write_motorcycle, 2),
    ("aloe half (641x555)", write_aloe, 2),
    ("aloe third (427x370)", write_aloe, 3),
)


def row(name: str, result: dict) -> list[str]:
    lines = []
    for method in ("net", "sgbm"):
        m = result[method]["all"]
        lines.append(f"{name:<28}{method:<6}{m['epe']:>7.3f}{m['bad1']:>8.2f}{m['bad2']:>8.2f}{m['bad4']:>8.2f}"
                     f"{m['d1']:>8.2f}{result[method]['seconds_per_pair']:>9.3f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PROJECT / "params.yaml"))
    parser.add_argument("--checkpoint", default=str(PROJECT / "models/stereo/best.ckpt"))
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--reports", help="keep the colour / error maps in this folder")
    args = parser.parse_args()

    import torch

    from visionflow.config import load_params
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task
    from visionflow.tasks.base import EvalOutputs
    from visionflow.tasks.stereo.evaluate import evaluate_split
    from visionflow.tasks.stereo.network import StereoInference

    params = load_params(args.params).task("stereo")
    module = get_task("stereo").load_module(Path(args.checkpoint))
    model = StereoInference(module.net).eval()
    device = torch.device("cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = EvalOutputs(Path(tmp) / "plots", Path(args.reports or Path(tmp) / "reports"))
        out.plots_dir.mkdir(parents=True)
        out.reports_dir.mkdir(parents=True, exist_ok=True)
        synthetic = TaskPaths("stereo", Path(args.params).resolve().parent).synthetic
        results["synthetic/test"] = evaluate_split(model, module.max_disparity, synthetic,
                                                   params.data.test_split, "synthetic", params, out, device)
        for index, (name, write, factor) in enumerate(REAL_PAIRS):
            root = Path(tmp) / f"real{index}"
            write(root, factor)
            started = time.perf_counter()
            results[name] = evaluate_split(model, module.max_disparity, root, "real", name, params, out, device)
            results[name]["wall_s"] = round(time.perf_counter() - started, 2)
    print(f"checkpoint: {args.checkpoint}")
    print(f"{'split':<28}{'':<6}{'EPE':>7}{'bad1%':>8}{'bad2%':>8}{'bad4%':>8}{'D1%':>8}{'s/pair':>9}")
    for name, result in results.items():
        print("\n".join(row(name, result)))
    for name, result in results.items():
        print(f"{name}: EPE ratio net/SGBM = {result['epe_ratio_to_sgbm']:.3f}, "
              f"SGBM density before filling = {result['sgbm']['density']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
