"""Typed params: ``params.yaml`` is read here once, validated, and passed down.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key path (``segmentation.train.lr: must be > 0``). Nothing else in
the package reads params.yaml.

Every task family has the same sections (``synth``, ``data``, ``augment``,
``model``, ``train``, ``evaluate``, ``register``) so that ``dvc.yaml`` can
declare each stage's params once for all families (a ``foreach``); what is
inside a section is the family's own.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

TASK_FAMILIES = ("segmentation", "detection", "instance_segmentation", "pose", "stereo", "selfsup")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and key path."""


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, values are checked on assignment.

    Floats must be finite everywhere (``lr: .inf`` is a typo, not a setting).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- shared sections ----------------------------------------------------------------------


def _devices(value: Any) -> int | list[int] | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise ValueError(f"must be 'auto', a device count >= 1 or a list of device ids (got {value!r})")


class TrainerParams(Strict):
    """Lightning ``Trainer`` settings shared by every family (``trainer:``)."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Annotated[Any, BeforeValidator(_devices)] = "auto"  # a count, a list of ids, or "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    # auto: 32-true on a CPU, bf16-mixed on CUDA (visionflow.runtime says what each value means)
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed", "64-true"] = "auto"
    deterministic: Literal["auto", True, False] = "auto"  # auto: exact on a CPU, never raises on CUDA
    num_workers: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"  # data loader processes
    progress_bar: bool = True


class TrackingParams(Strict):
    """MLflow (``tracking:``). ``MLFLOW_TRACKING_URI`` in the environment wins over ``uri``."""

    uri: str | None = None  # None: sqlite:///<project>/mlflow.db with artifacts in mlartifacts/


class DatasetSource(Strict):
    """One real dataset to fetch (``acquire.datasets.<name>``)."""

    url: str | None = None  # http(s):// or file://
    path: str | None = None  # a local folder or archive, relative to the project
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    format: Literal["coco", "image_folder", "middlebury", "kitti"] = "coco"  # stereo: visionflow.data.stereo

    @model_validator(mode="after")
    def _one_location(self) -> "DatasetSource":
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://", "file://")):
                raise ValueError(f"url must be http(s):// or file://, got {self.url!r}")
            if self.sha256 is None:
                raise ValueError("sha256 is required for a url")
        return self


class AcquireParams(Strict):
    retries: int = Field(3, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    datasets: dict[str, DatasetSource] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _safe_names(cls, datasets: dict[str, DatasetSource]) -> dict[str, DatasetSource]:
        for name in datasets:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"dataset name {name!r} may hold only letters, digits, - and _")
        return datasets


class TransformSpec(Strict):
    """One albumentations transform: its class name and keyword arguments."""

    name: str
    p: float = Field(1.0, ge=0, le=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataParams(Strict):
    """Where a family's images come from: its synthetic set or an acquired dataset's name."""

    source: str = "synthetic"


class EvaluateParams(Strict):
    overlays: int = Field(8, ge=0, le=64)
    batch_size: int = Field(64, ge=1)


class RegisterParams(Strict):
    model_name: str = Field(min_length=1)
    alias: str = "champion"


class OptimParams(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "onecycle", "cosine"] = "onecycle"
    seed: int = 0
    resume: bool = True  # continue an interrupted run with the same params from its last checkpoint


# --- segmentation -------------------------------------------------------------------------


class ShapesSynthParams(Strict):
    """The shapes scene generator (``data/synth/shapes.py``)."""

    seed: int = 0
    splits: dict[Literal["train", "val", "test"], int] = Field(
        default_factory=lambda: {"train": 4000, "val": 100, "test": 200})
    image_size: int = Field(64, ge=16, le=1024)
    classes: list[str] = Field(default_factory=lambda: ["circle", "square", "triangle"], min_length=1)
    min_objects: int = Field(1, ge=0)
    max_objects: int = Field(4, ge=0)
    min_radius: float = Field(7.0, gt=0)
    max_radius: float = Field(18.0, gt=0)
    min_visible_fraction: float = Field(0.4, ge=0, le=1)
    empty_fraction: float = Field(0.0, ge=0, le=1)
    noise_std: float = Field(8.0, ge=0)
    texture_probability: float = Field(0.5, ge=0, le=1)
    blur_probability: float = Field(0.2, ge=0, le=1)
    crowding: float = Field(0.0, ge=0, le=1)  # chance a shape is placed next to an earlier one

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
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        if self.min_radius > self.max_radius:
            raise ValueError("min_radius must be <= max_radius")
        if "train" not in self.splits or "test" not in self.splits:
            raise ValueError("splits needs at least train and test")
        return self


class SegmentationModelParams(Strict):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    dilations: list[int] = Field(default_factory=lambda: [1])

    @field_validator("channels", "dilations")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("every entry must be >= 1")
        return values


class SegmentationLossParams(Strict):
    """``cross_entropy``, ``focal`` or ``soft_jaccard``; ``weights`` mixes several."""

    weights: dict[Literal["cross_entropy", "focal", "soft_jaccard"], float] = Field(
        default_factory=lambda: {"cross_entropy": 1.0})
    focal_gamma: float = Field(2.0, ge=0)

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("needs at least one loss with a positive weight, none negative")
        return weights


class SegmentationTrainParams(OptimParams):
    loss: SegmentationLossParams = Field(default_factory=SegmentationLossParams)


class SegmentationParams(Strict):
    synth: ShapesSynthParams = Field(default_factory=ShapesSynthParams)
    data: DataParams = Field(default_factory=DataParams)
    augment: list[TransformSpec] = Field(default_factory=list)
    model: SegmentationModelParams = Field(default_factory=SegmentationModelParams)
    train: SegmentationTrainParams
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    registry: RegisterParams = Field(alias="register")


# --- detection and instance segmentation ----------------------------------------------------


class BoxRuleParams(Strict):
    """What happens to boxes that a transform moves partly out of the image (albumentations ``BboxParams``).

    Boxes are clipped to the image when ``clip``; a box is dropped (with its mask) when less
    than ``min_visibility`` of its area stays inside, or when its area falls below ``min_area``
    px^2 or a side below ``min_side`` px.
    """

    clip: bool = True
    min_visibility: float = Field(0.3, ge=0, le=1)
    min_area: float = Field(16.0, ge=0)
    min_side: float = Field(2.0, ge=0)


class BoxAugmentParams(Strict):
    """``<task>.augment`` for box tasks: the transforms and the rule for boxes leaving the image."""

    transforms: list[TransformSpec] = Field(default_factory=list)
    boxes: BoxRuleParams = Field(default_factory=BoxRuleParams)


def _positive_list(values: list[int]) -> list[int]:
    if any(v < 1 for v in values):
        raise ValueError("every entry must be >= 1")
    return values


class DetectionModelParams(Strict):
    """``centernet``: anchor-free heatmap peaks on the stride-4 pyramid level.
    ``retinanet``: anchor-based single shot (torchvision RetinaNet: focal loss, L1 boxes, NMS).

    Both share a from-scratch residual backbone (``channels``: strides 4, 8, 16, 32) and an FPN.
    """

    name: Literal["centernet", "retinanet"] = "centernet"
    neck: Literal["unet", "fpn"] = "unet"  # centernet: conv-BN-ReLU top-down merges, or an FPN sum
    channels: list[int] = Field(default_factory=lambda: [24, 48, 96, 160], min_length=4, max_length=4)
    blocks: list[int] = Field(default_factory=lambda: [1, 1, 2, 1], min_length=4, max_length=4)
    fpn_channels: int = Field(64, ge=1)
    head_channels: int = Field(64, ge=1)
    max_detections: int = Field(100, ge=1)  # per image, also the exported tensor's second dim
    score_threshold: float = Field(0.01, ge=0, lt=1)
    nms_iou: float = Field(0.5, gt=0, le=1)  # retinanet NMS; centernet keeps 3x3 local maxima
    anchor_sizes: list[int] = Field(default_factory=lambda: [16, 32, 64])  # retinanet, P3..P5
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)

    @field_validator("channels", "blocks", "anchor_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_list(values)

    @model_validator(mode="after")
    def _three_levels(self) -> "DetectionModelParams":
        if len(self.anchor_sizes) != 3:
            raise ValueError("anchor_sizes needs one size per pyramid level P3, P4, P5 (3 entries)")
        return self


class CenterNetLossParams(Strict):
    """CenterNet loss weights: heatmap focal loss, L1 on box size (output cells), L1 on offset."""

    heatmap: float = Field(1.0, ge=0)
    size: float = Field(0.1, ge=0)
    offset: float = Field(1.0, ge=0)
    classification: float = Field(0.0, ge=0)  # softmax CE across classes where objects are
    min_overlap: float = Field(0.7, gt=0, lt=1)  # sets each object's Gaussian radius
    regression: Literal["centre", "gaussian"] = "gaussian"  # size/offset at the centre cell, or its Gaussian


class DetectionTrainParams(OptimParams):
    grad_clip: float | None = Field(None, gt=0)  # clip the gradient norm (None: off)
    loss: CenterNetLossParams = Field(default_factory=CenterNetLossParams)  # centernet only


class InstanceSegmentationTrainParams(OptimParams):
    grad_clip: float | None = Field(None, gt=0)  # clip the gradient norm (None: off)


class DetectionEvaluateParams(EvaluateParams):
    max_dets: list[int] = Field(default_factory=lambda: [1, 10, 100], min_length=1)
    overlay_score: float = Field(0.3, ge=0, le=1)  # detections drawn on the overlays

    @field_validator("max_dets")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_list(values)


class DetectionParams(Strict):
    synth: ShapesSynthParams = Field(default_factory=ShapesSynthParams)
    data: DataParams = Field(default_factory=DataParams)
    augment: BoxAugmentParams = Field(default_factory=BoxAugmentParams)
    model: DetectionModelParams = Field(default_factory=DetectionModelParams)
    train: DetectionTrainParams
    evaluate: DetectionEvaluateParams = Field(default_factory=DetectionEvaluateParams)
    registry: RegisterParams = Field(alias="register")


class InstanceSegmentationModelParams(Strict):
    """torchvision Mask R-CNN sized for a CPU: residual backbone + FPN (P2..P5), few RoIs, light heads."""

    channels: list[int] = Field(default_factory=lambda: [24, 48, 96, 160], min_length=4, max_length=4)
    blocks: list[int] = Field(default_factory=lambda: [1, 1, 2, 1], min_length=4, max_length=4)
    fpn_channels: int = Field(64, ge=1)
    anchor_sizes: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])  # P2..P5
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    rpn_pre_nms_top_n: int = Field(300, ge=1)  # training; test uses half
    rpn_post_nms_top_n: int = Field(100, ge=1)
    rois_per_image: int = Field(64, ge=1)  # RoIs sampled for the box head's loss
    positive_fraction: float = Field(0.5, gt=0, le=1)
    box_head_dim: int = Field(256, ge=1)
    mask_head_channels: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    max_detections: int = Field(100, ge=1)
    score_threshold: float = Field(0.01, ge=0, lt=1)
    nms_iou: float = Field(0.5, gt=0, le=1)

    @field_validator("channels", "blocks", "anchor_sizes", "mask_head_channels")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_list(values)

    @model_validator(mode="after")
    def _four_levels(self) -> "InstanceSegmentationModelParams":
        if len(self.anchor_sizes) != 4:
            raise ValueError("anchor_sizes needs one size per pyramid level P2..P5 (4 entries)")
        return self


class InstanceSegmentationParams(Strict):
    synth: ShapesSynthParams = Field(default_factory=ShapesSynthParams)
    data: DataParams = Field(default_factory=DataParams)
    augment: BoxAugmentParams = Field(default_factory=BoxAugmentParams)
    model: InstanceSegmentationModelParams = Field(default_factory=InstanceSegmentationModelParams)
    train: InstanceSegmentationTrainParams
    evaluate: DetectionEvaluateParams = Field(default_factory=DetectionEvaluateParams)
    registry: RegisterParams = Field(alias="register")


# --- pose ---------------------------------------------------------------------------------


class FigureSynthParams(Strict):
    """The articulated-figure scene generator (``data/synth/figures.py``)."""

    seed: int = 0
    splits: dict[Literal["train", "val", "test"], int] = Field(
        default_factory=lambda: {"train": 1500, "val": 100, "test": 200})
    figure: str = "person"  # a figure model with a declared skeleton (data/synth/figures.py FIGURES)
    image_size: int = Field(128, ge=32, le=1024)
    min_figures: int = Field(1, ge=0)
    max_figures: int = Field(3, ge=0)
    min_height: float = Field(48.0, gt=0)  # pixels, upright figure
    max_height: float = Field(100.0, gt=0)
    max_rotation: float = Field(30.0, ge=0, le=180)  # degrees
    width_jitter: float = Field(0.15, ge=0, lt=1)
    truncation_probability: float = Field(0.15, ge=0, le=1)
    min_keypoints_inside: int = Field(7, ge=1)
    min_visible_fraction: float = Field(0.5, ge=0, le=1)
    max_occluders: int = Field(2, ge=0)
    occluder_probability: float = Field(0.5, ge=0, le=1)
    max_distractors: int = Field(2, ge=0)
    occluder_radius: tuple[float, float] = (6.0, 16.0)
    noise_std: float = Field(6.0, ge=0)
    texture_probability: float = Field(0.4, ge=0, le=1)
    blur_probability: float = Field(0.2, ge=0, le=1)

    @field_validator("figure")
    @classmethod
    def _known_figure(cls, figure: str) -> str:
        from visionflow.data.synth.figures import FIGURES

        if figure not in FIGURES:
            raise ValueError(_unknown(figure, list(FIGURES), "figure"))
        return figure

    @model_validator(mode="after")
    def _ranges(self) -> "FigureSynthParams":
        if self.min_figures > self.max_figures:
            raise ValueError("min_figures must be <= max_figures")
        if self.min_height > self.max_height:
            raise ValueError("min_height must be <= max_height")
        if not 0 < self.occluder_radius[0] <= self.occluder_radius[1]:
            raise ValueError("occluder_radius must be [low, high] with 0 < low <= high")
        if "train" not in self.splits or "test" not in self.splits:
            raise ValueError("splits needs at least train and test")
        return self


class PoseDataParams(DataParams):
    """``flip_pairs``: left/right keypoint name pairs that a mirror image swaps. None: the
    category's ``flip_pairs`` if the dataset has them, else names that differ only by
    left/right (``left_knee``/``right_knee``)."""

    flip_pairs: list[tuple[str, str]] | None = None


class PoseModelParams(Strict):
    """Top-down: each object is cropped from its box (with margin, fixed aspect) and resized."""

    head: Literal["heatmap", "regression"] = "heatmap"
    crop_height: int = Field(64, ge=16)
    crop_width: int = Field(48, ge=16)
    box_margin: float = Field(1.25, ge=1.0)  # the crop spans this times the box's longer side
    channels: list[int] = Field(default_factory=lambda: [24, 48, 96], min_length=3, max_length=3)
    heatmap_stride: Literal[2, 4] = 2  # heatmap cells per crop pixel: 1/2 or 1/4 resolution
    decoder: Literal["concat", "add"] = "concat"  # skip fusion: concat + two convs, or 1x1 + add + one conv
    sigma: float = Field(1.5, gt=0)  # Gaussian target width in heatmap cells
    # mse: heatmaps regress Gaussians (peak = score); cross_entropy: each map is a spatial softmax
    # trained against the normalised Gaussian
    heatmap_loss: Literal["mse", "cross_entropy"] = "mse"
    decode: Literal["taylor", "argmax"] = "taylor"  # sub-pixel Newton step on the log heatmap, or none
    modulate: bool = False  # smooth predicted heatmaps (DARK) before the Taylor step
    flip_test: bool = False  # average each crop's heatmaps with its mirror's (evaluation and export)

    @field_validator("channels")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("every entry must be >= 1")
        return values

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

    boxes: Literal["ground_truth", "detection"] = "ground_truth"
    sigmas: list[float] | dict[str, float] | None = None
    pck_thresholds: list[float] = Field(default_factory=lambda: [0.05, 0.1], min_length=1)
    max_dets: int = Field(20, ge=1)
    keypoint_score_threshold: float = Field(0.2, ge=0, le=1)  # keypoints that count in an instance's score
    detection_min_score: float = Field(0.05, ge=0, le=1)  # boxes: detection only
    detection_classes: list[int] | None = None  # detection class ids taken as figures; None: all

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


class PoseParams(Strict):
    synth: FigureSynthParams = Field(default_factory=FigureSynthParams)
    data: PoseDataParams = Field(default_factory=PoseDataParams)
    augment: list[TransformSpec] = Field(default_factory=list)
    model: PoseModelParams = Field(default_factory=PoseModelParams)
    train: PoseTrainParams
    evaluate: PoseEvaluateParams = Field(default_factory=PoseEvaluateParams)
    registry: RegisterParams = Field(alias="register")


# --- stereo -------------------------------------------------------------------------------


class StereoSynthParams(Strict):
    """The layered stereo scene generator (``data/synth/stereo.py``)."""

    seed: int = 0
    splits: dict[Literal["train", "val", "test"], int] = Field(
        default_factory=lambda: {"train": 1000, "val": 48, "test": 96})
    height: int = Field(96, ge=16, le=2048)
    width: int = Field(160, ge=16, le=4096)
    max_disparity: float = Field(48.0, gt=0)
    min_objects: int = Field(2, ge=0)
    max_objects: int = Field(7, ge=0)
    max_thin: int = Field(3, ge=0)
    max_leaves: int = Field(8, ge=0)
    slant: float = Field(0.25, ge=0, lt=0.9)
    ground_probability: float = Field(0.4, ge=0, le=1)
    texture_weights: dict[Literal["dead_leaves", "pink_noise", "leaves_noise", "grating", "uniform", "photo"],
                          float] = Field(default_factory=lambda: {
                              "dead_leaves": 0.35, "pink_noise": 0.25, "leaves_noise": 0.2, "grating": 0.1,
                              "uniform": 0.1})
    noise_std: float = Field(4.0, ge=0)
    blur_probability: float = Field(0.3, ge=0, le=1)
    photometric_difference: float = Field(0.08, ge=0, le=0.5)
    specular_probability: float = Field(0.2, ge=0, le=1)
    vignetting: float = Field(0.4, ge=0, le=1)
    supersample: int = Field(2, ge=1, le=4)

    @model_validator(mode="after")
    def _ranges(self) -> "StereoSynthParams":
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        if "train" not in self.splits or "test" not in self.splits:
            raise ValueError("splits needs at least train and test")
        if not self.texture_weights or any(w < 0 for w in self.texture_weights.values()) \
                or sum(self.texture_weights.values()) <= 0:
            raise ValueError("texture_weights needs a positive weight, none negative")
        return self


class StereoDataParams(DataParams):
    """``source``: ``synthetic`` or an acquired middlebury/kitti dataset; which of its splits to use."""

    train_split: str = "train"
    val_split: str = "val"  # falls back to test_split when the dataset has no such split
    test_split: str = "test"


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

    scale: tuple[float, float] = (1.0, 1.0)  # (min, max) factor, drawn log-uniform; 1: off
    crop: tuple[int, int] = (64, 128)  # (height, width), multiples of 8
    vertical_flip: float = Field(0.5, ge=0, le=1)
    occlusion_patch: float = Field(0.2, ge=0, le=1)  # chance of a patch hiding part of the right view
    per_view: list[TransformSpec] = Field(default_factory=list)
    both_views: list[TransformSpec] = Field(default_factory=list)

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
    max_disparity: int = Field(48, ge=8)  # cost volume range in px; wider ranges are matched in shifted windows
    channels: tuple[int, int, int] = (16, 24, 32)  # feature channels at 1, 1/2, 1/4 resolution
    groups: int = Field(8, ge=1)  # group-wise correlation groups (divide channels[2])
    aggregation_channels: int = Field(16, ge=1)
    refine_channels: tuple[int, int] = (32, 16)  # refinement at 1/2 and full resolution (0: no full-res level)
    refine_radius: int = Field(2, ge=0)  # local correlation offsets -r..r px per refinement level
    upsample: Literal["bilinear", "convex"] = "convex"  # x2 steps between levels
    argmin_radius: int | None = Field(1, ge=0)  # refinement starts from the soft-argmin within r steps of the best

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
    scale_weights: tuple[float, float, float] = (0.5, 0.7, 1.0)  # smooth L1 at 1/4 volume, 1/2, full
    beta: float = Field(1.0, gt=0)  # smooth L1's quadratic zone (px); smaller pushes sub-pixel errors harder
    distribution_weight: float = Field(0.5, ge=0)  # cross-entropy of the 1/4 volume against one peak (0: off)
    distribution_spread: float = Field(0.5, gt=0)  # that peak's width, in volume steps (4 px)


class SelfSupervisedParams(Strict):
    """Self-supervised refinement on unlabelled real pairs, a second phase of training.

    From ``start_epoch`` on, every step adds the photometric / smoothness / left-right
    loss on a batch of real pairs from ``source`` (an acquired middlebury or kitti
    dataset; its disparities, if any, are not used) to the synthetic supervised
    loss weighted by ``supervised_weight`` (0: real pairs only).
    """

    source: str | None = None  # null: off
    split: str = "training"
    start_epoch: int = Field(0, ge=0)
    weight: float = Field(1.0, ge=0)
    supervised_weight: float = Field(1.0, ge=0)
    ssim_weight: float = Field(0.85, ge=0, le=1)  # photometric = w * (1 - SSIM) / 2 + (1 - w) * L1
    smoothness: float = Field(0.05, ge=0)  # edge-aware smoothness of d / mean(d)
    left_right: float = Field(0.1, ge=0)  # |d_left - d_right warped into the left| (px / max_disparity)
    downscale: float = Field(1.0, ge=1)  # shrink real images first so their disparities fit max_disparity
    batch_size: int | None = Field(None, ge=1)  # default: train.batch_size


class StereoTrainParams(OptimParams):
    loss: StereoLossParams = Field(default_factory=StereoLossParams)
    self_supervised: SelfSupervisedParams = Field(default_factory=SelfSupervisedParams)


class StereoSplitRef(Strict):
    source: str  # "synthetic" or an acquired dataset name
    split: str


class SgbmParams(Strict):
    """OpenCV StereoSGBM, the classical baseline (P1 = 8 * 3 * block^2, P2 = 32 * 3 * block^2)."""

    block_size: int = Field(5, ge=1, le=15)
    mode: Literal["sgbm", "hh", "3way", "hh4"] = "hh"
    uniqueness_ratio: int = Field(5, ge=0, le=100)
    speckle_window_size: int = Field(50, ge=0)
    speckle_range: int = Field(2, ge=0)
    disp12_max_diff: int = Field(1, ge=-1)
    fill_invalid: bool = True  # fill invalid pixels from their row neighbours (KITTI devkit) before scoring

    @field_validator("block_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd, got {value}")
        return value


class StereoEvaluateParams(EvaluateParams):
    """Scores ``data.source``'s test split, then every split listed in ``splits``."""

    splits: list[StereoSplitRef] = Field(default_factory=list)
    sgbm: SgbmParams = Field(default_factory=SgbmParams)


