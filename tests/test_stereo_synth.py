"""The layered stereo generator: exact disparity and occlusion, determinism, warping consistency."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from visionflow.data.batching import image_to_tensor
from visionflow.data.stereo import find_pairs, read_pair
from visionflow.data.synth.stereo import (Layer, StereoSceneSpec, build_layers, render_layers, render_scene,
                                          scene_rng, write_stereo_dataset)
from visionflow.tasks.stereo.network import warp_right_to_left

TINY = StereoSceneSpec(height=32, width=64, max_disparity=16.0, supersample=1)
# No camera differences: the same surface point has the same colour in both views.
CLEAN = replace(TINY, noise_std=0.0, blur_probability=0.0, photometric_difference=0.0,
                specular_probability=0.0, vignetting=0.0)


def _flat(texture_seed: int, d: float, inside) -> Layer:
    texture = np.random.default_rng(texture_seed).uniform(0, 1, (40, 120, 3)).astype(np.float32)
    return Layer(0.0, 0.0, d, inside, texture, 1.0, (-2.0, -2.0), (1.0, 0.0, 0.0))


def test_fronto_parallel_layers_give_exact_disparity_occlusion_and_pixels():
    """Background at d=2, a square (x in [20, 30)) at d=6: everything can be checked by hand."""
    layers = [_flat(0, 2.0, lambda x, y: np.ones(np.broadcast(x, y).shape, bool)),
              _flat(1, 6.0, lambda x, y: (x >= 19.5) & (x < 29.5) & (y >= 7.5) & (y < 19.5))]
    scene = render_layers(layers, CLEAN, np.random.default_rng(0))
    rows = slice(8, 20)
    expected = np.full(64, 2.0)
    expected[20:30] = 6.0
    np.testing.assert_array_equal(scene.disparity[rows], np.broadcast_to(expected, (12, 64)))
    # Occluded: x < 2 (falls off the right image) and background x in [16, 20) (behind the square's
    # right-view footprint [14, 24)); nothing else.
    occluded = np.zeros(64, bool)
    occluded[:2] = True
    occluded[16:20] = True
    np.testing.assert_array_equal(~scene.nonoccluded[rows], np.broadcast_to(occluded, (12, 64)))
    # Integer disparities: every visible left pixel equals its right match exactly.
    ys, xs = np.nonzero(scene.nonoccluded)
    match = xs - scene.disparity[ys, xs].astype(int)
    np.testing.assert_array_equal(scene.left[ys, xs], scene.right[ys, match])


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    splits = {"train": 3, "test": 2}
    write_stereo_dataset(tmp_path / "a", TINY, splits, seed=5, progress=False, workers=1)
    write_stereo_dataset(tmp_path / "b", TINY, splits, seed=5, progress=False, workers=2)
    write_stereo_dataset(tmp_path / "c", TINY, splits, seed=6, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 * 5 + 1  # 5 files per scene + index.json
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/train/000000/im0.png").read_bytes() != (tmp_path / "c/train/000000/im0.png").read_bytes()
    pair = read_pair(find_pairs(tmp_path / "a", "train")[0])  # the standard reader reads it back
    assert pair.disparity.shape == (32, 64) and pair.nonoccluded.dtype == bool and pair.max_disparity == 16


def test_disparity_stays_in_range_and_scenes_vary():
    scenes = [render_scene(TINY, scene_rng(0, "train", i)) for i in range(12)]
    for scene in scenes:
        assert np.isfinite(scene.disparity).all()
        assert scene.disparity.min() >= 0 and scene.disparity.max() <= TINY.max_disparity
        assert 0.3 < scene.nonoccluded.mean() < 1.0
    assert len({round(float(s.disparity.mean()), 3) for s in scenes}) == len(scenes)


def _warp_error(scene, disparity, mask) -> float:
    warped, inside = warp_right_to_left(image_to_tensor(scene.right)[None],
                                        torch.from_numpy(disparity)[None, None])
    error = (image_to_tensor(scene.left)[None] - warped).abs().mean(1)[0]
    keep = torch.from_numpy(mask) & (inside[0, 0] > 0)
    return float(error[keep].mean())


@pytest.mark.parametrize("index", range(4))
def test_warping_the_right_image_by_the_truth_reproduces_the_left(index):
    """Slanted planes, sub-pixel disparities, anti-aliased edges: still a close match where visible."""
    scene = render_scene(replace(CLEAN, supersample=2), scene_rng(1, "test", index))
    visible = _warp_error(scene, scene.disparity, scene.nonoccluded)
    shifted = _warp_error(scene, scene.disparity + 1.5, scene.nonoccluded)
    assert visible < 0.03
    assert visible < shifted / 3


def test_leaves_are_narrow_long_and_in_front_of_the_background():
    """Scenes of a background and leaves only: every leaf is at most 12 px wide (inscribed
    radius <= 6 px), several times longer than wide, and nearer than the background over
    (nearly) all of its part inside the frame, so the left view sees it."""
    spec = replace(StereoSceneSpec(), min_objects=0, max_objects=0, max_thin=0, ground_probability=0.0,
                   max_leaves=6)
    ys, xs = np.mgrid[-200:300, -200:360].astype(np.float64)  # the frame and far around it
    frame_y, frame_x = np.mgrid[0:spec.height, 0:spec.width].astype(np.float64)
    leaves, in_frame, in_front = 0, 0, 0
    for index in range(8):
        layers = build_layers(spec, scene_rng(3, "train", index))
        background = layers[0].disparity(frame_x, frame_y)
        for leaf in layers[1:]:
            leaves += 1
            shape = np.pad(leaf.inside(xs, ys), 1).astype(np.uint8)
            radius = cv2.distanceTransform(shape, cv2.DIST_L2, 5).max()
            assert 0.5 <= radius <= 6.5
            assert shape.sum() > 8 * radius ** 2  # a strip, not a blob
            covered = leaf.inside(frame_x, frame_y)
            in_frame += int(covered.sum())
            in_front += int((leaf.disparity(frame_x, frame_y) > background)[covered].sum())
    assert leaves >= 16 and in_frame > 0
    assert in_front / in_frame > 0.95
