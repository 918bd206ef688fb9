"""``stereo:`` params. Every key is required: ``params.yaml`` holds the values."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from visionflow.config import (DataParams, EvaluateParams, OptimParams, RegisterParams, Strict, TransformSpec,
                               check_ranges)


class StereoSynthParams(Strict):
    """The layered stereo scene generator (``data/synth/stereo.py``)."""

    seed: int
    splits: dict[Literal["train", "val", "test"], int]
    height: int = Field(ge=16, le=2048)
    width: int = Field(ge=16, le=4096)
    max_disparity: float = Field(gt=0)
    min_objects: int = Field(ge=0)
    max_objects: int = Field(ge=0)
    max_thin: int = Field(ge=0)
    max_leaves: int = Field(ge=0)
    slant: float = Field(ge=0, lt=0.9)
    ground_probability: float = Field(ge=0, le=1)
    texture_weights: dict[Literal["dead_leaves", "pink_noise", "leaves_noise", "grating", "uniform", "photo"],
                          float]
    noise_std: float = Field(ge=0)
    blur_probability: float = Field(ge=0, le=1)
    photometric_difference: float = Field(ge=0, le=0.5)
    specular_probability: float = Field(ge=0, le=1)
    vignetting: float = Field(ge=0, le=1)
    supersample: int = Field(ge=1, le=4)

    @model_validator(mode="after")
    def _ranges(self) -> "StereoSynthParams":
        check_ranges(self, (("min_objects", "max_objects"),), ("train", "test"))
        if not self.texture_weights or any(w < 0 for w in self.texture_weights.values()) \
                or sum(self.texture_weights.values()) <= 0:
            raise ValueError("texture_weights needs a positive weight, none negative")
        return self


class StereoDataParams(DataParams):
    """``source``: ``synthetic`` or an acquired middlebury/kitti dataset; which of its splits to use."""

    train_split: str
    val_split: str  # falls back to test_split when the dataset has no such split
    test_split: str


class StereoAugmentParams(Strict):
    """Training augmentation that keeps the epipolar geometry and the disparity exact.

    ``per_view`` transforms are drawn independently for the left and the right
    image (photometric differences between cameras); ``both_views`` with the same
    draw for both. Both accept albumentations image-only (pixel-level) transforms
    only: a geometric transform of one view would move pixels off their epipolar
    line or change disparities. Geometry is done here, on both views and the
    disparity together: a random rescaling (disparities scale with it), a random
    crop, a vertical flip, and an occluding patch pasted into the right image.
    """

    scale: tuple[float, float]  # (min, max) factor, drawn log-uniform; 1: off
    crop: tuple[int, int]  # (height, width), multiples of 8
    vertical_flip: float = Field(ge=0, le=1)
    occlusion_patch: float = Field(ge=0, le=1)  # chance of a patch hiding part of the right view
    per_view: list[TransformSpec]
    both_views: list[TransformSpec]

    @field_validator("crop")
    @classmethod
    def _crop(cls, crop: tuple[int, int]) -> tuple[int, int]:
        if any(c < 16 or c % 8 for c in crop):
            raise ValueError(f"crop sides must be multiples of 8 and >= 16, got {list(crop)}")
        return crop

    @field_validator("scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be [min, max] with 0 < min <= max, got {list(scale)}")
        return scale


class StereoModelParams(Strict):
    max_disparity: int = Field(ge=8)  # cost volume range in px; wider ranges are matched in shifted windows
    channels: tuple[int, int, int]  # feature channels at 1, 1/2, 1/4 resolution
    groups: int = Field(ge=1)  # group-wise correlation groups (divide channels[2])
    aggregation_channels: int = Field(ge=1)
    refine_channels: tuple[int, int]  # refinement at 1/2 and full resolution (0: no full-res level)
    refine_radius: int = Field(ge=0)  # local correlation offsets -r..r px per refinement level
    upsample: Literal["bilinear", "convex"]  # x2 steps between levels
    argmin_radius: int | None = Field(ge=0)  # refinement starts from the soft-argmin within r steps of the best

    @model_validator(mode="after")
    def _shapes(self) -> "StereoModelParams":
        if self.max_disparity % 8:
            raise ValueError(f"max_disparity must be a multiple of 8, got {self.max_disparity}")
        if self.channels[2] % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide channels[2] ({self.channels[2]})")
        if min(self.channels) < 1 or self.refine_channels[0] < 1 or self.refine_channels[1] < 0:
            raise ValueError("channel counts must be >= 1 (refine_channels[1] may be 0: no full-res level)")
        return self


class StereoLossParams(Strict):
    scale_weights: tuple[float, float, float]  # smooth L1 at 1/4 volume, 1/2, full
    beta: float = Field(gt=0)  # smooth L1's quadratic zone (px); smaller pushes sub-pixel errors harder
    distribution_weight: float = Field(ge=0)  # cross-entropy of the 1/4 volume against one peak (0: off)
    distribution_spread: float = Field(gt=0)  # that peak's width, in volume steps (4 px)


class SelfSupervisedParams(Strict):
    """Self-supervised refinement on unlabelled real pairs, a second phase of training.

    From ``start_epoch`` on, every step adds the photometric / smoothness / left-right
    loss on a batch of real pairs from ``source`` (an acquired middlebury or kitti
    dataset; its disparities, if any, are not used) to the synthetic supervised
    loss weighted by ``supervised_weight`` (0: real pairs only).
    """

    source: str | None  # null: off
    split: str
    start_epoch: int = Field(ge=0)
    weight: float = Field(ge=0)
    supervised_weight: float = Field(ge=0)
    ssim_weight: float = Field(ge=0, le=1)  # photometric = w * (1 - SSIM) / 2 + (1 - w) * L1
    smoothness: float = Field(ge=0)  # edge-aware smoothness of d / mean(d)
    left_right: float = Field(ge=0)  # |d_left - d_right warped into the left| (px / max_disparity)
    downscale: float = Field(ge=1)  # shrink real images first so their disparities fit max_disparity
    batch_size: int | None = Field(ge=1)  # default: train.batch_size


class StereoTrainParams(OptimParams):
    loss: StereoLossParams
    self_supervised: SelfSupervisedParams


class StereoSplitRef(Strict):
    source: str  # "synthetic" or an acquired dataset name
    split: str


class SgbmParams(Strict):
    """OpenCV StereoSGBM, the classical baseline (P1 = 8 * 3 * block^2, P2 = 32 * 3 * block^2)."""

    block_size: int = Field(ge=1, le=15)
    mode: Literal["sgbm", "hh", "3way", "hh4"]
    uniqueness_ratio: int = Field(ge=0, le=100)
    speckle_window_size: int = Field(ge=0)
    speckle_range: int = Field(ge=0)
    disp12_max_diff: int = Field(ge=-1)
    fill_invalid: bool  # fill invalid pixels from their row neighbours (KITTI devkit) before scoring

    @field_validator("block_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd, got {value}")
        return value


class StereoEvaluateParams(EvaluateParams):
    """Scores ``data.source``'s test split, then every split listed in ``splits``."""

    splits: list[StereoSplitRef]
    sgbm: SgbmParams


class StereoParams(Strict):
    synth: StereoSynthParams
    data: StereoDataParams
    augment: StereoAugmentParams
    model: StereoModelParams
    train: StereoTrainParams
    evaluate: StereoEvaluateParams
    registry: RegisterParams = Field(alias="register")
