"""A small U-Net: encoder-decoder with skip connections, optional dilated bottleneck.

Pure torch. Input ``(N, 3, H, W)`` float in any range the data module chose;
output logits ``(N, num_classes, H, W)``. H and W must be divisible by
``2 ** (len(channels) - 1)``; :func:`pad_to_multiple` makes them so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(conv_bn_relu(in_channels, out_channels),
                         conv_bn_relu(out_channels, out_channels, dilation))


class UNetEncoder(nn.Module):
    """Returns one feature map per level, finest first: ``[(N, c_i, H / 2**i, W / 2**i)]``.

    Kept separate from the decoder so self-supervised pretraining and transfer
    can share it (``visionflow.models.backbones``).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), dilations: tuple[int, ...] = (1,),
                 in_channels: int = 3):
        super().__init__()
        self.channels = tuple(channels)
        self.stem = DoubleConv(in_channels, channels[0])
        self.downs = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
            is_bottom = level == len(channels) - 1
            layers: list[nn.Module] = [nn.MaxPool2d(2), DoubleConv(c_in, c_out)]
            if is_bottom:  # dilated convolutions widen the bottleneck's view at no resolution cost
                layers += [conv_bn_relu(c_out, c_out, d) for d in dilations if d > 1]
            self.downs.append(nn.Sequential(*layers))

    @property
    def stride(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class UNetDecoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], num_classes: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_deep, c_skip in zip(channels[::-1][:-1], channels[::-1][1:]):
            self.ups.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
            self.fuse.append(DoubleConv(2 * c_skip, c_skip))
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, fuse, skip in zip(self.ups, self.fuse, reversed(features[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(nn.Module):
    def __init__(self, num_classes: int, channels: tuple[int, ...] = (16, 32, 64, 128),
                 dilations: tuple[int, ...] = (1,), in_channels: int = 3):
        super().__init__()
        self.encoder = UNetEncoder(channels, dilations, in_channels)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> logits (N, num_classes, H, W); any H, W (padded inside)."""
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, self.encoder.stride)
        logits = self.decoder(self.encoder(padded))
        return logits[..., :height, :width]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` on the bottom/right so H and W divide by ``multiple``."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))
