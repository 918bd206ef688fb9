"""A small residual backbone with a feature pyramid, trained from scratch (no weights to download).

Pure torch + torchvision. ``ResNetBackbone`` maps ``(N, 3, H, W)`` to features at
strides 4, 8, 16 and 32 (``c2`` .. ``c5``); ``PyramidBackbone`` adds torchvision's
``FeaturePyramidNetwork`` over a chosen subset and exposes ``out_channels``, which
is what torchvision's detection models expect of a backbone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

LEVEL_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def conv_bn(in_channels: int, out_channels: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                               nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, out_channels, stride),
                                  conv_bn(out_channels, out_channels, relu=False))
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """``(N, 3, H, W)`` -> ``{"c2": (N, channels[0], H/4, W/4), ..., "c5": (N, channels[3], H/32, W/32)}``.

    ``blocks[i]``: residual blocks in stage i (the first one strides by 2).
    H and W should be multiples of 32.
    """

    def __init__(self, channels: Sequence[int] = (24, 48, 96, 160), blocks: Sequence[int] = (1, 1, 2, 1),
                 in_channels: int = 3):
        super().__init__()
        if len(channels) != 4 or len(blocks) != 4:
            raise ValueError("channels and blocks need 4 entries (strides 4, 8, 16, 32)")
        self.channels = tuple(channels)
        self.stem = conv_bn(in_channels, max(channels[0] // 2, 8), stride=2)
        stages, previous = [], max(channels[0] // 2, 8)
        for out_channels, n_blocks in zip(channels, blocks):
            layers = [ResidualBlock(previous, out_channels, stride=2)]
            layers += [ResidualBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            previous = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        features = OrderedDict()
        for name, stage in zip(LEVEL_STRIDES, self.stages):
            x = stage(x)
            features[name] = x
        return features


class PyramidBackbone(nn.Module):
    """Backbone + FPN: ``(N, 3, H, W)`` -> ``{"p2": (N, out_channels, H/4, W/4), ...}`` for ``levels``.

    ``levels`` picks the backbone outputs the pyramid is built on, e.g. ``("c3", "c4", "c5")``
    gives ``p3``, ``p4``, ``p5``. The input is normalised by the caller (torchvision's
    detection transform, or the detector's own forward).
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int], out_channels: int,
                 levels: Sequence[str] = ("c2", "c3", "c4", "c5")):
        super().__init__()
        unknown = [level for level in levels if level not in LEVEL_STRIDES]
        if unknown:
            raise ValueError(f"unknown pyramid levels {unknown}; valid: {', '.join(LEVEL_STRIDES)}")
        self.body = ResNetBackbone(channels, blocks)
        self.levels = tuple(levels)
        index = {name: i for i, name in enumerate(LEVEL_STRIDES)}
        self.fpn = FeaturePyramidNetwork([channels[index[level]] for level in levels], out_channels)
        self.out_channels = out_channels

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(LEVEL_STRIDES[level] for level in self.levels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        # channels-last lets oneDNN (CPU) and tensor cores (GPU) run the convolutions faster
        features = self.body(x.contiguous(memory_format=torch.channels_last))
        pyramid = self.fpn(OrderedDict((level, features[level]) for level in self.levels))
        return OrderedDict((f"p{level[1:]}", value) for level, value in pyramid.items())


class TopDownNeck(nn.Module):
    """U-Net-style top-down path: ``{"c2": ..., "c5": ...}`` -> ``(N, out_channels, H/4, W/4)``.

    Unlike an FPN, whose levels mix linearly before one output convolution, every
    merge here (upsampled deeper map + 1x1-projected skip) goes through a 3x3
    conv-BN-ReLU, so coarse shape evidence and fine position mix non-linearly on the
    way down to stride 4 (CenterNet's DLA/deconvolution necks do the same).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
            for c in in_channels)
        self.fuse = nn.ModuleList(conv_bn(out_channels, out_channels) for _ in in_channels)

    def forward(self, features: "OrderedDict[str, torch.Tensor]") -> torch.Tensor:
        levels = list(features.values())  # finest first
        x = self.fuse[-1](self.laterals[-1](levels[-1]))
        for level, lateral, fuse in zip(levels[-2::-1], list(self.laterals)[-2::-1], list(self.fuse)[-2::-1]):
            x = nn.functional.interpolate(x, size=level.shape[-2:], mode="nearest")
            x = fuse(x + lateral(level))
        return x
