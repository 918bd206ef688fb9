"""Stereo network pieces: soft-argmin, correlation volume, warping, any-size inference, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionflow.tasks.stereo.losses import (self_supervised_losses, supervised_disparity_loss,
                                            valid_disparity_mask, volume_distribution_loss)
from visionflow.tasks.stereo.network import (MAX_UPSCALE, MAX_WINDOW_PASSES, StereoInference, StereoNet,
                                             convex_upsample, fill_out_of_view, group_correlation_volume,
                                             infer_disparity, local_correlation, soft_argmin, warp_right_to_left,
                                             window_offsets)


@pytest.mark.parametrize("k", [0, 3, 11])
def test_soft_argmin_of_a_one_hot_cost_returns_that_disparity(k):
    cost = torch.zeros(2, 12, 3, 4)
    cost[:, k] = -50.0  # the lowest cost by far
    np.testing.assert_allclose(soft_argmin(cost).numpy(), np.full((2, 1, 3, 4), float(k)), atol=1e-4)


def test_soft_argmin_between_two_equal_minima_is_their_mean():
    cost = torch.full((1, 8, 1, 1), 50.0)
    cost[0, 2] = cost[0, 5] = 0.0
    assert abs(float(soft_argmin(cost)) - 3.5) < 1e-4


def test_soft_argmin_within_a_radius_ignores_a_distant_second_minimum():
    cost = torch.full((1, 12, 1, 1), 50.0)
    cost[0, 2] = cost[0, 9] = 0.0
    cost[0, 1], cost[0, 3] = 1.0, 2.0  # the lower neighbour pulls below 2
    everything = float(soft_argmin(cost))
    near_best = float(soft_argmin(cost, radius=1))
    weights = torch.softmax(-torch.tensor([1.0, 0.0, 2.0]), 0)
    assert abs(near_best - float((weights * torch.tensor([1.0, 2.0, 3.0])).sum())) < 1e-5
    assert everything > near_best + 2  # pulled towards the second minimum, where neither surface is


def test_the_refinement_starts_from_the_best_peak_and_the_quarter_estimate_weighs_all():
    torch.manual_seed(0)
    nets = [StereoNet(max_disparity=16, channels=(4, 8, 8), groups=4, aggregation_channels=4,
                      refine_channels=(4, 0), argmin_radius=radius) for radius in (0, None)]
    nets[1].load_state_dict(nets[0].state_dict())
    left, right = torch.rand(2, 1, 3, 16, 32).unbind(0)
    for train in (True, False):  # the same rule in training and at inference
        (near, cost), (everything, _) = (net.train(train)(left, right, with_cost=True) for net in nets)
        assert cost.shape == (1, 16 // 4 + 2, 4, 8)  # (N, max_disparity / 4 + 2, H/4, W/4)
        assert torch.equal(near[0], everything[0])  # the supervised 1/4 entry: every candidate
        assert not torch.allclose(near[-1], everything[-1])  # refined from the best candidate alone


def test_volume_distribution_loss_is_least_for_the_wanted_distribution():
    target = torch.full((1, 1, 8, 8), 10.0)  # 2.5 volume steps everywhere
    target[..., :4, :4] = float("inf")  # one invalid 1/4 cell
    steps = torch.arange(6.0).view(1, -1, 1, 1)
    spread = 0.5
    wanted_cost = ((steps - 2.5).abs() / spread).expand(1, 6, 2, 2).clone()
    best = volume_distribution_loss(wanted_cost, target, 48, spread)
    wanted = torch.softmax(-wanted_cost[0, :, 0, 0], 0)
    entropy = float(-(wanted * wanted.log()).sum())
    assert abs(float(best) - entropy) < 1e-5  # cross-entropy of a distribution with itself
    shifted = volume_distribution_loss(((steps - 4.0).abs() / spread).expand(1, 6, 2, 2), target, 48, spread)
    flat = volume_distribution_loss(torch.zeros(1, 6, 2, 2), target, 48, spread)
    assert float(shifted) > float(best) + 0.5 and float(flat) > float(best) + 0.5
    cost = torch.zeros(1, 6, 3, 3, requires_grad=True)  # padded: cropped to the target's 2x2 cells
    empty = volume_distribution_loss(cost, torch.full_like(target, float("inf")), 48, spread)
    assert float(empty) == 0 and empty.requires_grad


def test_correlation_volume_peaks_at_the_true_shift():
    generator = torch.Generator().manual_seed(0)
    right = torch.randn(1, 128, 6, 40, generator=generator)
    left = torch.zeros_like(right)
    left[..., 3:] = right[..., :-3]  # left[x] = right[x - 3]: disparity 3
    volume = group_correlation_volume(left, right, 8, groups=4)
    assert volume.shape == (1, 4, 8, 6, 40)
    assert (volume.mean(1)[0, :, :, 10:].argmax(0) == 3).all()
    assert (volume[:, :, 5, :, :5] == 0).all()  # no right pixel to compare with


def test_warp_by_integer_disparity_is_exact_and_reports_outside():
    right = torch.arange(2 * 3 * 4 * 10, dtype=torch.float32).view(2, 3, 4, 10)
    warped, inside = warp_right_to_left(right, torch.full((2, 1, 4, 10), 2.0))
    torch.testing.assert_close(warped[..., 2:], right[..., :-2])
    assert (inside[..., :2] == 0).all() and (inside[..., 2:] == 1).all()


def test_warp_gradcheck_on_disparity():
    right = torch.randn(1, 2, 3, 7, dtype=torch.float64)
    disparity = (torch.rand(1, 1, 3, 7, dtype=torch.float64) * 2 + 1.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: warp_right_to_left(right, d)[0], (disparity,))


def test_local_correlation_equals_correlating_with_the_bilinear_warp():
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(2, 5, 4, 12, dtype=torch.float64, generator=generator).requires_grad_()
    right = torch.randn(2, 5, 4, 12, dtype=torch.float64, generator=generator).requires_grad_()
    # Fractional disparities, some sampling past either border of the right view.
    disparity = (torch.rand(2, 1, 4, 12, dtype=torch.float64, generator=generator) * 14 - 1).requires_grad_()
    radius = 2
    warped = [warp_right_to_left(right, disparity + offset)[0] for offset in range(-radius, radius + 1)]
    expected = torch.cat([(left * w).mean(1, keepdim=True) for w in warped], 1)
    gathered = local_correlation(left, right, disparity, radius)
    torch.testing.assert_close(gathered, expected)
    weights = torch.randn(gathered.shape, dtype=torch.float64, generator=generator)
    grads = torch.autograd.grad((gathered * weights).sum(), (left, right, disparity))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (left, right, disparity))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_inference_pads_any_size_and_keeps_shape():
    model = StereoInference(StereoNet(max_disparity=16, channels=(4, 8, 8), groups=4,
                                      aggregation_channels=4, refine_channels=(4, 4))).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 6, 21, 35))
    assert out.shape == (2, 1, 21, 35) and torch.isfinite(out).all() and (out >= 0).all()
    assert float(model.max_disparity) == 16


class ConstantDisparity(torch.nn.Module):
    """Answers 10 px everywhere and records the sizes it was given."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, pair):
        self.sizes.append(tuple(pair.shape[-2:]))
        return torch.full((pair.shape[0], 1, *pair.shape[-2:]), 10.0)


