"""Lightning module for contrastive pretraining (SimCLR): two views in, NT-Xent out."""

from __future__ import annotations

from typing import Any

import torch

from visionflow.batch_augment import DeviceAugmentHooks
from visionflow.losses import nt_xent_loss
from visionflow.tasks.lightning_base import TaskModule, saved_section
from visionflow.tasks.selfsup.contrastive import ContrastiveNet
from visionflow.tasks.selfsup.params import SelfsupModelParams, SelfsupTrainParams


class SelfsupModule(DeviceAugmentHooks, TaskModule):
    """Batches are (view_1 (N, 3, H, W), view_2 (N, 3, H, W)), float in [0, 1]; or, with
    ``batch_augment`` set to a ``TwoViews`` (views drawn on the device), training batches are
    images (N, 3, H, W) and the two views are drawn once the batch is on the device.

    ``net.encoder`` is the shared U-Net encoder; ``net.embedding`` pools it to
    (N, D); ``net.head`` projects for the loss and is dropped after pretraining.
    """

    task_name = "selfsup"
    optim: SelfsupTrainParams

    def __init__(self, model: SelfsupModelParams, optim: SelfsupTrainParams):
        super().__init__(optim)
        self.save_hyperparameters({"model": model.model_dump(mode="json"), "optim": optim.model_dump(mode="json")})
        self.net = ContrastiveNet(tuple(model.channels), tuple(model.dilations), model.projection_hidden,
                                  model.projection_dim)

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "SelfsupModule":
        """Every key has been saved since the family's first checkpoint: nothing to upgrade."""
        return cls(saved_section(SelfsupModelParams, saved["model"], "model"),
                   saved_section(SelfsupTrainParams, saved["optim"], "optim"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> projections (N, projection_dim)."""
        # channels-last lets oneDNN (CPU) and tensor cores (GPU) run the convolutions faster
        return self.net(images.contiguous(memory_format=torch.channels_last))

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        first, second = batch
        # One forward over both views: BatchNorm sees the 2N batch, as in SimCLR.
        projections = self(torch.cat([first, second]))
        z1, z2 = projections.chunk(2)
        return projections, {"loss": nt_xent_loss(z1, z2, self.optim.temperature)}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        _, losses = self.model_step(batch)
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=len(batch[0]))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> pooled encoder embeddings (N, D)."""
        return self.net.embedding(images.contiguous(memory_format=torch.channels_last))
