"""The Mask R-CNN Lightning module; validation AP and export come from the box families' ``BoxTaskModule``."""

from __future__ import annotations

from typing import Any

import torch

from visionflow.models.mask_rcnn import MaskRCNNDetector, build_mask_rcnn
from visionflow.tasks.boxes.module import BoxTaskModule
from visionflow.tasks.instance_segmentation.params import (InstanceSegmentationModelParams,
                                                           InstanceSegmentationTrainParams)


class InstanceSegmentationModule(BoxTaskModule):
    """torchvision Mask R-CNN on the small residual backbone + FPN."""

    task_name = "instance_segmentation"
    with_masks = True
    model_class = InstanceSegmentationModelParams
    optim_class = InstanceSegmentationTrainParams
    model_params: InstanceSegmentationModelParams
    optim: InstanceSegmentationTrainParams

    def __init__(self, class_names: list[str], model: InstanceSegmentationModelParams,
                 optim: InstanceSegmentationTrainParams, image_size: int, val_ground_truth: dict | None = None,
                 category_ids: list[int] | None = None):
        super().__init__(class_names, model, optim, image_size, val_ground_truth, category_ids)
        self.net = build_mask_rcnn(len(class_names), image_size, model)

    @property
    def detector(self) -> torch.nn.Module:
        return MaskRCNNDetector(self.net, self.model_params.max_detections)

    def model_step(self, batch: tuple[torch.Tensor, list[dict]]) -> tuple[Any, dict[str, torch.Tensor]]:
        images, targets = batch
        self.net.train()
        losses = self.net(list(images), [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"]}
                                         for t in targets])
        return None, {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}
