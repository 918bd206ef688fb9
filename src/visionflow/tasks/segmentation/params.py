"""``segmentation:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from visionflow.config import (DataParams, EvaluateParams, OptimParams, RegisterParams, Strict, TransformSpec,
                               positive_lists)
from visionflow.tasks.shapes_params import ShapesSynthParams


class SegmentationModelParams(Strict):
    channels: list[int] = Field(min_length=2)
    dilations: list[int]

    _positive = positive_lists("channels", "dilations")


class SegmentationLossParams(Strict):
    """``cross_entropy``, ``focal`` or ``soft_jaccard``; ``weights`` mixes several."""

    weights: dict[Literal["cross_entropy", "focal", "soft_jaccard"], float]
    focal_gamma: float = Field(ge=0)

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("needs at least one loss with a positive weight, none negative")
        return weights


class SegmentationTrainParams(OptimParams):
    loss: SegmentationLossParams


class SegmentationParams(Strict):
    synth: ShapesSynthParams
    data: DataParams
    augment: list[TransformSpec]
    model: SegmentationModelParams
    train: SegmentationTrainParams
    evaluate: EvaluateParams
    registry: RegisterParams = Field(alias="register")
