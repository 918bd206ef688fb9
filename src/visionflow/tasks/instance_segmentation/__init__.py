"""Instance segmentation: shapes scenes with exact masks, a CPU-sized Mask R-CNN, box and mask AP.

Data, augmentation, evaluation, export and predict are shared with detection
(``with_masks``): see :mod:`visionflow.tasks.boxes`. The model lives in ``module.py``.
"""

from __future__ import annotations

from typing import Any

from visionflow.tasks import register_task
from visionflow.tasks.base import Headline
from visionflow.tasks.boxes import BoxFamily
from visionflow.tasks.instance_segmentation.params import InstanceSegmentationParams


@register_task
class InstanceSegmentation(BoxFamily):
    name = "instance_segmentation"
    params_model = InstanceSegmentationParams
    primary_metric = "mask_AP"
    headlines = (Headline("mask_AP", "mask AP", target=0.40), Headline("box_AP", "box AP"))
    monitor = "val/mask_AP"
    with_masks = True

    def _module_class(self) -> Any:
        from visionflow.tasks.instance_segmentation.module import InstanceSegmentationModule

        return InstanceSegmentationModule

    def _serialization_format(self, module: Any) -> str:
        return "pickle"  # torchvision's Mask R-CNN has data-dependent shapes that torch.export rejects
