"""``pose:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from visionflow.batched_transforms import BatchedOnDevice
from visionflow.config import (DataParams, EvaluateParams, OptimParams, RegisterParams, Strict, TransformSpec,
                               check_ranges, positive_lists, unknown_choice)


class FigureSynthParams(Strict):
    """The articulated-figure scene generator (``data/synth/figures.py``)."""

    seed: int
    splits: dict[Literal["train", "val", "test"], int]
    figure: str  # a figure model with a declared skeleton (data/synth/figures.py FIGURES)
    image_size: int = Field(ge=32, le=1024)
    min_figures: int = Field(ge=0)
    max_figures: int = Field(ge=0)
    min_height: float = Field(gt=0)  # pixels, upright figure
    max_height: float = Field(gt=0)
    max_rotation: float = Field(ge=0, le=180)  # degrees
    width_jitter: float = Field(ge=0, lt=1)
    truncation_probability: float = Field(ge=0, le=1)
    min_keypoints_inside: int = Field(ge=1)
    min_visible_fraction: float = Field(ge=0, le=1)
    max_occluders: int = Field(ge=0)
    occluder_probability: float = Field(ge=0, le=1)
    max_distractors: int = Field(ge=0)
    occluder_radius: tuple[float, float]
    noise_std: float = Field(ge=0)
    texture_probability: float = Field(ge=0, le=1)
    blur_probability: float = Field(ge=0, le=1)

    @field_validator("figure")
    @classmethod
    def _known_figure(cls, figure: str) -> str:
        from visionflow.data.synth.figures import FIGURES

        if figure not in FIGURES:
            raise ValueError(unknown_choice(figure, list(FIGURES), "figure"))
        return figure

    @model_validator(mode="after")
    def _ranges(self) -> "FigureSynthParams":
        check_ranges(self, (("min_figures", "max_figures"), ("min_height", "max_height")), ("train", "test"))
        if not 0 < self.occluder_radius[0] <= self.occluder_radius[1]:
            raise ValueError("occluder_radius must be [low, high] with 0 < low <= high")
        return self


class PoseDataParams(DataParams):
    """``flip_pairs``: left/right keypoint name pairs that a mirror image swaps. None: the
    category's ``flip_pairs`` if the dataset has them, else names that differ only by
    left/right (``left_knee``/``right_knee``)."""

    flip_pairs: list[tuple[str, str]] | None


class PoseModelParams(Strict):
    """Top-down: each object is cropped from its box (with margin, fixed aspect) and resized."""

    head: Literal["heatmap", "regression"]
    crop_height: int = Field(ge=16)
    crop_width: int = Field(ge=16)
    box_margin: float = Field(ge=1.0)  # the crop spans this times the box's longer side
    channels: list[int] = Field(min_length=3, max_length=3)
    heatmap_stride: Literal[2, 4]  # heatmap cells per crop pixel: 1/2 or 1/4 resolution
    decoder: Literal["concat", "add"]  # skip fusion: concat + two convs, or 1x1 + add + one conv
    sigma: float = Field(gt=0)  # Gaussian target width in heatmap cells
    # mse: heatmaps regress Gaussians (peak = score); cross_entropy: each map is a spatial softmax
    # trained against the normalised Gaussian
    heatmap_loss: Literal["mse", "cross_entropy"]
    decode: Literal["taylor", "argmax"]  # sub-pixel Newton step on the log heatmap, or none
    modulate: bool  # smooth predicted heatmaps (DARK) before the Taylor step
    flip_test: bool  # average each crop's heatmaps with its mirror's (evaluation and export)

    _positive = positive_lists("channels")

    @model_validator(mode="after")
    def _divisible(self) -> "PoseModelParams":
        if self.crop_height % 8 or self.crop_width % 8:
            raise ValueError("crop_height and crop_width must be multiples of 8 (three stride-2 levels)")
        return self


class PoseTrainParams(OptimParams):
    pass


class PoseEvaluateParams(EvaluateParams):
    """OKS sigmas: a list in keypoint order or a mapping by keypoint name. None: COCO's person
    sigmas for COCO's 17 person keypoints, else 0.05 for every keypoint (with a warning)."""

    boxes: Literal["ground_truth", "detection"]
    sigmas: list[float] | dict[str, float] | None
    pck_thresholds: list[float] = Field(min_length=1)
    max_dets: int = Field(ge=1)
    keypoint_score_threshold: float = Field(ge=0, le=1)  # keypoints that count in an instance's score
    detection_min_score: float = Field(ge=0, le=1)  # boxes: detection only
    detection_classes: list[int] | None  # detection class ids taken as figures; None: all

    @field_validator("sigmas")
    @classmethod
    def _positive_sigmas(cls, sigmas: Any) -> Any:
        values = sigmas.values() if isinstance(sigmas, dict) else sigmas or []
        if any(v <= 0 for v in values):
            raise ValueError("every sigma must be > 0")
        return sigmas

    @field_validator("pck_thresholds")
    @classmethod
    def _positive_thresholds(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every threshold must be > 0")
        return values


class PoseParams(BatchedOnDevice):
    """``augment_on``: ``device`` augments a whole batch of crops on the training device,
    keypoints following (:mod:`visionflow.tasks.pose.device_augment`, a subset of transforms);
    ``loader``: each crop in the loader with albumentations (any transform)."""

    synth: FigureSynthParams
    data: PoseDataParams
    augment: list[TransformSpec]
    model: PoseModelParams
    train: PoseTrainParams
    evaluate: PoseEvaluateParams
    registry: RegisterParams = Field(alias="register")

