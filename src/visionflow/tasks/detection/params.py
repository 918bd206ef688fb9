"""``detection:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from visionflow.batched_transforms import BatchedOnDevice
from visionflow.config import DataParams, OptimParams, RegisterParams, Strict, positive_lists
from visionflow.tasks.boxes.params import BoxAugmentParams, DetectionEvaluateParams, anchor_levels
from visionflow.tasks.shapes_params import ShapesSynthParams


class DetectionModelParams(Strict):
    """``centernet``: anchor-free heatmap peaks on the stride-4 pyramid level.
    ``retinanet``: anchor-based single shot (torchvision RetinaNet: focal loss, L1 boxes, NMS).

    Both share a from-scratch residual backbone (``channels``: strides 4, 8, 16, 32) and an FPN.
    """

    name: Literal["centernet", "retinanet"]
    neck: Literal["unet", "fpn"]  # centernet: conv-BN-ReLU top-down merges, or an FPN sum
    channels: list[int] = Field(min_length=4, max_length=4)
    blocks: list[int] = Field(min_length=4, max_length=4)
    fpn_channels: int = Field(ge=1)
    head_channels: int = Field(ge=1)
    max_detections: int = Field(ge=1)  # per image, also the exported tensor's second dim
    score_threshold: float = Field(ge=0, lt=1)
    nms_iou: float = Field(gt=0, le=1)  # retinanet NMS; centernet keeps 3x3 local maxima
    anchor_sizes: list[int]  # retinanet, P3..P5
    aspect_ratios: list[float] = Field(min_length=1)

    _positive = positive_lists("channels", "blocks", "anchor_sizes")

    _levels = anchor_levels(3, "anchor_sizes needs one size per pyramid level P3, P4, P5 (3 entries)")


class CenterNetLossParams(Strict):
    """CenterNet loss weights: heatmap focal loss, L1 on box size (output cells), L1 on offset."""

    heatmap: float = Field(ge=0)
    size: float = Field(ge=0)
    offset: float = Field(ge=0)
    classification: float = Field(ge=0)  # softmax CE across classes where objects are
    min_overlap: float = Field(gt=0, lt=1)  # sets each object's Gaussian radius
    regression: Literal["centre", "gaussian"]  # size/offset at the centre cell, or its Gaussian


class DetectionTrainParams(OptimParams):
    grad_clip: float | None = Field(gt=0)  # clip the gradient norm (None: off)
    loss: CenterNetLossParams  # centernet only


class DetectionParams(BatchedOnDevice):
    """``augment_on``: ``device`` augments a whole batch on the training device, boxes following
    (:mod:`visionflow.tasks.boxes.device_augment`, a subset of transforms); ``loader``: each
    image in the loader with albumentations (any transform)."""

    augment_key: ClassVar[str] = "augment.transforms"

    synth: ShapesSynthParams
    data: DataParams
    augment: BoxAugmentParams
    model: DetectionModelParams
    train: DetectionTrainParams
    evaluate: DetectionEvaluateParams
    registry: RegisterParams = Field(alias="register")

