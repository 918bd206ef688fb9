"""A compact learned stereo matcher (pure torch).

Pipeline, for a rectified pair ``left, right: (N, 3, H, W)`` float in ``[0, 1]``
(``H, W`` multiples of :attr:`StereoNet.stride`; :class:`StereoInference` pads):

1. a shared 2D feature encoder gives features at 1, 1/2 and 1/4 resolution;
2. a group-wise correlation cost volume at 1/4 resolution over ``max_disparity / 4 + 2``
   candidate disparities, ``(N, G, D, H/4, W/4)``;
3. 3D aggregation (3D convolutions with one hourglass) to a matching cost
   ``(N, D, H/4, W/4)``;
4. soft-argmin regression ``d = sum_d d * softmax(-c_d)`` (sub-pixel, differentiable; at
   inference over the candidates next to the lowest cost only);
5. refinement at 1/2 and (optionally) full resolution: each level warps the right
   features by the current disparity at a few offsets, correlates them with the left
   features (a local cost volume around the estimate) and predicts a residual from
   that, the left features and the disparity;
6. x2 upsampling between levels, bilinear or convex (RAFT: each fine pixel a learned
   convex combination of its 3x3 coarse neighbours, so edges stay sharp).

Steps 5 and 6 are what keep sub-pixel accuracy and sharp edges through upsampling,
which a 1/4-resolution volume upsampled alone loses.

Disparity is in pixels of the input's resolution, ``x_right = x_left - d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv2d(c_in: int, c_out: int, stride: int = 1, dilation: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation,
                                         bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def conv3d(c_in: int, c_out: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, 3, stride, padding=1, bias=False), nn.BatchNorm3d(c_out)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv2d(channels, channels, dilation=dilation),
                                  conv2d(channels, channels, dilation=dilation, act=False))
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class FeatureEncoder(nn.Module):
    """Shared by both views: ``(N, 3, H, W) -> [(N, c1, H, W), (N, c2, H/2, W/2), (N, c4, H/4, W/4)]``.

    A 1/8 branch added back at 1/4 widens the receptive field (context for
    weakly textured regions) at little cost.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 24, 32)):
        super().__init__()
        c1, c2, c4 = channels
        self.level1 = nn.Sequential(conv2d(3, c1), conv2d(c1, c1))
        self.level2 = nn.Sequential(conv2d(c1, c2, stride=2), ResBlock(c2))
        self.level4 = nn.Sequential(conv2d(c2, c4, stride=2), ResBlock(c4), ResBlock(c4, dilation=2))
        self.level8 = nn.Sequential(conv2d(c4, c4, stride=2), ResBlock(c4, dilation=2))
        self.fuse = conv2d(2 * c4, c4)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.level1(image)
        f2 = self.level2(f1)
        f4 = self.level4(f2)
        f8 = F.interpolate(self.level8(f4), size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return [f1, f2, self.fuse(torch.cat([f4, f8], 1))]


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel standardisation: cancels exposure and gain differences between views."""
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True)
    return (image - mean) / (std + 1e-2)


def group_correlation_volume(left: torch.Tensor, right: torch.Tensor, max_disparity: int,
                             groups: int) -> torch.Tensor:
    """Group-wise correlation (GwcNet) ``(N, G, D, H, W)`` for disparities ``0 .. D-1`` at this scale.

    left, right: ``(N, C, H, W)`` with ``C`` divisible by ``groups``; entry ``[:, g, d, y, x]``
    is the mean over group ``g``'s channels of ``left[x] * right[x - d]`` (0 where ``x < d``).
    """
    n, c, h, w = left.shape
    if c % groups:
        raise ValueError(f"feature channels {c} are not divisible by groups {groups}")
    volume = left.new_zeros(n, groups, max_disparity, h, w)
    for d in range(max_disparity):
        if d == 0:
            product = left * right
        else:
            product = left[..., d:] * right[..., :-d]
        volume[:, :, d, :, d:] = product.view(n, groups, c // groups, h, w - d).mean(2)
    return volume


def soft_argmin(cost: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """``(N, D, H, W)`` matching cost (lower is better) -> ``(N, 1, H, W)`` expected disparity.

    ``d = sum_d d * softmax(-cost)_d`` in units of the volume's disparity steps. With
    ``radius``, only the candidates within ``radius`` steps of the lowest cost take part, so a
    second mode (the background behind a depth edge, a repeated texture) does not pull the
    estimate to a value between the two that neither surface has.
    """
    candidates = torch.arange(cost.shape[1], dtype=cost.dtype, device=cost.device).view(1, -1, 1, 1)
    if radius is not None:
        far = (candidates - cost.argmin(1, keepdim=True)).abs() > radius
        cost = cost.masked_fill(far, float("inf"))
    probability = F.softmax(-cost, dim=1)
    return (probability * candidates).sum(1, keepdim=True)


def warp_right_to_left(right: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``right`` at ``(x - d, y)`` for every left pixel (bilinear).

    right: ``(N, C, H, W)``; disparity: ``(N, 1, H, W)`` in px of this resolution.
    Returns the warped ``(N, C, H, W)`` and a float mask ``(N, 1, H, W)``: 1 where
    ``x - d`` lies inside the right image (outside, the warp reads zeros).
    """
    n, _, h, w = right.shape
    xs = torch.arange(w, dtype=right.dtype, device=right.device).view(1, 1, w).expand(n, h, w)
    ys = torch.arange(h, dtype=right.dtype, device=right.device).view(1, h, 1).expand(n, h, w)
    x_source = xs - disparity[:, 0]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack([2 * x_source / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = ((x_source >= 0) & (x_source <= w - 1)).to(right.dtype).unsqueeze(1)
    return warped, inside


def local_correlation(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor,
                      radius: int) -> torch.Tensor:
    """Correlations around an estimate: ``(N, 2 radius + 1, H, W)``.

    left, right: ``(N, C, H, W)`` features; disparity ``(N, 1, H, W)`` in px of this level.
    Channel ``k`` is the mean over channels of ``left * right`` sampled at ``x - d - o``
    with ``o = k - radius`` (linear interpolation along the row, zero outside the image):
    the same as correlating with :func:`warp_right_to_left` at ``d + o``. All offsets share
    one fractional part, so ``2 radius + 2`` whole-pixel gathers serve them all, and the
    interpolation is applied to the correlations (linear in the sampled features); on a
    CPU this is about a third faster than ``2 radius + 1`` bilinear warps, forward and backward.
    """
    n, c, h, w = right.shape
    source = torch.arange(w, dtype=disparity.dtype, device=disparity.device) - disparity
    column = source.floor()
    fraction = source - column  # the gradient to the disparity flows through this
    column = column.long()
    # dots[j]: correlation with the right features at whole column (x - d) floored + j - radius
    dots = []
    for shift in range(-radius, radius + 2):
        index = column + shift
        inside = (index >= 0) & (index < w)
        sampled = right.gather(3, index.clamp(0, w - 1).expand(n, c, h, w))
        dots.append((left * sampled).mean(1, keepdim=True) * inside)
    # offset o samples columns floor - o (weight 1 - fraction) and floor - o + 1 (weight fraction)
    return torch.cat([(1 - fraction) * dots[radius - offset] + fraction * dots[radius - offset + 1]
                      for offset in range(-radius, radius + 1)], 1)


class Aggregation3D(nn.Module):
    """``(N, G, D, H, W)`` volume -> ``(N, D, H, W)`` cost, through one 3D hourglass."""

    def __init__(self, groups: int, channels: int):
        super().__init__()
        self.stem = nn.Sequential(conv3d(groups, channels), conv3d(channels, channels))
        self.down = nn.Sequential(conv3d(channels, 2 * channels, stride=2), conv3d(2 * channels, 2 * channels))
        self.up = nn.Sequential(nn.ConvTranspose3d(2 * channels, channels, 4, 2, 1, bias=False),
                                nn.BatchNorm3d(channels))
        self.head = nn.Sequential(conv3d(channels, channels), nn.Conv3d(channels, 1, 3, padding=1))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.stem(volume)
        x = F.leaky_relu(x + self.up(self.down(x)), 0.1)
        return self.head(x)[:, 0]


class LocalRefinement(nn.Module):
    """One refinement level: local correlation around the current estimate -> residual disparity.

    Correlates the left features with the right features warped at ``d + o`` for
    offsets ``o`` in ``{-radius, ..., radius}`` (px of this level), then a small
    dilated conv stack maps (correlations, left features, d / scale) to a residual.
    """

    def __init__(self, feature_channels: int, channels: int, radius: int, dilations: tuple[int, ...],
                 disparity_scale: float):
        super().__init__()
        self.radius = radius
        self.disparity_scale = disparity_scale  # normalises d as an input
        c_in = 2 * radius + 1 + feature_channels + 1
        layers = [conv2d(c_in, channels)] + [conv2d(channels, channels, dilation=d) for d in dilations]
        self.body = nn.Sequential(*layers)
        self.residual = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)

    def forward(self, left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (refined disparity ``(N, 1, H, W)``, hidden features ``(N, channels, H, W)``)."""
        correlations = local_correlation(left, right, disparity, self.radius)
        hidden = self.body(torch.cat([correlations, left, disparity / self.disparity_scale], 1))
        return F.relu(disparity + self.residual(hidden)), hidden


def convex_upsample(disparity: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """RAFT's learned upsampling: each fine pixel is a convex combination of its 3x3 coarse neighbours.

    disparity ``(N, 1, h, w)`` in coarse px; mask ``(N, 9 * factor^2, h, w)`` logits ->
    ``(N, 1, factor * h, factor * w)`` in fine px. Edges stay sharp (no value is invented
    between two surfaces) and sub-pixel values survive.
    """
    n, _, h, w = disparity.shape
    weights = mask.view(n, 1, 9, factor, factor, h, w).softmax(2)
    neighbours = F.unfold(disparity * factor, (3, 3), padding=1).view(n, 1, 9, 1, 1, h, w)
    fine = (weights * neighbours).sum(2)  # (N, 1, factor, factor, h, w)
    return fine.permute(0, 1, 4, 2, 5, 3).reshape(n, 1, factor * h, factor * w)


class Upsampler(nn.Module):
    """x2 upsampling of a disparity map: bilinear, or convex with a mask predicted from ``guide``."""

    def __init__(self, guide_channels: int, convex: bool):
        super().__init__()
        self.mask = nn.Sequential(conv2d(guide_channels, 32), nn.Conv2d(32, 9 * 4, 1)) if convex else None

    def forward(self, disparity: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return F.interpolate(disparity * 2, scale_factor=2, mode="bilinear", align_corners=False)
        return convex_upsample(disparity, self.mask(guide), 2)


class StereoNet(nn.Module):
    """``forward(left, right)`` -> list of disparities ``(N, 1, H, W)`` in input px, coarsest first.

    The last entry is the final estimate; the earlier ones (1/4 volume, 1/2 refinement,
    upsampled to full size) are for deep supervision during training. ``with_cost=True``
    also returns the 1/4 volume's matching cost ``(N, max_disparity / 4 + 2, H/4, W/4)``
    (candidate ``k`` is ``4 k`` px), for a loss on its distribution.

    The refinement starts from a soft-argmin over only the candidates within
    ``argmin_radius`` volume steps of the lowest cost (``None``: all), in training and at
    inference alike, so it learns to refine the estimate it is given at test time; the 1/4
    entry, which is only supervised, weighs every candidate so each gets a gradient.
    """

    stride = 8  # H and W must be multiples of this (a 1/4 volume with a stride-2 hourglass)

    def __init__(self, max_disparity: int = 48, channels: tuple[int, int, int] = (16, 24, 32),
                 groups: int = 8, aggregation_channels: int = 16, refine_channels: tuple[int, int] = (32, 16),
                 refine_radius: int = 2, upsample: str = "convex", argmin_radius: int | None = None):
        super().__init__()
        self.argmin_radius = argmin_radius
        if max_disparity % 8:
            raise ValueError(f"max_disparity must be a multiple of 8, got {max_disparity}")
        self.max_disparity = max_disparity
        # 1/4-resolution candidates 0 .. max/4 + 1: the range ends inside the volume, not at its edge
        # (soft-argmin cannot reach the last candidate). Even, for the stride-2 hourglass.
        self.volume_depth = max_disparity // 4 + 2
        self.groups = groups
        self.encoder = FeatureEncoder(channels)
        self.aggregation = Aggregation3D(groups, aggregation_channels)
        if upsample not in ("bilinear", "convex"):
            raise ValueError(f"upsample must be 'bilinear' or 'convex', got {upsample!r}")
        convex = upsample == "convex"
        self.up_quarter = Upsampler(channels[2], convex)
        self.refine_half = LocalRefinement(channels[1], refine_channels[0], refine_radius, (1, 2, 4, 1),
                                           max_disparity / 2)
        self.up_half = Upsampler(refine_channels[0], convex)
        # refine_channels[1] == 0: no full-resolution matching, the x2 upsampling gives the result.
        self.refine_full = LocalRefinement(channels[0], refine_channels[1], refine_radius, (1, 2, 1),
                                           max_disparity) if refine_channels[1] else None

    def forward(self, left: torch.Tensor, right: torch.Tensor, with_cost: bool = False
                ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        h, w = left.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of {self.stride}; pad it "
                             f"(StereoInference does)")
        both = self.encoder(normalize_image(torch.cat([left, right], 0)))
        (l1, r1), (l2, r2), (l4, r4) = (f.chunk(2, 0) for f in both)
        volume = group_correlation_volume(l4, r4, self.volume_depth, self.groups)
        cost = self.aggregation(volume)
        # 1/4 px. The refinement starts from the best candidate's peak; the supervised 1/4
        # estimate weighs every candidate, so each gets a gradient.
        start = soft_argmin(cost, self.argmin_radius)
        d4 = soft_argmin(cost) if self.argmin_radius is not None else start
        d2, hidden = self.refine_half(l2, r2, self.up_quarter(start, l4))  # 1/2 px
        d1 = self.up_half(d2, hidden)
        if self.refine_full is not None:
            d1, _ = self.refine_full(l1, r1, d1)
        full = (h, w)
        disparities = [F.interpolate(d4 * 4, size=full, mode="bilinear", align_corners=False),
                       F.interpolate(d2 * 2, size=full, mode="bilinear", align_corners=False), d1]
        return (disparities, cost) if with_cost else disparities


class StereoInference(nn.Module):
    """The exported model: one input tensor, any size.

    ``forward(pair)``: pair ``(N, 6, H, W)`` float32 in ``[0, 1]``, channels
    ``[left RGB, right RGB]`` of a rectified pair -> disparity ``(N, 1, H, W)`` in px
    (left image, ``x_right = x_left - d``). Pads H, W past the net's stride (edge
    replication) and crops back. Disparities beyond ``max_disparity`` (a buffer, so
    it survives export) need the caller to downscale first:
    :func:`infer_disparity` does.
    """

    def __init__(self, net: StereoNet):
        super().__init__()
        self.net = net
        self.register_buffer("max_disparity", torch.tensor(float(net.max_disparity)))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        h, w = pair.shape[-2:]
        stride = self.net.stride
        # Always pad by 1..stride px (never 0), so the final crop is a real crop for every size:
        # torch.export then traces one branch that holds for all H, W.
        pad_h, pad_w = stride - h % stride, stride - w % stride
        padded = F.pad(pair, (0, pad_w, 0, pad_h), mode="replicate")
        disparity = self.net(padded[:, :3], padded[:, 3:])[-1]
        return disparity[..., :h, :w]


PROBE_WIDTH_PER_DISPARITY = 4.0  # a probe assumes disparities below a quarter of the image width
MAX_UPSCALE = 2.0  # pairs are matched enlarged up to this much (4x the pixels per pass)
MAX_WINDOW_PASSES = 4  # disparity windows per pair before the pair is matched smaller
AGREEMENT_PX = 2.0  # the enlarged estimate is kept where it lies this close (input px) to the consensus


def _resized(pair: torch.Tensor, scale: float) -> torch.Tensor:
    """``pair`` resized by ``1 / scale`` (antialiased when shrinking, bicubic when enlarging)."""
    h, w = pair.shape[-2:]
    if scale == 1.0:
        return pair
    size = (max(8, round(h / scale)), max(8, round(w / scale)))
    if scale > 1.0:
        return F.interpolate(pair, size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(pair, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def _to_input_size(disparity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A disparity map matched at another size, resized to ``size`` with its values rescaled."""
    if tuple(disparity.shape[-2:]) == tuple(size):
        return disparity
    factor = size[1] / disparity.shape[-1]
    return F.interpolate(disparity * factor, size=size, mode="bilinear", align_corners=False,
                         antialias=factor < 1.0)


def _shift_right_view(pair: torch.Tensor, offset: int) -> torch.Tensor:
    """The right image moved ``offset`` px right (edge replicated): disparities drop by ``offset``."""
    if offset == 0:
        return pair
    right = F.pad(pair[:, 3:, :, : pair.shape[-1] - offset], (offset, 0, 0, 0), mode="replicate")
    return torch.cat([pair[:, :3], right], 1)


def window_offsets(max_disparity: float, trained_max: float) -> list[int]:
    """Right-view shifts that tile ``[0, max_disparity]`` with windows of the model's range, half overlapping."""
    step = trained_max / 2
    count = max(0, math.ceil((max_disparity - trained_max) / step)) + 1
    return [round(k * step) for k in range(count)]


def _match_in_windows(model: nn.Module, pair: torch.Tensor, scale: float, trained_max: float,
                      max_disparity: float, guide: torch.Tensor) -> torch.Tensor:
    """Disparity ``(N, 1, H, W)`` in input px, matched at ``1 / scale`` of the input's size.

    The right view shifted ``o`` px right shows the model disparities ``o .. o + trained_max``;
    every pixel takes the window whose centre is nearest ``guide`` (input px, input size).
    """
    size = tuple(pair.shape[-2:])
    scaled = _resized(pair, scale)
    offsets = window_offsets(max_disparity / scale, trained_max)
    if len(offsets) == 1:
        return _to_input_size(model(scaled), size)
    guide = _to_input_size(guide, tuple(scaled.shape[-2:]))
    nearest = torch.full_like(guide, float("inf"))
    result = torch.zeros_like(guide)
    for offset in offsets:
        estimate = model(_shift_right_view(scaled, offset)) + offset
        distance = (guide - (offset + trained_max / 2)).abs()
        nearer = distance < nearest
        result = torch.where(nearer, estimate, result)
        nearest = torch.where(nearer, distance, nearest)
    return _to_input_size(result, size)


def fill_out_of_view(disparity: torch.Tensor) -> torch.Tensor:
    """Pixels the right camera did not see take the disparity of their row's nearest one it did.

    disparity: ``(N, 1, H, W)`` left-image px. Pixel ``x`` matches ``x - d`` in the right view;
    where that is left of the image (``x - d < 0``) the model had nothing to match and its
    estimate is an extrapolation. Such a pixel takes the disparity of the nearest pixel to its
    right on the same row whose match is inside the view (rows without one are kept), as the
    SGBM baseline's unmatched pixels are filled along their row (``fill_invalid``). What it
    changes on the bench pairs: bench/stereo.md.
    """
    width = disparity.shape[-1]
    columns = torch.arange(width, dtype=disparity.dtype, device=disparity.device).expand_as(disparity)
    seen = columns - disparity >= 0
    # for every column, the first column at or right of it that is seen (width: none)
    seen_columns = torch.where(seen, columns, torch.full_like(columns, width))
    nearest_seen = seen_columns.flip(-1).cummin(-1).values.flip(-1)
    filled = disparity.gather(-1, nearest_seen.clamp(max=width - 1).long())
    return torch.where(~seen & (nearest_seen < width), filled, disparity)


@torch.no_grad()
def infer_disparity(model: nn.Module, pair: torch.Tensor, trained_max: float,
                    max_disparity: float | None = None) -> torch.Tensor:
    """Disparity ``(N, 1, H, W)`` (px of the input) for pairs ``(N, 6, H, W)`` of any size and range.

    model: maps ``(N, 6, h, w) -> (N, 1, h, w)`` (:class:`StereoInference` or its exported copy)
    and sees disparities ``0 .. trained_max``. Three estimates at three scales:

    - *coarse*: the pair resized until its range ``max_disparity`` just fits the model (one
      pass; enlarged at most :data:`MAX_UPSCALE`, and then it is also the enlarged estimate);
    - *native*: at the pair's own size;
    - *enlarged*: up to :data:`MAX_UPSCALE` larger. The model's errors are roughly constant in
      its own pixels, so this one is the most precise; but the model sees less context per
      pixel, and on weakly textured or periodic surfaces it errs more often by whole pixels.

    A range wider than the model's is matched in half-overlapping windows (the coarse estimate
    picks each pixel's window); a pair whose range needs more than :data:`MAX_WINDOW_PASSES`
    windows is shrunk (native and enlarged then coincide). The result is the enlarged estimate
    wherever it lies within :data:`AGREEMENT_PX` of the per-pixel median of the three, else
    that median: precision where the scales agree, the majority where they do not. Last,
    pixels whose match falls outside the right view are filled (:func:`fill_out_of_view`).

    With ``max_disparity=None`` the range is probed: a first pass at a scale where the range
    would fit if it were below a quarter of the image width estimates the 99.5th percentile
    disparity (plus 15 %).
    """
    size = tuple(pair.shape[-2:])
    if max_disparity is None:
        probe_scale = max(1.0, size[1] / (PROBE_WIDTH_PER_DISPARITY * trained_max))
        probe = _to_input_size(model(_resized(pair, probe_scale)), size)
        sample = probe.flatten()[:: max(1, probe.numel() // 100_000)]
        max_disparity = float(torch.quantile(sample, 0.995)) * 1.15
    return fill_out_of_view(_matched_across_scales(model, pair, trained_max, max_disparity))


def _matched_across_scales(model: nn.Module, pair: torch.Tensor, trained_max: float,
                           max_disparity: float) -> torch.Tensor:
    """The coarse, native and enlarged estimates fused as :func:`infer_disparity` says: ``(N, 1, H, W)``."""
    size = tuple(pair.shape[-2:])
    widest = trained_max * (1 + (MAX_WINDOW_PASSES - 1) / 2)  # what MAX_WINDOW_PASSES windows cover
    coarse_scale = max(1.0 / MAX_UPSCALE, max_disparity / trained_max)  # input px per matched px
    native_scale = max(1.0, max_disparity / widest)
    enlarged_scale = max(1.0 / MAX_UPSCALE, max_disparity / widest)
    coarse = _to_input_size(model(_resized(pair, coarse_scale)), size)
    if enlarged_scale == coarse_scale:  # a narrow range: one pass, as enlarged as allowed
        return coarse
    enlarged = _match_in_windows(model, pair, enlarged_scale, trained_max, max_disparity, coarse)
    if enlarged_scale == native_scale:  # a range too wide to enlarge
        return enlarged
    native = coarse if native_scale == coarse_scale else \
        _match_in_windows(model, pair, native_scale, trained_max, max_disparity, coarse)
    consensus = torch.stack([coarse, native, enlarged]).median(0).values
    return torch.where((enlarged - consensus).abs() <= AGREEMENT_PX, enlarged, consensus)
