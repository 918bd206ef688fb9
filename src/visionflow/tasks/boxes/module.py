"""The Lightning module that detection and instance segmentation share: validation COCO AP after
every epoch (the evaluate stage's code), and the exportable detector.

Batches are ``(images (N, 3, H, W) in [0, 1], targets)`` with torchvision-style
targets (see ``data.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from visionflow.config import OptimParams
from visionflow.tasks.boxes.results import detections_to_results
from visionflow.tasks.lightning_base import TaskModule, saved_section

VAL_SCORE_THRESHOLD = 0.05  # keeps the per-epoch validation AP cheap


class BoxTaskModule(TaskModule):
    """What detection and instance segmentation share: validation AP, the exportable detector.

    ``model`` and ``optim`` are the family's typed ``model`` and ``train`` sections (classes in
    ``model_class`` / ``optim_class``); ``optim`` has ``grad_clip``.
    """

    with_masks = False
    model_class: type[BaseModel]
    optim_class: type[OptimParams]

    def __init__(self, class_names: list[str], model: BaseModel, optim: OptimParams,
                 image_size: int, val_ground_truth: dict | None = None, category_ids: list[int] | None = None):
        super().__init__(optim)
        self.class_names = list(class_names)
        # The dataset's category id of each class, saved so predict needs no dataset (None: older checkpoints).
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.model_params, self.image_size = model, image_size
        # The ground truth is data, not a hyperparameter: kept out of the checkpoint.
        self.val_ground_truth = val_ground_truth
        self._val_results: list[dict] = []
        self.save_hyperparameters({"class_names": list(class_names), "model": model.model_dump(mode="json"),
                                   "optim": optim.model_dump(mode="json"), "image_size": image_size,
                                   "category_ids": category_ids})

    @staticmethod
    def upgrade_hyperparameters(saved: dict[str, Any]) -> dict[str, Any]:
        """An older checkpoint's hyperparameters in today's shape (each family its own; none here)."""
        return saved

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "BoxTaskModule":
        saved = cls.upgrade_hyperparameters(saved)
        return cls(saved["class_names"], saved_section(cls.model_class, saved["model"], "model"),
                   saved_section(cls.optim_class, saved["optim"], "optim"), saved["image_size"],
                   category_ids=saved.get("category_ids"))  # None: older checkpoints, refused at predict

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        clip = self.optim.grad_clip or gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    @property
    def detector(self) -> torch.nn.Module:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, D, 6 [+ M*M])`` (``visionflow.models.detector_outputs``)."""
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
