"""Params sections the box families (detection, instance segmentation) share.

Every key is required: ``params.yaml`` holds the values.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from visionflow.config import EvaluateParams, Strict, TransformSpec, positive_list


class BoxRuleParams(Strict):
    """What happens to boxes that a transform moves partly out of the image (albumentations ``BboxParams``).

    Boxes are clipped to the image when ``clip``; a box is dropped (with its mask) when less
    than ``min_visibility`` of its area stays inside, or when its area falls below ``min_area``
    px^2 or a side below ``min_side`` px.
    """

    clip: bool
    min_visibility: float = Field(ge=0, le=1)
    min_area: float = Field(ge=0)
    min_side: float = Field(ge=0)


class BoxAugmentParams(Strict):
    """``<task>.augment`` for box tasks: the transforms and the rule for boxes leaving the image."""

    transforms: list[TransformSpec]
    boxes: BoxRuleParams


class DetectionEvaluateParams(EvaluateParams):
    max_dets: list[int] = Field(min_length=1)
    overlay_score: float = Field(ge=0, le=1)  # detections drawn on the overlays

    @field_validator("max_dets")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return positive_list(values)
