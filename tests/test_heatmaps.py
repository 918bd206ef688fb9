"""Heatmap targets and sub-pixel decoding."""

from __future__ import annotations

import pytest
import torch

from visionflow.tasks.pose.heatmaps import decode_heatmaps, encode_heatmaps, to_crop_coords, to_heatmap_coords

CROP = (64, 48)


def off_grid_points(stride: int, n: int = 40, seed: int = 0) -> torch.Tensor:
    """(1, n, 3) labelled points at least two cells inside the crop, at random sub-pixel positions."""
    g = torch.Generator().manual_seed(seed)
    margin = 2 * stride
    x = margin + torch.rand(n, generator=g) * (CROP[1] - 1 - 2 * margin)
    y = margin + torch.rand(n, generator=g) * (CROP[0] - 1 - 2 * margin)
    return torch.stack([x, y, torch.full((n,), 2.0)], dim=-1)[None]


@pytest.mark.parametrize("stride", [2, 4])
def test_encode_decode_recovers_points_below_a_tenth_of_a_pixel(stride):
    points = off_grid_points(stride)
    heatmaps, weights = encode_heatmaps(points, CROP, stride, sigma=1.5)
    assert heatmaps.shape == (1, 40, CROP[0] // stride, CROP[1] // stride) and weights.all()
    decoded = decode_heatmaps(heatmaps, stride, "taylor")
    error = (decoded[..., :2] - points[..., :2]).norm(dim=-1)
    assert error.max() < 0.1
    # Without the Taylor step the error is that of the grid (up to half a cell diagonal).
    coarse = (decode_heatmaps(heatmaps, stride, "argmax")[..., :2] - points[..., :2]).norm(dim=-1)
    assert coarse.max() > 10 * error.max() and coarse.max() <= stride * 0.5 * 2**0.5 + 1e-4


def test_peak_is_one_on_the_cell_of_the_point_and_scores_are_the_peak():
    point = torch.tensor([[[to_crop_coords(torch.tensor(5.0), 2).item(),
                            to_crop_coords(torch.tensor(7.0), 2).item(), 2.0]]])  # exactly cell (5, 7)
    heatmaps, _ = encode_heatmaps(point, CROP, 2, sigma=1.0)
    assert heatmaps[0, 0, 7, 5] == 1.0 and heatmaps[0, 0, 7, 6] == pytest.approx(torch.exp(torch.tensor(-0.5)))
    assert decode_heatmaps(heatmaps, 2)[0, 0].tolist() == pytest.approx([10.5, 14.5, 1.0])


def test_unlabelled_and_outside_points_get_no_target():
    points = torch.tensor([[[10.0, 10.0, 0.0], [60.0, 10.0, 2.0], [10.0, 10.0, 1.0]]])
    heatmaps, weights = encode_heatmaps(points, CROP, 2, sigma=1.5)
    assert weights.tolist() == [[0.0, 0.0, 1.0]]  # v = 0; x beyond the 48 px crop; v = 1 counts
    assert heatmaps[0, 0].abs().sum() == 0 and heatmaps[0, 1].abs().sum() == 0


def test_coordinate_maps_are_inverse():
    x = torch.tensor([-0.5, 0.0, 3.25, 47.5])
    for stride in (1, 2, 4):
        assert to_crop_coords(to_heatmap_coords(x, stride), stride) == pytest.approx(x)
    assert to_heatmap_coords(torch.tensor(0.5), 2) == 0.0  # cell 0 covers crop pixels 0 and 1


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"keypoints \(N, K, 3\), got \(3, 3\)"):
        encode_heatmaps(torch.zeros(3, 3), CROP, 2, 1.0)
    with pytest.raises(ValueError, match=r"heatmaps \(N, K, h, w\)"):
        decode_heatmaps(torch.zeros(2, 8, 8), 2)
