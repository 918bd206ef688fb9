"""Object detection: shapes scenes with exact boxes, CenterNet or RetinaNet, COCO AP.

Data, augmentation, evaluation, export and predict are shared with instance
segmentation: see :mod:`visionflow.tasks.boxes`.
"""

from __future__ import annotations

from typing import Any

from visionflow.tasks import register_task
from visionflow.tasks.base import Headline
from visionflow.tasks.boxes import BoxFamily
from visionflow.tasks.detection.params import DetectionParams


@register_task
class Detection(BoxFamily):
    name = "detection"
    params_model = DetectionParams
    primary_metric = "AP"
    headlines = (Headline("AP", "AP", target=0.60), Headline("AP50", "AP50", target=0.90))
    monitor = "val/AP"
    with_masks = False

    def _module_class(self) -> Any:
        from visionflow.tasks.detection.module import DetectionModule

        return DetectionModule

    def _serialization_format(self, module: Any) -> str:
        from visionflow.models.centernet import CenterNet

        # torchvision's detectors have data-dependent shapes (NMS) that torch.export rejects
        return "pt2" if isinstance(module.net, CenterNet) else "pickle"
