"""Instance segmentation data: detection's COCO dataset with masks (``with_masks=True``).

Boxes are re-derived from the transformed masks, so they stay tight under any geometry.
"""

from visionflow.tasks.detection.data import (CocoDetectionDataset, DetectionDataModule, build_box_transforms,
                                             detection_collate, load_split)

__all__ = ["CocoDetectionDataset", "DetectionDataModule", "build_box_transforms", "detection_collate",
           "load_split"]
