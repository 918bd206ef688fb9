"""Lightning module for semantic segmentation: U-Net, mixed losses, confusion-matrix metrics."""

from __future__ import annotations

from typing import Any

import torch

from visionflow.losses import weighted_segmentation_loss
from visionflow.metrics.segmentation import confusion_matrix, mean_iou, pixel_accuracy
from visionflow.models.unet import UNet
from visionflow.tasks.lightning_base import TaskModule, saved_section
from visionflow.tasks.segmentation.params import SegmentationModelParams, SegmentationTrainParams


class SegmentationModule(TaskModule):
    """Batches are (images (N, 3, H, W) in [0, 1], labels (N, H, W) int64).

    Evaluate and predict read its checkpoint without Lightning
    (``segmentation.predict.SegmentationModel``); :meth:`from_hyperparameters` rebuilds it whole.
    """

    task_name = "segmentation"
    optim: SegmentationTrainParams

    def __init__(self, class_names: list[str], model: SegmentationModelParams, optim: SegmentationTrainParams):
        super().__init__(optim)
        self.save_hyperparameters({"class_names": list(class_names), "model": model.model_dump(mode="json"),
                                   "optim": optim.model_dump(mode="json")})
        self.class_names = list(class_names)
        self.net = UNet(len(class_names), channels=tuple(model.channels), dilations=tuple(model.dilations))
        self.register_buffer("val_confusion", torch.zeros(len(class_names), len(class_names),
                                                          dtype=torch.int64), persistent=False)

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "SegmentationModule":
        """Every key has been saved since the family's first checkpoint: nothing to upgrade."""
        return cls(saved["class_names"], saved_section(SegmentationModelParams, saved["model"], "model"),
                   saved_section(SegmentationTrainParams, saved["optim"], "optim"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> logits (N, C, H, W)."""
        # channels-last lets oneDNN (CPU) and tensor cores (GPU) run the convolutions ~25% faster
        return self.net(images.contiguous(memory_format=torch.channels_last))

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        images, labels = batch
        logits = self(images)
        loss = self.optim.loss
        return logits, weighted_segmentation_loss(logits, labels, dict(loss.weights), loss.focal_gamma)

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits, losses = self.model_step(batch)
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=len(batch[0]))
        self.val_confusion += confusion_matrix(logits.argmax(1), batch[1], len(self.class_names))

    def on_validation_epoch_end(self) -> None:
        confusion = self.trainer.strategy.reduce(self.val_confusion, reduce_op="sum")
        self.log("val/mIoU", mean_iou(confusion))
        self.log("val/pixel_accuracy", pixel_accuracy(confusion))
