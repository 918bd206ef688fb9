"""The detection family's models: torchvision's RetinaNet on our small backbone, and tensor-out
wrappers for export of it and of CenterNet (``models/centernet.py``).

Pure torch + torchvision. Training inputs follow torchvision: a list of images
``(3, H, W)`` in [0, 1] and targets ``{"boxes": float (K, 4) xyxy px, "labels":
int64 (K,)}``. The exported output, ``(N, D, 6)``, is described in
:mod:`visionflow.models.detector_outputs`. Mask R-CNN lives in ``models/mask_rcnn.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from visionflow.models.centernet import CenterNet, decode_detections, pad_to_multiple
from visionflow.models.detector_outputs import IMAGE_MEAN, IMAGE_STD, torchvision_detections
from visionflow.models.pyramid import PyramidBackbone


class RetinaNetSpec(Protocol):
    """What :func:`build_retinanet` reads (``detection.model`` in params.yaml)."""

    channels: Sequence[int]  # backbone stages at strides 4, 8, 16, 32
    blocks: Sequence[int]
    fpn_channels: int
    anchor_sizes: Sequence[int]  # P3, P4, P5
    aspect_ratios: Sequence[float]
    max_detections: int
    score_threshold: float
    nms_iou: float


def build_retinanet(num_classes: int, image_size: int, spec: RetinaNetSpec) -> RetinaNet:
    """Single-shot, anchor-based: FPN levels P3..P5, anchors matched IoU >= 0.5 positive / < 0.4
    negative, sigmoid focal loss for classes, L1 for box deltas, per-class NMS (all torchvision's).

    Sigmoid classification needs no background class: this model's labels are 0..C-1
    (targets and outputs), unlike the R-CNNs' 1..C.
    """
    backbone = PyramidBackbone(spec.channels, spec.blocks, spec.fpn_channels, levels=("c3", "c4", "c5"))
    scales = (1.0, 2 ** (1 / 2))  # two scales per octave
    anchors = AnchorGenerator(tuple(tuple(s * k for k in scales) for s in spec.anchor_sizes),
                              (tuple(spec.aspect_ratios),) * len(spec.anchor_sizes))
    head = RetinaNetHead(spec.fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=lambda c: nn.GroupNorm(min(16, c), c))
    return RetinaNet(backbone, num_classes, min_size=image_size, max_size=image_size,
                     image_mean=IMAGE_MEAN, image_std=IMAGE_STD, anchor_generator=anchors, head=head,
                     score_thresh=spec.score_threshold, nms_thresh=spec.nms_iou,
                     detections_per_img=spec.max_detections,
                     fg_iou_thresh=0.5, bg_iou_thresh=0.4, topk_candidates=300, _skip_resize=True)


class CenterNetDetector(nn.Module):
    """Images ``(N, 3, H, W)`` in [0, 1], any H, W -> ``(N, max_detections, 6)`` (see module doc)."""

    def __init__(self, net: CenterNet, max_detections: int, score_threshold: float):
        super().__init__()
        self.net, self.max_detections, self.score_threshold = net, max_detections, score_threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        out = self.net(pad_to_multiple(images, self.net.size_divisor))
        detections = decode_detections(out.heatmap.sigmoid(), out.size, out.offset, self.net.stride,
                                       self.max_detections, self.score_threshold)
        # clamp with the sizes as scalars: a tensor built from them would pin H and W in torch.export
        xs = detections[..., 0:4:2].clamp(min=0, max=width)
        ys = detections[..., 1:4:2].clamp(min=0, max=height)
        boxes = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], -1)
        found = detections[..., 4:5] >= 0
        return torch.cat([torch.where(found, boxes, detections[..., :4]), detections[..., 4:]], -1)


class TorchvisionDetector(nn.Module):
    """A torchvision RetinaNet / Faster R-CNN in eval mode as ``(N, 3, H, W)`` -> ``(N, D, 6)``.

    ``first_label``: the model's label of class 0 (RetinaNet here: 0; R-CNNs: 1, after background).
    """

    def __init__(self, model: nn.Module, max_detections: int, first_label: int = 1):
        super().__init__()
        self.model, self.max_detections, self.first_label = model.eval(), max_detections, first_label

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torchvision_detections(self.model(list(images)), self.max_detections, self.first_label)
