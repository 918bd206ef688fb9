"""``instance_segmentation:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from pydantic import Field

from visionflow.config import DataParams, OptimParams, RegisterParams, Strict, positive_lists
from visionflow.tasks.boxes.params import BoxAugmentParams, DetectionEvaluateParams, anchor_levels
from visionflow.tasks.shapes_params import ShapesSynthParams


class InstanceSegmentationModelParams(Strict):
    """torchvision Mask R-CNN sized for a CPU: residual backbone + FPN (P2..P5), few RoIs, light heads."""

    channels: list[int] = Field(min_length=4, max_length=4)
    blocks: list[int] = Field(min_length=4, max_length=4)
    fpn_channels: int = Field(ge=1)
    anchor_sizes: list[int]  # P2..P5
    aspect_ratios: list[float] = Field(min_length=1)
    rpn_pre_nms_top_n: int = Field(ge=1)  # training; test uses half
    rpn_post_nms_top_n: int = Field(ge=1)
    rois_per_image: int = Field(ge=1)  # RoIs sampled for the box head's loss
    positive_fraction: float = Field(gt=0, le=1)
    box_head_dim: int = Field(ge=1)
    mask_head_channels: list[int] = Field(min_length=1)
    max_detections: int = Field(ge=1)
    score_threshold: float = Field(ge=0, lt=1)
    nms_iou: float = Field(gt=0, le=1)

    _positive = positive_lists("channels", "blocks", "anchor_sizes", "mask_head_channels")

    _levels = anchor_levels(4, "anchor_sizes needs one size per pyramid level P2..P5 (4 entries)")


class InstanceSegmentationTrainParams(OptimParams):
    grad_clip: float | None = Field(gt=0)  # clip the gradient norm (None: off)


class InstanceSegmentationParams(Strict):
    synth: ShapesSynthParams
    data: DataParams
    augment: BoxAugmentParams
    model: InstanceSegmentationModelParams
    train: InstanceSegmentationTrainParams
    evaluate: DetectionEvaluateParams
    registry: RegisterParams = Field(alias="register")
