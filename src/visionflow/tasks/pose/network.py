"""Top-down keypoint networks on object crops. Pure torch.

Input: crops float (N, 3, H, W) in [0, 1], H and W multiples of 8. A small
encoder (three stride-2 levels) feeds one of two heads:

- ``heatmap``: a decoder back up to 1/``stride`` of the crop with skip
  connections, one heatmap per keypoint: float (N, K, H / stride, W / stride);
- ``regression``: the 1/8 feature map flattened into fully connected layers,
  giving per keypoint x, y as fractions of the crop width and height and a
  logit that the keypoint is labelled inside the crop: float (N, K, 3).

:class:`KeypointPredictor` wraps either with its decoding into keypoints
float (N, K, 3) = x, y in crop pixels and a score in [0, 1]; that is what the
registry stores.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from visionflow.tasks.pose.heatmaps import decode_heatmaps


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PoseEncoder(nn.Module):
    """Features at 1/2, 1/4 and 1/8 of the crop: ``[(N, c_i, H / 2**(i+1), W / 2**(i+1))]``."""

    def __init__(self, channels: tuple[int, int, int] = (24, 48, 96)):
        super().__init__()
        c1, c2, c3 = channels
        self.level1 = nn.Sequential(conv_bn_relu(3, c1, 2), conv_bn_relu(c1, c1))
        self.level2 = nn.Sequential(conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c2))
        self.level3 = nn.Sequential(conv_bn_relu(c2, c3, 2), conv_bn_relu(c3, c3), conv_bn_relu(c3, c3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.level1(x)
        f2 = self.level2(f1)
        return [f1, f2, self.level3(f2)]


class HeatmapHead(nn.Module):
    """Upsample 1/8 -> 1/4 (-> 1/2) with skips; 1x1 conv to K heatmaps.

    ``decoder="concat"``: each level concatenates the upsampled and the skip features and
    applies two 3x3 convs; ``"add"`` (cheaper): a 1x1 conv brings the upsampled features to
    the skip's width, adds them, and one 3x3 conv follows (FPN-style).
    """

    def __init__(self, channels: tuple[int, int, int], num_keypoints: int, stride: Literal[2, 4] = 2,
                 decoder: Literal["concat", "add"] = "concat"):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"heatmap stride must be 2 or 4, got {stride}")
        if decoder not in ("concat", "add"):
            raise ValueError(f"decoder must be 'concat' or 'add', got {decoder!r}")
        c1, c2, c3 = channels
        self.stride, self.decoder = stride, decoder
        self.up2 = self._level(c3, c2, decoder)
        self.up1 = self._level(c2, c1, decoder) if stride == 2 else None
        self.out = nn.Conv2d(c1 if stride == 2 else c2, num_keypoints, 1)

    @staticmethod
    def _level(coarse: int, fine: int, decoder: str) -> nn.ModuleDict:
        if decoder == "concat":
            return nn.ModuleDict({"fuse": nn.Sequential(conv_bn_relu(coarse + fine, fine), conv_bn_relu(fine, fine))})
        return nn.ModuleDict({"lateral": nn.Conv2d(coarse, fine, 1, bias=False), "fuse": conv_bn_relu(fine, fine)})

    def _up(self, level: nn.ModuleDict, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        if self.decoder == "concat":
            return level["fuse"](torch.cat([up, fine], dim=1))
        return level["fuse"](level["lateral"](up) + fine)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        x = self._up(self.up2, f3, f2)
        if self.up1 is not None:
            x = self._up(self.up1, x, f1)
        return self.out(x)


class RegressionHead(nn.Module):
    """Flattened 1/8 features -> (N, K, 3): x / W, y / H and a labelled-inside logit."""

    def __init__(self, channels: tuple[int, int, int], num_keypoints: int, crop_size: tuple[int, int],
                 hidden: int = 256):
        super().__init__()
        c3 = channels[2]
        self.num_keypoints = num_keypoints
        self.reduce = conv_bn_relu(c3, c3 // 2)
        cells = (crop_size[0] // 8) * (crop_size[1] // 8)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c3 // 2 * cells, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, 3 * num_keypoints))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.fc(self.reduce(features[2]))
        out = out.view(-1, self.num_keypoints, 3)
        return torch.cat([out[..., :2] + 0.5, out[..., 2:]], dim=-1)  # start at the crop centre


class PoseNet(nn.Module):
    """crops (N, 3, H, W) -> heatmaps (N, K, H/s, W/s) or regression (N, K, 3) (see module doc)."""

    def __init__(self, num_keypoints: int, crop_size: tuple[int, int], head: str = "heatmap",
                 channels: tuple[int, int, int] = (24, 48, 96), heatmap_stride: Literal[2, 4] = 2,
                 decoder: Literal["concat", "add"] = "concat"):
        super().__init__()
        if head not in ("heatmap", "regression"):
            raise ValueError(f"head must be 'heatmap' or 'regression', got {head!r}")
        if crop_size[0] % 8 or crop_size[1] % 8:
            raise ValueError(f"crop size {crop_size} must be multiples of 8")
        self.head_kind, self.crop_size, self.heatmap_stride = head, tuple(crop_size), heatmap_stride
        self.encoder = PoseEncoder(tuple(channels))
        self.head = (HeatmapHead(tuple(channels), num_keypoints, heatmap_stride, decoder) if head == "heatmap"
                     else RegressionHead(tuple(channels), num_keypoints, tuple(crop_size)))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # channels-last lets oneDNN (CPU) and tensor cores (GPU) run the convolutions faster
        return self.head(self.encoder(crops.contiguous(memory_format=torch.channels_last)))


def regression_keypoints(output: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
    """Regression output (N, K, 3) -> keypoints (N, K, 3): x, y in crop pixels, sigmoid score."""
    height, width = crop_size
    x = output[..., 0] * width - 0.5
    y = output[..., 1] * height - 0.5
    return torch.stack([x, y, torch.sigmoid(output[..., 2])], dim=-1)


class KeypointPredictor(nn.Module):
    """crops float (N, 3, H, W) in [0, 1] -> keypoints float (N, K, 3): x, y crop pixels, score.

    Heatmap scores are the heatmap's peak (about 1 where confident); regression scores
    the predicted chance that the keypoint is labelled inside the crop. ``flip_test``
    (heatmaps only) averages the maps of the crop and of its mirror image.
    """

    def __init__(self, net: PoseNet, decode: Literal["taylor", "argmax"] = "taylor",
                 modulate_sigma: float | None = None, skeleton: list[tuple[int, int]] | None = None,
                 flip_index: list[int] | None = None, heatmap_loss: str = "mse", sigma: float = 1.5,
                 flip_test: bool = False):
        super().__init__()
        self.net, self.decode, self.modulate_sigma = net, decode, modulate_sigma
        self.heatmap_loss, self.sigma, self.flip_test = heatmap_loss, sigma, flip_test
        # What a user of the exported model needs besides the weights, kept as buffers so that
        # they travel with the state (torch.export, MLflow): crop (H, W) int64 (2,), limbs
        # int64 (L, 2) 0-based, mirror partner of each keypoint int64 (K,).
        self.register_buffer("crop_size", torch.tensor(net.crop_size, dtype=torch.int64))
        self.register_buffer("skeleton", torch.tensor(skeleton or [], dtype=torch.int64).reshape(-1, 2))
        self.register_buffer("flip_index", torch.tensor(flip_index or [], dtype=torch.int64))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        output = self.net(crops)
        if self.net.head_kind == "regression":
            return regression_keypoints(output, self.net.crop_size)
        output = output.float()
        if self.flip_test and self.flip_index.numel():
            # The mirrored crop's maps, mirrored back, with left and right channels swapped back;
            # a crop pixel x mirrors to W - 1 - x, which is exactly a flip of the heatmap grid.
            mirrored = self.net(torch.flip(crops, dims=[3])).float()
            output = (output + torch.flip(mirrored, dims=[3])[:, self.flip_index]) / 2
        if self.heatmap_loss == "cross_entropy":
            return decode_logit_maps(output, self.net.heatmap_stride, self.sigma, self.decode, self.modulate_sigma)
        return decode_heatmaps(output, self.net.heatmap_stride, self.decode, self.modulate_sigma)


def decode_logit_maps(logits: torch.Tensor, stride: int, sigma: float,
                      refine: Literal["taylor", "argmax"] = "taylor", modulate_sigma: float | None = None
                      ) -> torch.Tensor:
    """Keypoints (N, K, 3) from maps trained as spatial softmax logits (N, K, h, w).

    ``exp(logit - max)`` is the softmax up to a constant, so its log is the logits and the
    Taylor step fits them directly. Score: the softmax peak relative to that of the
    training target (a Gaussian of ``sigma`` cells normalised to sum 1), clamped to 1.
    """
    n, k, h, w = logits.shape
    flat = logits.reshape(n, k, h * w)
    peak = flat.amax(dim=-1, keepdim=True)
    keypoints = decode_heatmaps(torch.exp(flat - peak).reshape(n, k, h, w), stride, refine, modulate_sigma)
    probability = torch.softmax(flat, dim=-1).amax(dim=-1)
    score = (probability * 2 * math.pi * sigma**2).clamp(max=1.0)
    return torch.cat([keypoints[..., :2], score.unsqueeze(-1)], dim=-1)
