"""Keypoint heatmaps: Gaussian targets and sub-pixel decoding. Pure torch.

Coordinates are pixels of the network's input crop with pixel centres at
integers (OpenCV's convention). A heatmap of stride ``s`` has one cell per
``s x s`` crop pixels; cell ``j``'s centre is crop coordinate ``(j + 0.5) * s - 0.5``.

Decoding takes each map's argmax and refines it by one Newton step on the log
heatmap (a second-order Taylor expansion, as in DARK, Zhang et al. 2020): for a
Gaussian peak the log is exactly quadratic, so the step lands on the true
centre, between grid cells. ``modulate_sigma`` first smooths a predicted map
with a Gaussian of that width, which makes its peak closer to a Gaussian.
Every step is a tensor op without data-dependent control flow, so decoding
survives ``torch.export``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LOG_FLOOR = 1e-10  # heatmap values are clamped to this before the log


def to_heatmap_coords(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Crop pixels -> heatmap cells (any shape, last dim x, y or just values)."""
    return (points + 0.5) / stride - 0.5


def to_crop_coords(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Heatmap cells -> crop pixels."""
    return (points + 0.5) * stride - 0.5


def encode_heatmaps(keypoints: torch.Tensor, crop_size: tuple[int, int], stride: int, sigma: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets for labelled keypoints inside the crop.

    keypoints: float (N, K, 3) x, y (crop pixels), v (COCO visibility; 0 = not labelled);
    crop_size: (H, W) of the crop; sigma in heatmap cells.
    Returns heatmaps float (N, K, H / stride, W / stride) with peak 1 at each keypoint
    (all zero where unlabelled or outside the crop) and weights float (N, K), 1 for the
    keypoints that have a target.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"expected keypoints (N, K, 3), got {tuple(keypoints.shape)}")
    height, width = crop_size
    h, w = height // stride, width // stride
    xy = to_heatmap_coords(keypoints[..., :2], stride)  # (N, K, 2)
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    weights = ((keypoints[..., 2] > 0) & inside).to(keypoints.dtype)
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device)
    gx = torch.exp(-((xs - xy[..., 0:1]) ** 2) / (2 * sigma**2))  # (N, K, w)
    gy = torch.exp(-((ys - xy[..., 1:2]) ** 2) / (2 * sigma**2))  # (N, K, h)
    heatmaps = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]
    return heatmaps, weights


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """float (2r + 1,) normalised 1-D Gaussian, r = ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def modulate(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth each map with a Gaussian (separable, zero padding), keeping its maximum value.

    heatmaps: float (N, K, h, w).
    """
    n, k, h, w = heatmaps.shape
    kernel = gaussian_kernel(sigma, heatmaps.dtype).to(heatmaps.device)
    radius = (kernel.numel() - 1) // 2
    flat = heatmaps.reshape(n * k, 1, h, w)
    smooth = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, radius))
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    peak_before = flat.amax(dim=(2, 3), keepdim=True)
    peak_after = smooth.amax(dim=(2, 3), keepdim=True).clamp(min=LOG_FLOOR)
    return (smooth * peak_before / peak_after).reshape(n, k, h, w)


def decode_heatmaps(heatmaps: torch.Tensor, stride: int,
                    refine: Literal["taylor", "argmax"] = "taylor",
                    modulate_sigma: float | None = None) -> torch.Tensor:
    """Keypoints float (N, K, 3): x, y in crop pixels and the heatmap's peak value as score.

    heatmaps: float (N, K, h, w). ``refine="taylor"``: Newton step on the log heatmap at
    the argmax (moves at most one cell; skipped at the border and where the peak is not
    a maximum of the local quadratic); ``"argmax"``: the best cell's centre.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"expected heatmaps (N, K, h, w), got {tuple(heatmaps.shape)}")
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    score, index = flat.max(dim=-1)  # (N, K)
    x = (index % w).to(heatmaps.dtype)
    y = torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype)
    if refine == "taylor":
        source = modulate(heatmaps, modulate_sigma) if modulate_sigma else heatmaps
        dx, dy = _newton_offset(torch.log(source.clamp(min=LOG_FLOOR)).reshape(n, k, h * w), index, h, w)
        x, y = x + dx, y + dy
    elif refine != "argmax":
        raise ValueError(f"refine must be 'taylor' or 'argmax', got {refine!r}")
    xy = to_crop_coords(torch.stack([x, y], dim=-1), stride)
    return torch.cat([xy, score.unsqueeze(-1)], dim=-1)


def _newton_offset(log_maps: torch.Tensor, index: torch.Tensor, h: int, w: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell offsets (dx, dy) float (N, K) = -H^-1 g of the log map at ``index``.

    log_maps: float (N, K, h * w); index: int64 (N, K) argmax cells.
    """
    col, row = index % w, torch.div(index, w, rounding_mode="floor")
    interior = (col >= 1) & (col <= w - 2) & (row >= 1) & (row <= h - 2)

    def at(dc: int, dr: int) -> torch.Tensor:
        c = (col + dc).clamp(0, w - 1)
        r = (row + dr).clamp(0, h - 1)
        return torch.gather(log_maps, -1, (r * w + c).unsqueeze(-1)).squeeze(-1)

    centre = at(0, 0)
    gx = (at(1, 0) - at(-1, 0)) / 2
    gy = (at(0, 1) - at(0, -1)) / 2
    hxx = at(1, 0) - 2 * centre + at(-1, 0)
    hyy = at(0, 1) - 2 * centre + at(0, -1)
    hxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
    det = hxx * hyy - hxy**2
    # A maximum needs a negative-definite Hessian: hxx < 0 and det > 0.
    valid = interior & (hxx < 0) & (det > 1e-12)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    dx = -(hyy * gx - hxy * gy) / safe_det
    dy = -(hxx * gy - hxy * gx) / safe_det
    dx = torch.where(valid, dx.clamp(-1, 1), torch.zeros_like(dx))
    dy = torch.where(valid, dy.clamp(-1, 1), torch.zeros_like(dy))
    return dx, dy
