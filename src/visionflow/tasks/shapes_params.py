"""The shapes scene generator's params (``data/synth/shapes.py``), shared by the families that
train on shapes scenes (segmentation, detection, instance segmentation, selfsup).

Every key is required: ``params.yaml`` holds the values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, field_validator, model_validator

from visionflow.config import Strict, check_ranges


class ShapesSynthParams(Strict):
    """The shapes scene generator (``data/synth/shapes.py``)."""

    seed: int
    splits: dict[Literal["train", "val", "test"], int]
    image_size: int = Field(ge=16, le=1024)
    classes: list[str] = Field(min_length=1)
    min_objects: NonNegativeInt
    max_objects: NonNegativeInt
    min_radius: PositiveFloat  # pixels
    max_radius: PositiveFloat
    min_visible_fraction: float = Field(ge=0, le=1)
    empty_fraction: float = Field(ge=0, le=1)
    noise_std: float = Field(ge=0)
    texture_probability: float = Field(ge=0, le=1)
    blur_probability: float = Field(ge=0, le=1)
    crowding: float = Field(ge=0, le=1)  # chance a shape is placed next to an earlier one

    @field_validator("classes")
    @classmethod
    def _known_shapes(cls, classes: list[str]) -> list[str]:
        from visionflow.data.synth.shapes import SHAPE_KINDS

        for name in classes:
            if name not in SHAPE_KINDS:
                raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPE_KINDS)}")
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be unique")
        return classes

    @model_validator(mode="after")
    def _ranges(self) -> "ShapesSynthParams":
        check_ranges(self, (("min_objects", "max_objects"), ("min_radius", "max_radius")), ("train", "test"))
        return self