class BlockMatcher(torch.nn.Module):
    """A stand-in model that really matches, over disparities 0 .. max_disparity only (SAD, 5x5, integer)."""

    def __init__(self, max_disparity: int):
        super().__init__()
        self.max_disparity = max_disparity
        self.sizes = []

    def forward(self, pair):
        self.sizes.append(tuple(pair.shape[-2:]))
        left, right = pair[:, :3].mean(1, keepdim=True), pair[:, 3:].mean(1, keepdim=True)
        costs = []
        for d in range(self.max_disparity + 1):
            shifted = torch.nn.functional.pad(right[..., : right.shape[-1] - d], (d, 0, 0, 0), mode="replicate")
            costs.append(torch.nn.functional.avg_pool2d((left - shifted).abs(), 5, 1, 2))
        return torch.cat(costs, 1).argmin(1, keepdim=True).float()


def constant_disparity_pair(disparity: int, height: int = 48, width: int = 200) -> torch.Tensor:
    """A random smooth texture and the same texture seen ``disparity`` px further left: ``(1, 6, H, W)``."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.nn.functional.interpolate(
        torch.rand(1, 3, height // 2, (width + disparity) // 2, generator=generator),
        size=(height, width + disparity), mode="bilinear")
    return torch.cat([texture[..., :width], texture[..., disparity:]], 1)  # right[x - d] == left[x]


def test_wider_ranges_are_matched_coarse_then_enlarged_in_shifted_windows():
    model = BlockMatcher(48)
    out = infer_disparity(model, constant_disparity_pair(40), trained_max=48, max_disparity=60)
    # a coarse pass shrunk 60 / 48 x; then 2x enlarged (disparities up to 120 px) in four windows:
    # the right view shifted by 0, 24, 48 and 72 px; then at its own size in two (0 and 24 px)
    assert model.sizes == [(38, 160)] + [(96, 400)] * 4 + [(48, 200)] * 2
    assert out.shape == (1, 1, 48, 200)
    # 40 px is 80 at 2x: the coarse pass picks the 48-px window (centre 72), which sees 32 px,
    # inside the model's range: exact. Left pixels x < 40 have no match in the right view.
    visible = out[..., 2:-2, 44:-2]
    torch.testing.assert_close(visible, torch.full_like(visible, 40.0))


def test_window_offsets_tile_the_range_with_half_overlap():
    assert window_offsets(48, 48) == [0]
    assert window_offsets(70, 48) == [0, 24]
    assert window_offsets(96, 48) == [0, 24, 48]
    assert window_offsets(97, 48) == [0, 24, 48, 72]


def test_very_wide_ranges_are_shrunk_until_the_windows_are_few():
    model = ConstantDisparity()
    infer_disparity(model, torch.rand(1, 6, 40, 400), trained_max=16, max_disparity=160)
    # coarse at 10x smaller; then 160 / (16 * 2.5) = 4x smaller, where 4 windows cover 40 px
    # (too wide a range to enlarge: no pass at the pair's own size either)
    assert model.sizes[0] == (8, 40)
    assert model.sizes[1:] == [(10, 100)] * MAX_WINDOW_PASSES


def test_narrower_ranges_are_matched_enlarged_at_most_max_upscale():
    model = ConstantDisparity()
    out = infer_disparity(model, torch.rand(1, 6, 40, 80), trained_max=48, max_disparity=6)
    assert model.sizes == [(40 * MAX_UPSCALE, 80 * MAX_UPSCALE)]  # 2x, not 8x: 12 px fits one window
    torch.testing.assert_close(out, torch.full_like(out, 10.0 / MAX_UPSCALE))
    model.sizes.clear()
    out = infer_disparity(model, torch.rand(1, 6, 40, 80), trained_max=48, max_disparity=32)
    # 2x makes the range 64 px: a coarse pass enlarged 48 / 32 = 1.5x, windows at 0 and 24 px at
    # 2x, and one pass at the pair's own size
    assert model.sizes == [(60, 120), (80, 160), (80, 160), (40, 80)]
    # the coarse 10 px (13.3 at 2x) is nearest the first window's centre (24): 10 px at 2x, that
    # is 5 input px; the median of 6.7 (coarse), 10 (own size) and 5 is 6.7, within 2 px of 5
    torch.testing.assert_close(out, torch.full_like(out, 10.0 / MAX_UPSCALE))


class ScaleDependentDisparity(torch.nn.Module):
    """Answers ``answers[width]`` matched px for an input ``width`` px wide."""

    def __init__(self, answers: dict[int, float]):
        super().__init__()
        self.answers = answers

    def forward(self, pair):
        return torch.full((pair.shape[0], 1, *pair.shape[-2:]), self.answers[pair.shape[-1]])


@pytest.mark.parametrize("enlarged, expected", [(8.0, 4.0),     # 4 input px: within 2 px of the median (5)
                                                (40.0, 6.0),    # 20 input px: outvoted, the median (6) wins
                                                (2.0, 5.0)])    # 1 input px: outvoted by the median (5)
def test_the_enlarged_estimate_is_kept_only_where_it_agrees_with_the_other_scales(enlarged, expected):
    # a 40x80 pair, range 32: coarse at 1.5x (120 px wide) says 7.5 matched px = 5 input px,
    # the pair's own size (80 px) says 6, the 2x pass (160 px) says ``enlarged`` matched px
    model = ScaleDependentDisparity({120: 7.5, 80: 6.0, 160: enlarged})
    out = infer_disparity(model, torch.rand(1, 6, 40, 80), trained_max=48, max_disparity=32)
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_pixels_matched_outside_the_right_view_take_their_rows_nearest_seen_disparity():
    disparity = torch.tensor([[9.0, 7.0, 3.0, 2.0, 4.0, 1.0],    # x - d: -9 -6 -1  1  0  4
                              [0.0, 8.0, 1.0, 9.0, 5.0, 9.0],    # x - d:  0 -7  1 -6 -1 -4
                              [1.0, 2.0, 5.0, 6.0, 7.0, 8.0]])   # x - d: all < 0
    filled = fill_out_of_view(disparity[None, None])[0, 0]
    torch.testing.assert_close(filled[0], torch.tensor([2.0, 2.0, 2.0, 2.0, 4.0, 1.0]))
    # from the right only; unseen pixels with no seen one to their right keep their estimate
    torch.testing.assert_close(filled[1], torch.tensor([0.0, 1.0, 1.0, 9.0, 5.0, 9.0]))
    torch.testing.assert_close(filled[2], disparity[2])


def test_unknown_range_is_probed_then_matched_at_the_right_scale():
    model = ConstantDisparity()  # 10 px at the probe's size
    out = infer_disparity(model, torch.rand(1, 6, 100, 960), trained_max=48)
    # probe at 960 / (4 * 48) = 5x smaller: 10 px there is 50 px, * 1.15 = 57.5 px; the coarse
    # pass fits that to the model (1.2x smaller: 960 / (57.5 / 48) = 801.4)
    assert model.sizes[0] == (20, 192) and model.sizes[1] == (83, 801)
    # then 2x enlarged, where 115 px need four windows; then at its own size in two
    assert model.sizes[2:] == [(200, 1920)] * MAX_WINDOW_PASSES + [(100, 960)] * 2
    assert out.shape == (1, 1, 100, 960)


def test_supervised_loss_skips_invalid_and_out_of_range_pixels():
    target = torch.tensor([[[[1.0, float("inf"), 60.0, 4.0]]]])
    prediction = torch.tensor([[[[1.0, 0.0, 0.0, 6.0]]]], requires_grad=True)
    assert valid_disparity_mask(target, 48).tolist() == [[[[True, False, False, True]]]]
    loss = supervised_disparity_loss([prediction], target, [1.0], 48)
    # smooth L1 (beta 1): errors 0 and 2 -> (0 + 1.5) / 2
    assert abs(loss.item() - 0.75) < 1e-6
    loss.backward()
    assert prediction.grad[0, 0, 0, 1] == 0 and prediction.grad[0, 0, 0, 2] == 0
    empty = supervised_disparity_loss([prediction], torch.full_like(target, float("inf")), [1.0], 48)
    assert float(empty) == 0 and empty.requires_grad


def test_self_supervised_terms_prefer_the_true_disparity():
    generator = torch.Generator().manual_seed(0)
    right = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 24, 72, generator=generator), 3, 1, 1)
    left = torch.zeros_like(right)
    left[..., 4:] = right[..., :-4]  # constant disparity 4
    true = torch.full((1, 1, 24, 72), 4.0)
    right_view = torch.full((1, 1, 24, 72), 4.0)
    good = self_supervised_losses(true, right_view, left, right, 0.85, 48)
    bad = self_supervised_losses(true + 2, right_view + 2, left, right, 0.85, 48)
    assert good["photometric"] < bad["photometric"] / 3
    assert float(good["left_right"]) == 0 and float(good["smoothness"]) == 0
    inconsistent = self_supervised_losses(true, right_view + 3, left, right, 0.85, 48)
    assert abs(float(inconsistent["left_right"]) - 3 / 48) < 1e-6


def test_convex_upsampling_copies_a_chosen_neighbour_and_scales_disparity():
    disparity = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    mask = torch.full((1, 9 * 4, 3, 4), -30.0)
    mask.view(1, 9, 2, 2, 3, 4)[:, 4] = 30.0  # all weight on the centre neighbour
    fine = convex_upsample(disparity, mask, 2)
    assert fine.shape == (1, 1, 6, 8)
    torch.testing.assert_close(fine, 2 * disparity.repeat_interleave(2, 2).repeat_interleave(2, 3))
    uniform = convex_upsample(torch.full((1, 1, 3, 4), 5.0), torch.zeros(1, 36, 3, 4), 2)
    torch.testing.assert_close(uniform[..., 2:-2, 2:-2], torch.full((1, 1, 2, 4), 10.0))
