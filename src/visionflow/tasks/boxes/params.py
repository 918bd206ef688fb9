"""Params sections the box families (detection, instance segmentation) share.

Every key is required: ``params.yaml`` holds the values.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from visionflow.config import EvaluateParams, Strict, TransformSpec, positive_lists


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

    _positive = positive_lists("max_dets")


def anchor_levels(count: int, message: str) -> Any:
    """A model validator: ``anchor_sizes`` has one entry per pyramid level (``count``)."""
    def check(self: Any) -> Any:
        if len(self.anchor_sizes) != count:
            raise ValueError(message)
        return self

    return model_validator(mode="after")(check)
