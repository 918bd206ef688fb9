"""An ``augment:`` list run as one kornia pipeline over a whole batch, on the training device.

Families whose per-image augmentation costs more than their training step (self-supervision's
two views of small images) augment the batch after it reaches the device instead of in the
loader: the loader then only hands out cached images, and the GPU draws the views for a whole
batch in a few kernels. The list keeps albumentations' names and arguments, so a pipeline reads
the same in params either way; each name maps to the kornia transform that does the same:

    RandomResizedCrop {size, scale, ratio}   -> kornia RandomResizedCrop
    HorizontalFlip, VerticalFlip             -> RandomHorizontalFlip, RandomVerticalFlip
    RandomRotate90                           -> RandomRotation90 (0-3 quarter turns)
    ColorJitter {brightness, contrast, saturation, hue} -> ColorJitter (torchvision's ranges)
    ToGray                                   -> RandomGrayscale

Kornia draws each batch's parameters from torch's global CPU generator (then applies them on
the batch's device), which ``training.EpochSeeding`` seeds per epoch: a rerun draws the same
views, a resumed run too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from visionflow.config import ConfigError, TransformSpec

if TYPE_CHECKING:
    import torch

# albumentations name -> the keyword arguments it may carry here (all others are refused).
BATCHED_TRANSFORMS: dict[str, frozenset[str]] = {
    "RandomResizedCrop": frozenset({"size", "scale", "ratio"}),
    "HorizontalFlip": frozenset(),
    "VerticalFlip": frozenset(),
    "RandomRotate90": frozenset(),
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


def _kornia_transform(spec: TransformSpec) -> Any:
    import kornia.augmentation as K

    kwargs, p = spec.kwargs, spec.p
    if spec.name == "RandomResizedCrop":
        return K.RandomResizedCrop(tuple(kwargs["size"]), scale=tuple(kwargs.get("scale", (0.08, 1.0))),
                                   ratio=tuple(kwargs.get("ratio", (3 / 4, 4 / 3))), p=p)
    if spec.name == "HorizontalFlip":
        return K.RandomHorizontalFlip(p=p)
    if spec.name == "VerticalFlip":
        return K.RandomVerticalFlip(p=p)
    if spec.name == "RandomRotate90":
        return K.RandomRotation90(times=(0, 3), p=p)
    if spec.name == "ColorJitter":  # albumentations' defaults where a range is not given
        return K.ColorJitter(*(kwargs.get(k, 0.2) for k in ("brightness", "contrast", "saturation", "hue")), p=p)
    return K.RandomGrayscale(p=p)  # ToGray


def build_batch_augment(specs: Sequence[TransformSpec], key_path: str) -> "torch.nn.Module":
    """One kornia pipeline for ``specs``: float images (N, 3, H, W) in [0, 1] -> the same shape
    (a crop's ``size`` sets H, W), each image with its own draw. Errors name the key."""
    import kornia.augmentation as K

    try:
        check_batched(specs, key_path)
        return K.AugmentationSequential(*(_kornia_transform(spec) for spec in specs))
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{key_path}: {exc}") from None


class TwoViews:
    """``views(images)``: two independent draws of a batched pipeline over ``images``
    (N, 3, H, W) -> (view_1, view_2), each (N, 3, h, w). Not an ``nn.Module``: it holds no
    weights, so checkpoints stay the network's alone."""

    def __init__(self, augment: Callable[["torch.Tensor"], "torch.Tensor"]):
        self.augment = augment

    def __call__(self, images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        with torch.no_grad():
            return self.augment(images).clamp(0, 1), self.augment(images).clamp(0, 1)

    def seeded(self, images: "torch.Tensor", seed: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Two views drawn from ``seed`` alone, leaving torch's global generator as it was."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self(images)
