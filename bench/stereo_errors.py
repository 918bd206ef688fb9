"""Where the stereo network loses to SGBM: Motorcycle 741x500 bad-1 by true disparity and by texture.

    python bench/stereo_errors.py [--checkpoint models/stereo/best.ckpt] [--params params.yaml]

Runs the network and SGBM (the evaluate stage's settings) on the real Motorcycle pair
(see bench/stereo.py) and prints bad-1 % of each over the pixels split by true disparity
band, by 5x5 texture quartile (grey-level standard deviation, weakest first), and the
share of pixels one method gets wrong (> 1 px) where the other is right.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stereo import PROJECT, write_motorcycle  # noqa: E402

DISPARITY_BANDS = ((0, 35), (35, 45), (45, 80))  # px: far wall and shelves, middle, near motorcycle and floor


def local_std(gray: np.ndarray, size: int = 5) -> np.ndarray:
    """Grey-level standard deviation over a ``size`` x ``size`` window, ``(H, W)``."""
    import cv2

    mean = cv2.blur(gray, (size, size))
    return np.sqrt(np.maximum(cv2.blur(gray * gray, (size, size)) - mean * mean, 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PROJECT / "params.yaml"))
    parser.add_argument("--checkpoint", default=str(PROJECT / "models/stereo/best.ckpt"))
    args = parser.parse_args()

    import cv2

    from visionflow.config import load_params
    from visionflow.data.stereo import find_pairs, read_pair
    from visionflow.tasks import get_task
    from visionflow.tasks.stereo.evaluate import dense_sgbm, pair_range, pair_tensor, sgbm_disparity
    from visionflow.tasks.stereo.network import StereoInference, infer_disparity

    params = load_params(args.params).task("stereo")
    module = get_task("stereo").load_module(Path(args.checkpoint))
    model = StereoInference(module.net).eval()
    with tempfile.TemporaryDirectory() as tmp:
        write_motorcycle(Path(tmp), 1)
        pair = read_pair(find_pairs(Path(tmp), "real")[0])
    search = pair_range(pair)
    net = infer_disparity(model, pair_tensor(pair.left, pair.right), float(module.max_disparity), search)
    sgbm = dense_sgbm(sgbm_disparity(pair.left, pair.right, search, params.evaluate.sgbm), params.evaluate.sgbm)
    valid = np.isfinite(pair.disparity)
    wrong = {"net": np.abs(net[0, 0].numpy() - pair.disparity) > 1,
             "sgbm": np.abs(sgbm - pair.disparity) > 1}

    def bad1(mask: np.ndarray) -> str:
        mask = mask & valid
        return "  ".join(f"{name} {100 * w[mask].mean():5.1f}" for name, w in wrong.items())

    print(f"checkpoint: {args.checkpoint}")
    print(f"{'pixels':<34}bad-1 %")
    print(f"{'all':<34}{bad1(valid)}")
    for low, high in DISPARITY_BANDS:
        band = (pair.disparity >= low) & (pair.disparity < high)
        share = 100 * (band & valid).sum() / valid.sum()
        print(f"{f'true disparity {low}-{high} px ({share:.0f} %)':<34}{bad1(band)}")
    texture = local_std(cv2.cvtColor(pair.left, cv2.COLOR_RGB2GRAY).astype(np.float32))
    edges = [-np.inf, *np.quantile(texture[valid], [0.25, 0.5, 0.75]), np.inf]
    for quartile in range(4):
        print(f"{f'texture quartile {quartile + 1}':<34}{bad1((texture >= edges[quartile]) & (texture < edges[quartile + 1]))}")
    only_net = 100 * (wrong["net"] & ~wrong["sgbm"])[valid].mean()
    only_sgbm = 100 * (wrong["sgbm"] & ~wrong["net"])[valid].mean()
    print(f"net wrong, SGBM right: {only_net:.1f} % of the pixels; SGBM wrong, net right: {only_sgbm:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
