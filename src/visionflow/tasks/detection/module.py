"""The detection Lightning module: CenterNet (ours, anchor-free) or RetinaNet (torchvision's)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from visionflow.batch_augment import DeviceAugmentHooks
from visionflow.models.centernet import CenterNet, centernet_loss, encode_targets
from visionflow.models.detectors import CenterNetDetector, TorchvisionDetector, build_retinanet
from visionflow.tasks.boxes.module import BoxTaskModule
from visionflow.tasks.detection.params import DetectionModelParams, DetectionTrainParams


def upgrade_hyperparameters(saved: dict[str, Any]) -> dict[str, Any]:
    """A detection checkpoint's saved hyperparameters in today's shape (a copy; the one place
    older checkpoints are adapted).

    Fills ``optim.grad_clip`` with None (no clipping): checkpoints written before the key
    existed were trained without it. Older keys (``model.neck``, ``optim.loss.regression``)
    came with changes to the network or the targets, so such checkpoints do not fit anyway.
    """
    upgraded = copy.deepcopy(saved)
    if isinstance(upgraded.get("optim"), dict):
        upgraded["optim"].setdefault("grad_clip", None)
    return upgraded


class DetectionModule(DeviceAugmentHooks, BoxTaskModule):
    """``model.name``: ``centernet`` (anchor-free, ours) or ``retinanet`` (torchvision's)."""

    task_name = "detection"
    model_class = DetectionModelParams
    optim_class = DetectionTrainParams
    model_params: DetectionModelParams
    optim: DetectionTrainParams
    upgrade_hyperparameters = staticmethod(upgrade_hyperparameters)

    def __init__(self, class_names: list[str], model: DetectionModelParams, optim: DetectionTrainParams,
                 image_size: int, val_ground_truth: dict | None = None, category_ids: list[int] | None = None):
        super().__init__(class_names, model, optim, image_size, val_ground_truth, category_ids)
        num_classes = len(class_names)
        if model.name == "centernet":
            self.net = CenterNet(num_classes, model.channels, model.blocks, model.fpn_channels,
                                 model.head_channels, model.neck)
        else:
            self.net = build_retinanet(num_classes, image_size, model)

    @property
    def detector(self) -> torch.nn.Module:
        if isinstance(self.net, CenterNet):
            return CenterNetDetector(self.net, self.model_params.max_detections, self.model_params.score_threshold)
        return TorchvisionDetector(self.net, self.model_params.max_detections, first_label=0)

    def model_step(self, batch: tuple[torch.Tensor, list[dict]]) -> tuple[Any, dict[str, torch.Tensor]]:
        """Targets augmented on the device carry ``keep`` (``boxes[keep]`` stay): CenterNet's
        encoding takes the mask; RetinaNet (torchvision's) gets the boxes that stay."""
        images, targets = batch
        if isinstance(self.net, CenterNet):
            outputs = self.net(images)
            keep = [t["keep"] for t in targets] if targets and "keep" in targets[0] else None
            encoded = encode_targets([t["boxes"] for t in targets], [t["labels"] - 1 for t in targets],
                                     len(self.class_names), tuple(outputs.heatmap.shape[-2:]), self.net.stride,
                                     self.optim.loss.min_overlap, self.optim.loss.regression, keep)
            return outputs, centernet_loss(outputs, encoded, self.optim.loss.model_dump())
        self.net.train()
        # RetinaNet's sigmoid classes have no background: labels 0..C-1
        targets = [{"boxes": t["boxes"][t["keep"]], "labels": t["labels"][t["keep"]]} if "keep" in t else t
                   for t in targets]
        losses = self.net(list(images), [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets])
        return None, {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

