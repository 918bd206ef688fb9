"""CenterNet ("objects as points"): anchor-free detection from per-class centre heatmaps.

Pure torch. An object is the peak of a Gaussian on its class's heatmap at its box
centre, on a grid of ``stride`` pixels; two more maps regress the box size and
the sub-cell offset of the centre. Decoding keeps heatmap local maxima (a 3x3
max-pool replaces box NMS) and reads size and offset there.

Shapes: images ``(N, 3, H, W)`` float in [0, 1]; heatmap ``(N, C, H/s, W/s)``;
size and offset ``(N, 2, H/s, W/s)`` with (x, y) / (width, height) order, in
output cells. Boxes are xyxy pixels; labels are class indices 0..C-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from visionflow.models.pyramid import PyramidBackbone, ResNetBackbone, TopDownNeck

HEATMAP_PRIOR = 0.1  # initial peak probability: keeps the focal loss sane at step 0


class CenterNetOutput(NamedTuple):
    heatmap: torch.Tensor  # (N, C, h, w) logits
    size: torch.Tensor  # (N, 2, h, w) box width, height in output cells
    offset: torch.Tensor  # (N, 2, h, w) centre offset within its cell, x and y


class CenterNetTargets(NamedTuple):
    heatmap: torch.Tensor  # (N, C, h, w) in [0, 1], exactly 1 at object centres
    size: torch.Tensor  # (N, 2, h, w), set where weight > 0
    offset: torch.Tensor  # (N, 2, h, w) object centre minus cell, set where weight > 0
    weight: torch.Tensor  # (N, h, w) >= 0: how much size, offset (and class) count at each cell
    classes: torch.Tensor  # (N, h, w) int64: the class of the object owning the cell, -1 for none


def _head(in_channels: int, hidden: int, out_channels: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_channels, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterNet(nn.Module):
    """Residual backbone + neck to stride 4 + three heads.

    ``neck``: ``"unet"`` fuses levels top-down with conv-BN-ReLU at each merge
    (:class:`~visionflow.models.pyramid.TopDownNeck`); ``"fpn"`` sums torchvision FPN
    levels p2 + up(p3..p5).
    """

    stride = 4
    size_divisor = 32  # the backbone's coarsest stride: inputs are padded to a multiple of it

    def __init__(self, num_classes: int, channels: Sequence[int] = (24, 48, 96, 160),
                 blocks: Sequence[int] = (1, 1, 2, 1), fpn_channels: int = 64, head_channels: int = 64,
                 neck: str = "unet"):
        super().__init__()
        if neck not in ("unet", "fpn"):
            raise ValueError(f"neck must be 'unet' or 'fpn', got {neck!r}")
        self.num_classes, self.neck_kind = num_classes, neck
        if neck == "fpn":
            self.backbone = PyramidBackbone(channels, blocks, fpn_channels)
        else:
            self.backbone = ResNetBackbone(channels, blocks)
            self.neck = TopDownNeck(channels, fpn_channels)
        prior = -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR)
        self.heatmap = _head(fpn_channels, head_channels, num_classes, bias=prior)
        self.size = _head(fpn_channels, head_channels, 2)
        self.offset = _head(fpn_channels, head_channels, 2)

    def forward(self, images: torch.Tensor) -> CenterNetOutput:
        """images ``(N, 3, H, W)`` in [0, 1], H and W multiples of 32 (see :func:`pad_to_multiple`)."""
        images = ((images - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)
        if self.neck_kind == "unet":
            features = self.neck(self.backbone(images))
        else:
            pyramid = list(self.backbone(images).values())  # p2 .. p5
            # Every level, upsampled onto p2, gives the heads the context of large objects too.
            features = pyramid[0]
            for level in pyramid[1:]:
                features = features + F.interpolate(level, size=features.shape[-2:], mode="nearest")
        return CenterNetOutput(self.heatmap(features), self.size(features), self.offset(features))


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` on the bottom and right so H and W are multiples of ``multiple``."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, (-width) % multiple, 0, (-height) % multiple))


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """The Gaussian radius of CenterNet's reference code (same units as height and width).

    CornerNet derives it from the corner shift that keeps IoU >= ``min_overlap`` in three
    cases and takes the smallest; the reference code's roots divide by 2 instead of 2a,
    which gives a larger radius than the geometry says. CenterNet was tuned with these
    values, so they are kept (for a 20 x 30 box at 0.7: 6.58, not 2.35).
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def encode_targets(boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], num_classes: int,
                   out_size: tuple[int, int], stride: int, min_overlap: float = 0.7,
                   regression: str = "centre", keep: Sequence[torch.Tensor] | None = None) -> CenterNetTargets:
    """Training targets for a batch.

    boxes[i]: float ``(K_i, 4)`` xyxy pixels; labels[i]: int64 ``(K_i,)`` in 0..C-1;
    keep[i] (optional): bool ``(K_i,)``, False for objects that augmentation dropped: they paint
    nothing, exactly as if they were left out, without selecting them (a host sync on a GPU).
    ``out_size``: (h, w) of the output grid. Where objects of one class overlap, the
    heatmap keeps the larger Gaussian (max), as CenterNet does. ``regression``:
    ``"centre"`` supervises size and offset at each object's centre cell only (CenterNet);
    ``"gaussian"`` at every cell of its Gaussian too, weighted by the Gaussian (the offset
    there points from the cell to the centre), which gives the heads many more samples
    (as TTFNet does); where objects overlap, the smaller one owns the cell.
    """
    if regression not in ("centre", "gaussian"):
        raise ValueError(f"regression must be 'centre' or 'gaussian', got {regression!r}")
    height, width = out_size
    n = len(boxes)
    device = boxes[0].device if n else torch.device("cpu")
    heatmap = torch.zeros(n, num_classes, height, width, device=device)
    size = torch.zeros(n, 2, height, width, device=device)
    offset = torch.zeros(n, 2, height, width, device=device)
    weight = torch.zeros(n, height, width, device=device)
    classes = torch.full((n, height, width), -1, dtype=torch.int64, device=device)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if len(b) == 0:
            continue
        b, lab = b.float() / stride, lab.long()
        wh = (b[:, 2:] - b[:, :2]).clamp(min=0)  # (K, 2)
        centre = (b[:, :2] + b[:, 2:]) / 2
        cell = centre.floor().long()
        cell[:, 0].clamp_(0, width - 1)
        cell[:, 1].clamp_(0, height - 1)
        radius = gaussian_radius(wh[:, 1], wh[:, 0], min_overlap).floor().clamp(min=0)  # (K,)
        sigma = (2 * radius + 1) / 6
        dx = xs[None] - cell[:, 0, None, None]  # (K, 1, w)
        dy = ys[None] - cell[:, 1, None, None]  # (K, h, 1)
        gauss = torch.exp(-(dx**2 + dy**2) / (2 * sigma[:, None, None] ** 2))
        inside = (dx.abs() <= radius[:, None, None]) & (dy.abs() <= radius[:, None, None])
        gauss = gauss * inside  # (K, h, w), exactly 1 at the centre cell
        kept = keep[i].bool() if keep is not None else torch.ones(len(b), dtype=torch.bool, device=device)
        gauss = gauss * kept[:, None, None]
        flat = heatmap[i].view(num_classes, -1)
        flat.scatter_reduce_(0, lab[:, None].expand(-1, flat.shape[1]), gauss.flatten(1), "amax")
        # Objects are painted larger first, so where they share a cell the smaller one owns it:
        # rank[k] is object k's place in that order; a cell goes to its highest-ranked object.
        # Everything stays on the device: no per-object loop, no host sync.
        k = len(b)
        order = torch.argsort(wh.prod(1), descending=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(k, device=device)
        centre_cell = cell[:, 1] * width + cell[:, 0]  # (K,) flat index
        if regression == "centre":
            covers = torch.zeros(k, height * width, dtype=torch.bool, device=device)
            covers[torch.arange(k, device=device), centre_cell] = True
            covers = covers.view(k, height, width) & kept[:, None, None]
        else:
            covers = gauss > 0
        owner_rank = torch.where(covers, rank[:, None, None], -1).amax(0)  # (h, w)
        owner = order[owner_rank.clamp(min=0)]  # (h, w) object index where owner_rank >= 0
        _paint(i, owner_rank >= 0, owner, gauss.gather(0, owner[None])[0], lab, wh,
               torch.stack([centre[owner, 0] - xs.expand(height, width),
                            centre[owner, 1] - ys.expand(height, width)]),
               size, offset, weight, classes)
        # Each centre cell regresses its own object (the last painted where centres coincide).
        centre_rank = torch.full((height * width,), -1, dtype=rank.dtype, device=device)
        centre_rank = centre_rank.scatter_reduce_(0, centre_cell, torch.where(kept, rank, -1), "amax")
        centre_rank = centre_rank.view(height, width)
        owner = order[centre_rank.clamp(min=0)]
        _paint(i, centre_rank >= 0, owner, torch.ones_like(weight[i]), lab, wh,
               (centre[owner] - cell[owner]).permute(2, 0, 1), size, offset, weight, classes)
    return CenterNetTargets(heatmap, size, offset, weight, classes)


def _paint(i: int, where: torch.Tensor, owner: torch.Tensor, cell_weight: torch.Tensor, labels: torch.Tensor,
           wh: torch.Tensor, cell_offset: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
           weight: torch.Tensor, classes: torch.Tensor) -> None:
    """Set image ``i``'s targets at the cells ``where`` (h, w) to those of object ``owner`` (h, w):
    ``cell_weight`` (h, w), its class, size (``wh`` (K, 2)) and ``cell_offset`` (2, h, w)."""
    weight[i] = torch.where(where, cell_weight, weight[i])
    classes[i] = torch.where(where, labels[owner], classes[i])
    size[i] = torch.where(where, wh[owner].permute(2, 0, 1), size[i])
    offset[i] = torch.where(where, cell_offset, offset[i])


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss, summed and divided by the number of centres.

    logits, target: ``(N, C, h, w)``; target is 1 at centres and a Gaussian around them,
    which lowers the penalty for near misses by ``(1 - target) ** beta``.
    """
    positive = target.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    positive_loss = (log_p * (1 - p) ** alpha * positive).sum()
    negative_loss = (log_not_p * p**alpha * (1 - target) ** beta * (1 - positive)).sum()
    return -(positive_loss + negative_loss) / positive.sum().clamp(min=1)


def centernet_loss(outputs: CenterNetOutput, targets: CenterNetTargets,
                   weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """``{"heatmap", "size", "offset", "class", "loss"}``; size and offset are L1 weighted by
    ``targets.weight``.

    ``weights["classification"]`` (optional, default 0) adds a softmax cross-entropy over the per-class
    heatmap logits at the cells an object owns: the focal loss treats classes one by one, while
    this makes them compete where an object is, which separates look-alike classes sooner.
    An image with no objects still gives a heatmap loss (all negatives), tied to the graph.
    """
    heat = heatmap_focal_loss(outputs.heatmap, targets.heatmap)
    weight = targets.weight[:, None]
    total_weight = weight.sum().clamp(min=1e-6)
    size = ((outputs.size - targets.size).abs() * weight).sum() / total_weight / 2
    offset = ((outputs.offset - targets.offset).abs() * weight).sum() / total_weight / 2
    owned = targets.classes >= 0  # (N, h, w); every cell is scored, so nothing is selected (no host sync)
    per_cell = F.cross_entropy(outputs.heatmap, targets.classes.clamp(min=0), reduction="none")  # (N, h, w)
    class_loss = (per_cell * targets.weight * owned).sum() / total_weight
    total = (weights["heatmap"] * heat + weights["size"] * size + weights["offset"] * offset
             + weights.get("classification", 0.0) * class_loss)
    return {"loss": total, "heatmap": heat.detach(), "size": size.detach(), "offset": offset.detach(),
            "class": class_loss.detach()}


def decode_detections(heatmap: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, stride: int,
                      max_detections: int = 100, score_threshold: float = 0.0) -> torch.Tensor:
    """Peaks of the heatmap as boxes: ``(N, max_detections, 6)`` = x1, y1, x2, y2, score, class.

    heatmap: ``(N, C, h, w)`` probabilities (not logits). A peak is a cell equal to the
    max of its 3x3 neighbourhood. Rows beyond the detections found, or scoring below
    ``score_threshold``, are -1. Boxes are in input pixels, rows sorted by score.
    """
    n, num_classes, height, width = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    # Zero scores appended so that topk always has max_detections to pick (tiny images), with no
    # shape-dependent branch (torch.export then keeps H and W free).
    flat = F.pad(peaks.flatten(1), (0, max_detections))
    scores, index = flat.topk(max_detections)  # (N, max_detections)
    index = index.clamp(max=num_classes * height * width - 1)
    classes = index // (height * width)
    cell = index % (height * width)
    ys, xs = (cell // width).float(), (cell % width).float()
    wh = size.flatten(2).gather(2, cell[:, None].expand(-1, 2, -1))  # (N, 2, k)
    off = offset.flatten(2).gather(2, cell[:, None].expand(-1, 2, -1))
    cx, cy = xs + off[:, 0], ys + off[:, 1]
    half_w, half_h = wh[:, 0].clamp(min=0) / 2, wh[:, 1].clamp(min=0) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1) * stride
    detections = torch.cat([boxes, scores[..., None], classes[..., None].float()], -1)
    keep = (scores > score_threshold) & (scores > 0)
    return torch.where(keep[..., None], detections, torch.full_like(detections, -1.0))
