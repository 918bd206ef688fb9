"""Which ``augment:`` lists can run on the training device, checked when params load.

:mod:`visionflow.batch_augment` runs a list as one kornia pipeline over a batch; this module holds
only the names it knows and their checks, so that params load without importing torch or kornia.
A family section with ``augment_on`` derives from :class:`BatchedOnDevice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from visionflow.config import Strict, TransformSpec

AugmentOn = Literal["device", "loader"]

# albumentations name -> the keyword arguments it may carry on the device (all others are refused).
BATCHED_TRANSFORMS: dict[str, frozenset[str]] = {
    "RandomResizedCrop": frozenset({"size", "scale", "ratio"}),
    "HorizontalFlip": frozenset(),
    "VerticalFlip": frozenset(),
    "RandomRotate90": frozenset(),
    "Affine": frozenset({"scale", "rotate", "translate_percent"}),
    "ColorJitter": frozenset({"brightness", "contrast", "saturation", "hue"}),
    "ToGray": frozenset(),
}


def check_batched(specs: Sequence[TransformSpec], key_path: str) -> None:
    """Raise ValueError naming the first transform (``key_path[i]``) with no batched version."""
    for index, spec in enumerate(specs):
        where = f"{key_path}[{index}]"
        if spec.name not in BATCHED_TRANSFORMS:
            raise ValueError(f"{where}: {spec.name} has no batched (kornia) version; batched are "
                             f"{', '.join(BATCHED_TRANSFORMS)} (or augment in the loader: augment_on: loader)")
        unknown = sorted(set(spec.kwargs) - BATCHED_TRANSFORMS[spec.name])
        if unknown:
            raise ValueError(f"{where}.kwargs: {spec.name} on the device takes "
                             f"{sorted(BATCHED_TRANSFORMS[spec.name]) or 'no arguments'}, not {unknown}")
        if spec.name == "Affine":
            for key, value in spec.kwargs.items():
                value_range(value, f"{where}.kwargs.{key}")
            low, high = value_range(spec.kwargs.get("translate_percent", [0, 0]), where)
            if low != -high:
                raise ValueError(f"{where}.kwargs.translate_percent: on the device a shift is symmetric, "
                                 f"[-t, t]; got [{low}, {high}]")


def value_range(value: Any, where: str) -> tuple[float, float]:
    """A ``[min, max]`` list of two numbers as a tuple (scalars are refused: albumentations reads
    them differently per argument)."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[0] > value[1]):
        raise ValueError(f"{where}: expected a [min, max] list of two numbers, got {value!r}")
    return float(value[0]), float(value[1])


class BatchedOnDevice(Strict):
    """A family section with ``augment_on``: with ``device``, every transform of its augment list
    (at ``augment_key``, dotted, within the section) must have a batched version."""

    augment_key: ClassVar[str] = "augment"
    augment_on: AugmentOn

    @model_validator(mode="after")
    def _batched_on_device(self) -> "BatchedOnDevice":
        if self.augment_on == "device":
            specs: Any = self
            for name in self.augment_key.split("."):
                specs = getattr(specs, name)
            check_batched(specs, self.augment_key)
        return self
