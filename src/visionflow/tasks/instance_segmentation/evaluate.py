"""Instance segmentation is scored by detection's COCO evaluation with ``segm`` added (``mask_*``)."""

from visionflow.tasks.detection.evaluate import evaluate_detection

__all__ = ["evaluate_detection"]