class StereoParams(Strict):
    synth: StereoSynthParams = Field(default_factory=StereoSynthParams)
    data: StereoDataParams = Field(default_factory=StereoDataParams)
    augment: StereoAugmentParams = Field(default_factory=StereoAugmentParams)
    model: StereoModelParams = Field(default_factory=StereoModelParams)
    train: StereoTrainParams
    evaluate: StereoEvaluateParams = Field(default_factory=StereoEvaluateParams)
    registry: RegisterParams = Field(alias="register")


# --- selfsup ------------------------------------------------------------------------------


class SelfsupSynthParams(ShapesSynthParams):
    """Shapes scenes for self-supervision (``data/synth/shapes.py``), in three sets.

    ``unlabelled``: scenes as an image folder (the pretraining data); ``probe_*``:
    one object per image, filed under its shape's name (an image folder with one
    subfolder per class, as a user's own probe set would be); ``segmentation_*``:
    COCO scenes for the label-efficiency report.
    """

    splits: dict[Literal["unlabelled", "probe_train", "probe_test", "segmentation_train",
                         "segmentation_test"], int] = Field(default_factory=lambda: {
        "unlabelled": 3000, "probe_train": 500, "probe_test": 500,
        "segmentation_train": 200, "segmentation_test": 100})
    # plain: the objects on a plain random colour (contrastive learning on the generator's
    # striped backgrounds learns backgrounds, not shapes); scene: the generator's own backgrounds
    background: Literal["plain", "scene"] = "plain"

    @model_validator(mode="after")
    def _ranges(self) -> "SelfsupSynthParams":
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        if self.min_radius > self.max_radius:
            raise ValueError("min_radius must be <= max_radius")
        for split in ("unlabelled", "probe_train", "probe_test"):
            if self.splits.get(split, 0) < 2:
                raise ValueError(f"splits.{split} needs at least 2 images")
        return self


