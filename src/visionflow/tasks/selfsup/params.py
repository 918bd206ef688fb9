"""``selfsup:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from visionflow.batched_transforms import BatchedOnDevice
from visionflow.config import (DataParams, EvaluateParams, OptimParams, RegisterParams, Strict, TransformSpec,
                               check_ranges, positive_lists)
from visionflow.tasks.shapes_params import ShapesSynthParams


class SelfsupSynthParams(ShapesSynthParams):
    """Shapes scenes for self-supervision (``data/synth/shapes.py``), in three sets.

    ``unlabelled``: scenes as an image folder (the pretraining data); ``probe_*``:
    one object per image, filed under its shape's name (an image folder with one
    subfolder per class, as a user's own probe set would be); ``segmentation_*``:
    COCO scenes for the label-efficiency report.
    """

    splits: dict[Literal["unlabelled", "probe_train", "probe_test", "segmentation_train",
                         "segmentation_test"], int]
    # plain: the objects on a plain random colour (contrastive learning on the generator's
    # striped backgrounds learns backgrounds, not shapes); scene: the generator's own backgrounds
    background: Literal["plain", "scene"]

    @model_validator(mode="after")
    def _ranges(self) -> "SelfsupSynthParams":
        check_ranges(self, (("min_objects", "max_objects"), ("min_radius", "max_radius")))
        for split in ("unlabelled", "probe_train", "probe_test"):
            if self.splits.get(split, 0) < 2:
                raise ValueError(f"splits.{split} needs at least 2 images")
        return self


class SelfsupDataParams(DataParams):
    """``source``: the unlabelled images, ``synthetic`` or an acquired image_folder's name;
    ``extra_unlabelled``: more acquired image folders mixed in; ``probe``: the labelled
    probe set, ``synthetic`` or an acquired image folder with one subfolder per class."""

    extra_unlabelled: list[str]
    probe: str
    image_size: int = Field(ge=16, le=1024)  # every image is resized to this square first
    val_fraction: float = Field(gt=0, lt=1)  # unlabelled images held out for the val loss


class SelfsupModelParams(Strict):
    """The shared U-Net encoder (same keys as ``segmentation.model``, so weights transfer)
    and a projection head used only during pretraining."""

    channels: list[int] = Field(min_length=2)
    dilations: list[int]
    projection_hidden: int = Field(ge=1)
    projection_dim: int = Field(ge=1)

    _positive = positive_lists("channels", "dilations")


class SelfsupTrainParams(OptimParams):
    method: Literal["simclr"]
    temperature: float = Field(gt=0)


class SelfsupEvaluateParams(EvaluateParams):
    """Probes on the frozen encoder and the label-efficiency report."""

    knn_k: int = Field(ge=1)
    linear_probe_weight_decay: float = Field(ge=0)
    linear_probe_max_iter: int = Field(ge=1)
    raw_pixels_size: int = Field(ge=4)  # raw-pixel probe: images resized to this square
    label_fractions: list[float] = Field(min_length=1)
    transfer_steps: int = Field(ge=1)
    transfer_batch_size: int = Field(ge=1)
    transfer_lr: float = Field(gt=0)

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("every fraction must be in (0, 1]")
        return sorted(set(values))


class SelfsupParams(BatchedOnDevice):
    """``augment_on``: ``device`` draws both views of a whole batch on the training device
    (:mod:`visionflow.batch_augment`, a subset of transforms); ``loader`` draws them per image
    with albumentations in the loader (any transform)."""

    synth: SelfsupSynthParams
    data: SelfsupDataParams
    augment: list[TransformSpec]
    model: SelfsupModelParams
    train: SelfsupTrainParams
    evaluate: SelfsupEvaluateParams
    registry: RegisterParams = Field(alias="register")

