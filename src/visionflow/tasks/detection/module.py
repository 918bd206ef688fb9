"""Lightning modules for detection (CenterNet, RetinaNet) and what instance segmentation shares.

Batches are ``(images (N, 3, H, W) in [0, 1], targets)`` with torchvision-style
targets (see ``data.py``). Validation scores COCO AP on the validation split after
every epoch, through the same evaluation as the evaluate stage.
"""

from __future__ import annotations

from typing import Any

import torch

from visionflow.models.centernet import CenterNet, centernet_loss, encode_targets
from visionflow.models.detectors import CenterNetDetector, TorchvisionDetector, build_retinanet
from visionflow.tasks.detection.results import detections_to_results
from visionflow.tasks.lightning_base import TaskModule

VAL_SCORE_THRESHOLD = 0.05  # keeps the per-epoch validation AP cheap


class BoxTaskModule(TaskModule):
    """What detection and instance segmentation share: validation AP, the exportable detector."""

    with_masks = False

    def __init__(self, class_names: list[str], model: dict[str, Any], optim: dict[str, Any],
                 image_size: int, val_ground_truth: dict | None = None):
        super().__init__(optim)
        self.class_names = list(class_names)
        self.model_params, self.image_size = model, image_size
        # The ground truth is data, not a hyperparameter: kept out of the checkpoint.
        self.val_ground_truth = val_ground_truth
        self._val_results: list[dict] = []

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        clip = self.optim.get("grad_clip") or gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    @property
    def detector(self) -> torch.nn.Module:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, D, 6 [+ M*M])`` (``visionflow.models.detectors``)."""
        raise NotImplementedError

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            return self.detector(images)
        finally:
            self.train(was_training)

    def on_validation_epoch_start(self) -> None:
        self._val_results = []
        self._val_sizes = {image["id"]: (image["height"], image["width"])
                           for image in self.val_ground_truth["images"]}

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        images, targets = batch
        detections = self.detect(images)
        category_ids = [c["id"] for c in self.val_ground_truth["categories"]]
        for rows, target in zip(detections, targets):
            rows = rows[rows[:, 4] >= VAL_SCORE_THRESHOLD]
            image_id = int(target["image_id"])
            height, width = self._val_sizes[image_id]  # masks are pasted at the image's own size
            self._val_results += detections_to_results(rows, image_id, category_ids, height, width,
                                                       self.with_masks)

    def on_validation_epoch_end(self) -> None:
        from visionflow.coco_eval import evaluate_coco

        for iou_type, prefix in (("bbox", "val/"), ("segm", "val/mask_"))[: 1 + self.with_masks]:
            results = self._val_results if iou_type == "segm" else [
                {k: v for k, v in r.items() if k != "segmentation"} for r in self._val_results]
            stats = evaluate_coco(self.val_ground_truth, results, iou_type).stats
            self.log(f"{prefix}AP", max(stats["AP"], 0.0))
            self.log(f"{prefix}AP50", max(stats["AP50"], 0.0))


class DetectionModule(BoxTaskModule):
    """``model["name"]``: ``centernet`` (anchor-free, ours) or ``retinanet`` (torchvision's)."""

    def __init__(self, class_names: list[str], model: dict[str, Any], optim: dict[str, Any],
                 image_size: int, val_ground_truth: dict | None = None):
        super().__init__(class_names, model, optim, image_size, val_ground_truth)
        self.save_hyperparameters(ignore=["val_ground_truth"])
        num_classes = len(class_names)
        if model["name"] == "centernet":
            self.net = CenterNet(num_classes, model["channels"], model["blocks"], model["fpn_channels"],
                                 model["head_channels"], model["neck"])
        else:
            self.net = build_retinanet(num_classes, image_size, model["channels"], model["blocks"],
                                       model["fpn_channels"], model["anchor_sizes"], model["aspect_ratios"],
                                       model["max_detections"], model["score_threshold"], model["nms_iou"])

    @property
    def detector(self) -> torch.nn.Module:
        if isinstance(self.net, CenterNet):
            return CenterNetDetector(self.net, self.model_params["max_detections"],
                                     self.model_params["score_threshold"])
        return TorchvisionDetector(self.net, self.model_params["max_detections"], first_label=0)

    def model_step(self, batch: tuple[torch.Tensor, list[dict]]) -> tuple[Any, dict[str, torch.Tensor]]:
        images, targets = batch
        if isinstance(self.net, CenterNet):
            outputs = self.net(images)
            encoded = encode_targets([t["boxes"] for t in targets], [t["labels"] - 1 for t in targets],
                                     len(self.class_names), tuple(outputs.heatmap.shape[-2:]), self.net.stride,
                                     self.optim["loss"]["min_overlap"], self.optim["loss"]["regression"])
            return outputs, centernet_loss(outputs, encoded, self.optim["loss"])
        self.net.train()
        # RetinaNet's sigmoid classes have no background: labels 0..C-1
        losses = self.net(list(images), [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets])
        return None, {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