class SelfsupDataParams(DataParams):
    """``source``: the unlabelled images, ``synthetic`` or an acquired image_folder's name;
    ``extra_unlabelled``: more acquired image folders mixed in; ``probe``: the labelled
    probe set, ``synthetic`` or an acquired image folder with one subfolder per class."""

    extra_unlabelled: list[str] = Field(default_factory=list)
    probe: str = "synthetic"
    image_size: int = Field(64, ge=16, le=1024)  # every image is resized to this square first
    val_fraction: float = Field(0.1, gt=0, lt=1)  # unlabelled images held out for the val loss


class SelfsupModelParams(Strict):
    """The shared U-Net encoder (same keys as ``segmentation.model``, so weights transfer)
    and a projection head used only during pretraining."""

    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    dilations: list[int] = Field(default_factory=lambda: [1])
    projection_hidden: int = Field(128, ge=1)
    projection_dim: int = Field(64, ge=1)

    @field_validator("channels", "dilations")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("every entry must be >= 1")
        return values


class SelfsupTrainParams(OptimParams):
    method: Literal["simclr"] = "simclr"
    temperature: float = Field(0.2, gt=0)


class SelfsupEvaluateParams(EvaluateParams):
    """Probes on the frozen encoder and the label-efficiency report."""

    knn_k: int = Field(20, ge=1)
    linear_probe_weight_decay: float = Field(1e-3, ge=0)
    linear_probe_max_iter: int = Field(200, ge=1)
    raw_pixels_size: int = Field(32, ge=4)  # raw-pixel probe: images resized to this square
    label_fractions: list[float] = Field(default_factory=lambda: [0.05, 0.25, 1.0], min_length=1)
    transfer_steps: int = Field(150, ge=1)
    transfer_batch_size: int = Field(16, ge=1)
    transfer_lr: float = Field(0.006, gt=0)

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("every fraction must be in (0, 1]")
        return sorted(set(values))


