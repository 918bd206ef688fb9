"""torchvision's Mask R-CNN on our small backbone, and its tensor-out wrapper for export.

Pure torch + torchvision. Training inputs follow torchvision: a list of images
``(3, H, W)`` in [0, 1] and targets ``{"boxes": float (K, 4) xyxy px, "labels":
int64 (K,) in 1..C (0 is background), "masks": uint8 (K, H, W)}``. The exported output,
``(N, D, 6 + M*M)``, is described in :mod:`visionflow.models.detector_outputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from visionflow.models.detector_outputs import IMAGE_MEAN, IMAGE_STD, pad_rows
from visionflow.models.pyramid import PyramidBackbone


class MaskRCNNSpec(Protocol):
    """What :func:`build_mask_rcnn` reads (``instance_segmentation.model`` in params.yaml)."""

    channels: Sequence[int]  # backbone stages at strides 4, 8, 16, 32
    blocks: Sequence[int]
    fpn_channels: int
    anchor_sizes: Sequence[int]  # P2..P5
    aspect_ratios: Sequence[float]
    rpn_pre_nms_top_n: int  # training; test uses half
    rpn_post_nms_top_n: int
    rois_per_image: int
    positive_fraction: float
    box_head_dim: int
    mask_head_channels: Sequence[int]
    max_detections: int
    score_threshold: float
    nms_iou: float


class MaskHead(nn.Sequential):
    """3x3 conv + ReLU layers on the RoI-aligned mask features (torchvision's has four of 256)."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = out_channels
        super().__init__(*layers)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)


def build_mask_rcnn(num_classes: int, image_size: int, spec: MaskRCNNSpec) -> MaskRCNN:
    """Two-stage: RPN proposals on P2..P5, RoIAlign, a two-layer box head, a light mask head.

    ``num_classes`` excludes background. Sized for a CPU: few proposals and sampled RoIs,
    no image resizing in training (scenes come at ``image_size``).
    """
    backbone = PyramidBackbone(spec.channels, spec.blocks, spec.fpn_channels, levels=("c2", "c3", "c4", "c5"))
    levels = ["p2", "p3", "p4", "p5"]
    anchors = AnchorGenerator(tuple((s,) for s in spec.anchor_sizes),
                              (tuple(spec.aspect_ratios),) * len(spec.anchor_sizes))
    # Objects here are 10-80 px: canonical scale 64 at P3 spreads RoIs over P2..P4 (224 maps all to P2).
    box_pool = MultiScaleRoIAlign(levels, 7, 2, canonical_scale=64, canonical_level=3)
    mask_pool = MultiScaleRoIAlign(levels, 14, 2, canonical_scale=64, canonical_level=3)
    box_head = TwoMLPHead(spec.fpn_channels * 7 * 7, spec.box_head_dim)
    mask_head = MaskHead(spec.fpn_channels, spec.mask_head_channels)
    mask_channels = spec.mask_head_channels[-1]
    return MaskRCNN(
        backbone, num_classes=None, min_size=image_size, max_size=image_size,
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n,
        rpn_pre_nms_top_n_test=max(spec.rpn_pre_nms_top_n // 2, 1),
        rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n, rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n,
        rpn_batch_size_per_image=128, box_roi_pool=box_pool, box_head=box_head,
        box_predictor=FastRCNNPredictor(spec.box_head_dim, num_classes + 1),
        box_score_thresh=spec.score_threshold, box_nms_thresh=spec.nms_iou,
        box_detections_per_img=spec.max_detections,
        box_batch_size_per_image=spec.rois_per_image, box_positive_fraction=spec.positive_fraction,
        mask_roi_pool=mask_pool, mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1),
        _skip_resize=True)


class MaskRCNNDetector(nn.Module):
    """Mask R-CNN as ``(N, 3, H, W)`` -> ``(N, D, 6 + M*M)``: boxes, score, class, box-relative masks.

    Runs torchvision's stages without the final pasting of masks into full images, so
    the output has a fixed width whatever the image size.
    """

    def __init__(self, model: MaskRCNN, max_detections: int):
        super().__init__()
        self.model, self.max_detections = model.eval(), max_detections

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _ = model.transform(list(images))
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        outputs, _ = model.roi_heads(features, proposals, batch.image_sizes)
        rows = []
        for out, resized, original in zip(outputs, batch.image_sizes, original_sizes):
            boxes = resize_boxes(out["boxes"], resized, original)
            masks = out["masks"].flatten(1)  # (K, M*M) probabilities
            rows.append(pad_rows(torch.cat([boxes, out["scores"][:, None],
                                            (out["labels"] - 1)[:, None].float(), masks], 1),
                                 self.max_detections))
        return torch.stack(rows)
