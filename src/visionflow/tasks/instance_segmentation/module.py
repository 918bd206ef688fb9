"""The Mask R-CNN Lightning module; validation AP and export come from detection's ``BoxTaskModule``."""

from __future__ import annotations

from typing import Any

import torch

from visionflow.models.detectors import MaskRCNNDetector, build_mask_rcnn
from visionflow.tasks.boxes.module import BoxTaskModule


class InstanceSegmentationModule(BoxTaskModule):
    """torchvision Mask R-CNN on the small residual backbone + FPN."""

    task_name = "instance_segmentation"
    with_masks = True

    def __init__(self, class_names: list[str], model: dict[str, Any], optim: dict[str, Any],
                 image_size: int, val_ground_truth: dict | None = None, category_ids: list[int] | None = None):
        super().__init__(class_names, model, optim, image_size, val_ground_truth, category_ids)
        self.save_hyperparameters(ignore=["val_ground_truth"])
        self.net = build_mask_rcnn(
            len(class_names), image_size, model["channels"], model["blocks"], model["fpn_channels"],
            model["anchor_sizes"], model["aspect_ratios"], model["rpn_pre_nms_top_n"],
            model["rpn_post_nms_top_n"], model["rois_per_image"], model["positive_fraction"],
            model["box_head_dim"], model["mask_head_channels"], model["max_detections"],
            model["score_threshold"], model["nms_iou"])

    @property
    def detector(self) -> torch.nn.Module:
        return MaskRCNNDetector(self.net, self.model_params["max_detections"])

    def model_step(self, batch: tuple[torch.Tensor, list[dict]]) -> tuple[Any, dict[str, torch.Tensor]]:
        images, targets = batch
        self.net.train()
        losses = self.net(list(images), [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"]}
                                         for t in targets])
        return None, {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}