class SelfsupParams(Strict):
    synth: SelfsupSynthParams = Field(default_factory=SelfsupSynthParams)
    data: SelfsupDataParams = Field(default_factory=SelfsupDataParams)
    augment: list[TransformSpec] = Field(default_factory=list)
    model: SelfsupModelParams = Field(default_factory=SelfsupModelParams)
    train: SelfsupTrainParams
    evaluate: SelfsupEvaluateParams = Field(default_factory=SelfsupEvaluateParams)
    registry: RegisterParams = Field(alias="register")


# --- the whole file -----------------------------------------------------------------------


class Params(Strict):
    tasks: list[str] = Field(min_length=1)
    trainer: TrainerParams = Field(default_factory=TrainerParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    acquire: AcquireParams = Field(default_factory=AcquireParams)
    segmentation: SegmentationParams | None = None
    detection: DetectionParams | None = None
    instance_segmentation: InstanceSegmentationParams | None = None
    pose: PoseParams | None = None
    stereo: StereoParams | None = None
    selfsup: SelfsupParams | None = None
    # Families whose training starts from a pretrained backbone: family -> a backbone file or a
    # checkpoint holding a U-Net encoder, e.g. {segmentation: models/selfsup/best.ckpt}.
    pretrained: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _enabled_tasks_configured(self) -> "Params":
        for index, task in enumerate(self.tasks):
            if task not in TASK_FAMILIES:
                raise _KeyPathError(("tasks", index), _unknown(task, TASK_FAMILIES, "task family"))
            if getattr(self, task) is None:
                raise _KeyPathError((task,), "enabled in tasks but has no section")
        for task, source in self.pretrained.items():
            if task not in self.tasks:
                raise _KeyPathError(("pretrained", task), _unknown(task, self.tasks, "enabled task family"))
            if not source or Path(source).is_absolute() or ".." in Path(source).parts:
                raise _KeyPathError(("pretrained", task), f"must be a path inside the project, got {source!r}")
            if Path(source).parts[:2] == ("models", task):
                raise _KeyPathError(("pretrained", task), f"{source} is {task}'s own output: a cycle")
        return self

    def task(self, name: str) -> Any:
        """The params section of an enabled task family."""
        if name not in self.tasks:
            raise ConfigError(f"task {name!r} is not enabled; tasks: {', '.join(self.tasks)}")
        return getattr(self, name)


class _KeyPathError(ValueError):
    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def _unknown(value: str, valid: tuple[str, ...] | list[str], what: str) -> str:
    close = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; valid: {', '.join(valid)}"


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _describe(error: dict, model: type[BaseModel]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    got = f" (got {error['input']!r})" if "input" in error and kind not in ("missing", "extra_forbidden") else ""
    if kind == "greater_than":
        return f"must be > {ctx['gt']}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}{got}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}{got}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}{got}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = _valid_keys(model, error["loc"][:-1])
        return _unknown(str(error["loc"][-1]), valid, "key") if valid else "unknown key"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _valid_keys(model: type[BaseModel], parent: tuple) -> list[str]:
    """The keys allowed at ``parent`` (a pydantic loc), found by walking the model's fields."""
    current: Any = model
    for part in parent:
        current = _inner_model(current)
        if isinstance(part, int):
            continue
        fields = _fields_by_key(current)
        if part not in fields:
            return []
        current = fields[part].annotation
    return list(_fields_by_key(_inner_model(current)))


def _fields_by_key(model: Any) -> dict[str, Any]:
    """A model's fields under the keys a params file uses (aliases where set)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``list[X]``, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _booleans_taken_as_numbers(raw: Any, validated: Any, loc: tuple = ()) -> list[tuple]:
    """Key paths where the file has ``true``/``false`` but the params hold a number.

    Pydantic's lax mode reads ``epochs: true`` as 1; comparing the file with what was
    validated catches that for every field, nested lists included, without per-field rules.
    """
    if isinstance(raw, bool):
        return [] if isinstance(validated, bool) else [loc]
    if isinstance(raw, dict) and isinstance(validated, dict):
        return [path for key, value in raw.items() if key in validated
                for path in _booleans_taken_as_numbers(value, validated[key], (*loc, key))]
    if isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)):
        if len(raw) == len(validated):
            return [path for i, (value, out) in enumerate(zip(raw, validated))
                    for path in _booleans_taken_as_numbers(value, out, (*loc, i))]
        # A validator reshaped the list (sorted, deduplicated): judge it whole.
        if any(isinstance(v, bool) for v in raw) and not any(isinstance(v, bool) for v in validated):
            return [loc]
    return []


def _error_message(source: str, lines: list[str]) -> str:
    """One line for one error (a CLI prints it as is); a list for several."""
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: invalid params\n  " + "\n  ".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of keys to values")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc, message = error["loc"], _describe(error, Params)
            if loc and loc[-1] == "[key]":  # a dict key that is not one of the allowed ones
                loc, message = loc[:-1], f"unknown key: {message}"
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _KeyPathError):
                loc, message = cause.loc, cause.message
            lines.append(f"{_key_path(loc) or '<root>'}: {message}")
        raise ConfigError(_error_message(source, lines)) from None
    coerced = _booleans_taken_as_numbers(raw, params.model_dump(by_alias=True))
    if coerced:
        raise ConfigError(_error_message(source, [f"{_key_path(loc)}: must be a number, not a boolean"
                                                  for loc in coerced]))
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key path."""
    return parse_params(_read_yaml(path), str(path))


def _check_unique_keys(node: yaml.Node, path: str, loc: tuple = ()) -> None:
    """Refuse a mapping that repeats a key: YAML loaders keep the last, DVC calls the file corrupt."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in seen:
                    raise ConfigError(f"{path}: line {line}: duplicate key {_key_path((*loc, key))} "
                                      f"(first at line {seen[key]})")
                seen[key] = line
            _check_unique_keys(value_node, path, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path, (*loc, i))


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
        return yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; errors name the file."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params keys at the top level")
    return data


def profile_overrides(params_path: str | Path, profile_path: str | Path) -> dict[str, Any]:
    """The leaf keys a profile (``params.gpu.yaml``) sets, as ``{"a.b.c": value}``.

    Every key must already exist in ``params_path`` (a typo would otherwise be a new key that
    nothing reads), and the merged params must validate; errors name the profile and the key.
    Lists are leaves: a profile replaces a list whole.
    """
    base, overlay = read_yaml_mapping(params_path), read_yaml_mapping(profile_path)
    flat: dict[str, Any] = {}

    def walk(node: dict, target: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if not isinstance(target, dict) or key not in target:
                raise ConfigError(f"{profile_path}: {path}: not a key of {params_path}")
            if isinstance(value, dict) and isinstance(target[key], dict):
                walk(value, target[key], path + ".")
            else:
                flat[path] = value

    walk(overlay, base, "")
    parse_params(merge_overrides(base, flat), f"{params_path} + {profile_path}")
    return flat


def merge_overrides(params: dict, overrides: dict[str, Any]) -> dict:
    """A copy of raw ``params`` with dotted ``overrides`` set."""
    merged = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = merged
        for key in parents:
            node = node[key]
        node[leaf] = value
    return merged


def params_hash(section: Any) -> str:
    """A short, stable hash of a params section (for tags and resume keys)."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
