"""Object detection: shapes scenes with exact boxes, CenterNet or RetinaNet, COCO AP.

Data, augmentation, evaluation, export and predict are shared with instance
segmentation: see :mod:`visionflow.tasks.boxes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionflow.tasks import register_task
from visionflow.tasks.base import Headline
from visionflow.tasks.boxes import BoxFamily
from visionflow.tasks.detection.params import DetectionParams

if TYPE_CHECKING:
    from visionflow.config import TrainerParams


@register_task
class Detection(BoxFamily):
    name = "detection"
    params_model = DetectionParams
    primary_metric = "AP"
    headlines = (Headline("AP", "AP", target=0.60), Headline("AP50", "AP50", target=0.90))
    monitor = "val/AP"
    with_masks = False

    def datamodule(self, params: DetectionParams, data_root: Path, trainer: "TrainerParams"):
        if params.augment_on == "loader":
            return super().datamodule(params, data_root, trainer)
        from visionflow.runtime import loader_settings
        from visionflow.tasks.boxes.data import DetectionData

        return DetectionData(data_root, params.train.batch_size, None, self.with_masks,
                             seed=params.train.seed, **loader_settings(trainer))

    def module(self, params: DetectionParams, datamodule: Any):
        module = super().module(params, datamodule)
        if params.augment_on == "device":
            module.batch_augment = batched_augment(params)
        return module

    def augment_preview(self, params: DetectionParams, data_root: Path, preview_png: Path) -> dict:
        """As the loader path's preview, with the device's draws (``augment_on: device``): the
        boxes drawn on each image before and after, and every kept box checked against its
        object's mask moved by the same draw."""
        if params.augment_on == "loader":
            return super().augment_preview(params, data_root, preview_png)
        from visionflow.tasks.boxes import BOX_TOLERANCE_PX, PREVIEW_SAMPLES
        from visionflow.tasks.boxes.device_augment import write_preview

        stats = write_preview(batched_augment(params), data_root, PREVIEW_SAMPLES, params.train.seed, preview_png)
        if stats["max_box_miss_px"] > BOX_TOLERANCE_PX:
            raise ValueError(f"detection.augment: a transformed box misses its object's mask by "
                             f"{stats['max_box_miss_px']:.1f} px (> {BOX_TOLERANCE_PX}); boxes do not follow "
                             f"the image; see {preview_png}")
        return stats

    def _module_class(self) -> Any:
        from visionflow.tasks.detection.module import DetectionModule

        return DetectionModule

    def _serialization_format(self, module: Any) -> str:
        from visionflow.models.centernet import CenterNet

        # torchvision's detectors have data-dependent shapes (NMS) that torch.export rejects
        return "pt2" if isinstance(module.net, CenterNet) else "pickle"


def batched_augment(params: DetectionParams) -> Any:
    """``detection.augment`` as a ``BoxBatchAugment`` (whole batches on the device)."""
    from visionflow.batch_augment import PointAugment, build_batch_augment
    from visionflow.tasks.boxes.device_augment import BoxBatchAugment

    pipeline = build_batch_augment(params.augment.transforms, "detection.augment.transforms")
    return BoxBatchAugment(PointAugment(pipeline), params.augment.boxes)
