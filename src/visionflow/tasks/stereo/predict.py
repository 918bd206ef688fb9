"""Disparity for user image pairs with an exported stereo model: a PFM and a colour map per pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visionflow.data.disparity import write_pfm
from visionflow.data.images import ImageReadError, read_rgb, write_png
from visionflow.data.stereo import read_calib_ndisp
from visionflow.tasks.base import output_stems
from visionflow.tasks.stereo.evaluate import pair_tensor
from visionflow.tasks.stereo.network import infer_disparity
from visionflow.tasks.stereo.viz import disparity_colour


def trained_range(model: torch.nn.Module) -> float:
    """The ``max_disparity`` buffer of :class:`StereoInference` (also in its torch.export copy)."""
    buffers = dict(model.named_buffers())
    for name in ("max_disparity", "_max_disparity"):
        if name in buffers:
            return float(buffers[name])
    value = getattr(model, "max_disparity", None)
    if value is None:
        raise ValueError("the model has no max_disparity buffer: is it a visionflow stereo model?")
    return float(value)


@torch.no_grad()
def pair_disparity(model: torch.nn.Module, left: np.ndarray, right: np.ndarray, device: torch.device,
                   trained_max: float, search: float | None = None, left_name: str = "left",
                   right_name: str = "right") -> np.ndarray:
    """uint8 RGB (H, W, 3) rectified left and right -> float32 disparity (H, W), left-image pixels;
    ``search``: the disparity range to search (None: probed)."""
    if left.shape != right.shape:
        raise ImageReadError(f"{right_name}: right image is {right.shape[1]}x{right.shape[0]}, left "
                             f"image {left_name} is {left.shape[1]}x{left.shape[0]}")
    disparity = infer_disparity(model, pair_tensor(left, right).to(device), trained_max, search)
    return disparity[0, 0].cpu().numpy().astype(np.float32)


def answer_disparity(model: torch.nn.Module, left: np.ndarray, right: np.ndarray, device: torch.device) -> dict:
    """The served answer: disparity (left-image px, range probed) as a compact array, ``data`` the
    base64 of its little-endian float16 bytes in row-major order, with its min and max (float32)."""
    import base64

    model = model.to(device)
    disparity = pair_disparity(model, left, right, device, trained_range(model))
    return {"height": int(disparity.shape[0]), "width": int(disparity.shape[1]),
            "disparity": {"shape": list(disparity.shape), "dtype": "float16", "unit": "pixels",
                          "data": base64.b64encode(disparity.astype("<f2").tobytes()).decode("ascii"),
                          "min": float(disparity.min()), "max": float(disparity.max())}}


@torch.no_grad()
def predict_disparity(model: torch.nn.Module, inputs: list[Path], out_dir: Path,
                      device: torch.device) -> list[Path]:
    """``inputs``: LEFT RIGHT [LEFT RIGHT ...] rectified pairs.

    For each pair writes ``<left stem>_disparity.pfm`` (float32 px, Middlebury PFM) and
    ``<left stem>_disparity.png`` (colour map); left stems made distinct by
    :func:`~visionflow.tasks.base.output_stems` (Middlebury's ``a/im0.png``, ``b/im0.png``).
    A Middlebury ``calib.txt`` beside the left image gives the disparity range (``ndisp``);
    otherwise it is probed.
    """
    if len(inputs) % 2:
        raise ImageReadError(f"stereo predict takes LEFT RIGHT image pairs; got {len(inputs)} files")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    trained_max = trained_range(model)
    written = []
    lefts = list(inputs[0::2])
    for left_path, right_path, left_stem in zip(lefts, inputs[1::2], output_stems(lefts)):
        calib = Path(left_path).parent / "calib.txt"
        search = read_calib_ndisp(calib) if calib.is_file() else None
        disparity = pair_disparity(model, read_rgb(left_path), read_rgb(right_path), device, trained_max, search,
                                   str(left_path), str(right_path))
        stem = out_dir / f"{left_stem}_disparity"
        write_pfm(stem.with_suffix(".pfm"), disparity)
        write_png(stem.with_suffix(".png"), disparity_colour(disparity, float(disparity.max()) or 1.0))
        written += [stem.with_suffix(".pfm"), stem.with_suffix(".png")]
    return written
