"""Self-supervised wiring around the shared U-Net encoder: pooled embeddings, projection head.

Pure torch. ``images (N, 3, H, W)`` float in [0, 1] (what the data modules
give), ``embeddings (N, D)`` with D the sum of the encoder's channel counts.
"""

from __future__ import annotations

import torch
from torch import nn

from visionflow.models.unet import UNetEncoder


class EncoderEmbedding(nn.Module):
    """Global average pool of every encoder level, concatenated: images -> (N, sum(channels)).

    Every level, not just the deepest: the decoder reads all of them through its
    skip connections, so pretraining shapes all of them, and mid-level features
    (edges, corners) carry much of what tells shapes apart at this scale. This is
    what probes, plots and the registered model see.
    """

    def __init__(self, encoder: UNetEncoder):
        super().__init__()
        self.encoder = encoder

    @property
    def dim(self) -> int:
        return sum(self.encoder.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        return torch.cat([level.mean(dim=(2, 3)) for level in self.encoder(images)], dim=1)


class ProjectionHead(nn.Module):
    """SimCLR's MLP ``g``: embeddings (N, D) -> projections (N, out_dim) for the loss only."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_dim, out_dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class ContrastiveNet(nn.Module):
    """Encoder + pooling + projection head: images (N, 3, H, W) -> projections (N, out_dim)."""

    def __init__(self, channels: tuple[int, ...], dilations: tuple[int, ...], hidden_dim: int,
                 out_dim: int):
        super().__init__()
        self.embedding = EncoderEmbedding(UNetEncoder(channels, dilations))
        self.head = ProjectionHead(self.embedding.dim, hidden_dim, out_dim)

    @property
    def encoder(self) -> UNetEncoder:
        return self.embedding.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(images))
