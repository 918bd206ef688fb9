"""torchvision's RetinaNet and Mask R-CNN on our small backbone, and tensor-out wrappers for export.

Pure torch + torchvision. Training inputs follow torchvision: a list of images
``(3, H, W)`` in [0, 1] and targets ``{"boxes": float (K, 4) xyxy px, "labels":
int64 (K,) in 1..C (0 is background), "masks": uint8 (K, H, W)}``.

Exported modules take images ``(N, 3, H, W)`` float in [0, 1] and return one
tensor ``(N, D, 6 [+ M*M])``: per detection x1, y1, x2, y2 (pixels), score,
class index 0..C-1 (the category's position in the dataset), sorted by score;
rows past the detections found are -1. Mask R-CNN adds M*M columns: the mask
probabilities on an M x M grid over the box (Mask R-CNN's native mask output;
:func:`paste_box_masks` puts them into the image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from visionflow.models.centernet import CenterNet, decode_detections, pad_to_multiple
from visionflow.models.pyramid import PyramidBackbone

IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
MASK_SIZE = 28  # Mask R-CNN's mask predictor output, M


def build_retinanet(num_classes: int, image_size: int, channels: Sequence[int], blocks: Sequence[int],
                    fpn_channels: int, anchor_sizes: Sequence[int], aspect_ratios: Sequence[float],
                    max_detections: int, score_threshold: float, nms_iou: float) -> RetinaNet:
    """Single-shot, anchor-based: FPN levels P3..P5, anchors matched IoU >= 0.5 positive / < 0.4
    negative, sigmoid focal loss for classes, L1 for box deltas, per-class NMS (all torchvision's).

    Sigmoid classification needs no background class: this model's labels are 0..C-1
    (targets and outputs), unlike the R-CNNs' 1..C.
    """
    backbone = PyramidBackbone(channels, blocks, fpn_channels, levels=("c3", "c4", "c5"))
    scales = (1.0, 2 ** (1 / 2))  # two scales per octave
    anchors = AnchorGenerator(tuple(tuple(s * k for k in scales) for s in anchor_sizes),
                              (tuple(aspect_ratios),) * len(anchor_sizes))
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=lambda c: nn.GroupNorm(min(16, c), c))
    return RetinaNet(backbone, num_classes, min_size=image_size, max_size=image_size,
                     image_mean=IMAGE_MEAN, image_std=IMAGE_STD, anchor_generator=anchors, head=head,
                     score_thresh=score_threshold, nms_thresh=nms_iou, detections_per_img=max_detections,
                     fg_iou_thresh=0.5, bg_iou_thresh=0.4, topk_candidates=300, _skip_resize=True)


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


def build_mask_rcnn(num_classes: int, image_size: int, channels: Sequence[int], blocks: Sequence[int],
                    fpn_channels: int, anchor_sizes: Sequence[int], aspect_ratios: Sequence[float],
                    rpn_pre_nms_top_n: int, rpn_post_nms_top_n: int, rois_per_image: int,
                    positive_fraction: float, box_head_dim: int, mask_head_channels: Sequence[int],
                    max_detections: int, score_threshold: float, nms_iou: float) -> MaskRCNN:
    """Two-stage: RPN proposals on P2..P5, RoIAlign, a two-layer box head, a light mask head.

    ``num_classes`` excludes background. Sized for a CPU: few proposals and sampled RoIs,
    no image resizing in training (scenes come at ``image_size``).
    """
    backbone = PyramidBackbone(channels, blocks, fpn_channels, levels=("c2", "c3", "c4", "c5"))
    levels = ["p2", "p3", "p4", "p5"]
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
    # Objects here are 10-80 px: canonical scale 64 at P3 spreads RoIs over P2..P4 (224 maps all to P2).
    box_pool = MultiScaleRoIAlign(levels, 7, 2, canonical_scale=64, canonical_level=3)
    mask_pool = MultiScaleRoIAlign(levels, 14, 2, canonical_scale=64, canonical_level=3)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_dim)
    mask_head = MaskHead(fpn_channels, mask_head_channels)
    return MaskRCNN(
        backbone, num_classes=None, min_size=image_size, max_size=image_size,
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n, rpn_pre_nms_top_n_test=max(rpn_pre_nms_top_n // 2, 1),
        rpn_post_nms_top_n_train=rpn_post_nms_top_n, rpn_post_nms_top_n_test=rpn_post_nms_top_n,
        rpn_batch_size_per_image=128, box_roi_pool=box_pool, box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        box_score_thresh=score_threshold, box_nms_thresh=nms_iou, box_detections_per_img=max_detections,
        box_batch_size_per_image=rois_per_image, box_positive_fraction=positive_fraction,
        mask_roi_pool=mask_pool, mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_head_channels[-1], mask_head_channels[-1], num_classes + 1),
        _skip_resize=True)


def _pad_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``(K, F)`` -> ``(count, F)``: cut or padded with -1."""
    rows = rows[:count]
    return F.pad(rows, (0, 0, 0, count - len(rows)), value=-1.0)


def torchvision_detections(outputs: list[dict[str, torch.Tensor]], max_detections: int,
                           first_label: int = 1) -> torch.Tensor:
    """torchvision's per-image dicts (labels from ``first_label``) -> ``(N, max_detections, 6)``,
    class 0..C-1."""
    rows = [torch.cat([o["boxes"], o["scores"][:, None], (o["labels"] - first_label)[:, None].float()], 1)
            for o in outputs]
    return torch.stack([_pad_rows(r, max_detections) for r in rows]) if rows else \
        torch.zeros(0, max_detections, 6)


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
            rows.append(_pad_rows(torch.cat([boxes, out["scores"][:, None],
                                             (out["labels"] - 1)[:, None].float(), masks], 1),
                                  self.max_detections))
        return torch.stack(rows)


def paste_box_masks(detections: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One image's exported rows ``(D, 6 + M*M)`` -> mask probabilities ``(D, height, width)``."""
    size = int(round((detections.shape[1] - 6) ** 0.5))
    masks = detections[:, 6:].reshape(-1, 1, size, size)
    return paste_masks_in_image(masks, detections[:, :4], (height, width))[:, 0]
