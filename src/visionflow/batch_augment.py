"""An ``augment:`` list run as one kornia pipeline over a whole batch, on the training device.

Families whose per-image augmentation costs more than their training step (self-supervision's
two views of small images) augment the batch after it reaches the device instead of in the
loader: the loader then only hands out cached images, and the GPU draws the views for a whole
batch in a few kernels. The list keeps albumentations' names and arguments, so a pipeline reads
the same in params either way; each name maps to the kornia transform that does the same (the
names and their checks, which params run on load: :mod:`visionflow.batched_transforms`):

    RandomResizedCrop {size, scale, ratio}   -> kornia RandomResizedCrop
    HorizontalFlip, VerticalFlip             -> RandomHorizontalFlip, RandomVerticalFlip
    RandomRotate90                           -> RandomRotation90 (0-3 quarter turns)
    Affine {scale, rotate, translate_percent} -> RandomAffine (each a [min, max] list;
                                                translate symmetric, [-t, t])
    ColorJitter {brightness, contrast, saturation, hue} -> ColorJitter (torchvision's ranges)
    ToGray                                   -> RandomGrayscale

Families with boxes or keypoints move them with the draw: :class:`PointAugment` returns, with the
images, each image's 3x3 matrix from input to output pixel coordinates (pixel centres at integers),
which :func:`move_points` applies.

Kornia draws each batch's parameters from torch's global CPU generator (then applies them on
the batch's device), which ``training.EpochSeeding`` seeds per epoch: a rerun draws the same
views, a resumed run too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from visionflow.batched_transforms import check_batched, value_range
from visionflow.config import ConfigError, TransformSpec

if TYPE_CHECKING:
    import torch

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
    if spec.name == "Affine":
        shift = value_range(kwargs.get("translate_percent", [0, 0]), "translate_percent")[1]
        return K.RandomAffine(degrees=value_range(kwargs.get("rotate", [0, 0]), "rotate"),
                              translate=(shift, shift) if shift else None,
                              scale=value_range(kwargs.get("scale", [1, 1]), "scale"), p=p)
    if spec.name == "ColorJitter":  # albumentations' defaults where a range is not given
        return K.ColorJitter(*(kwargs.get(k, 0.2) for k in ("brightness", "contrast", "saturation", "hue")), p=p)
    return K.RandomGrayscale(p=p)  # ToGray


def build_batch_augment(specs: Sequence[TransformSpec], key_path: str) -> "torch.nn.Module":
    """One kornia pipeline for ``specs``: float images (N, 3, H, W) in [0, 1] -> the same shape
    (a crop's ``size`` sets H, W), each image with its own draw. Errors name the key."""
    import kornia.augmentation as K

    try:
        check_batched(specs, key_path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    transforms = []
    for index, spec in enumerate(specs):
        try:
            transforms.append(_kornia_transform(spec))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{key_path}[{index}].kwargs: {spec.name}: {exc}") from None
    return K.AugmentationSequential(*transforms)


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


class PointAugment:
    """A batched pipeline that also says where each pixel went, for boxes and keypoints to follow.

    ``augment(images)`` -> (images (N, 3, h, w) clamped to [0, 1], matrices (N, 3, 3) from input
    to output pixel coordinates, pixel centres at integers). ``replay(images)``: the last draw
    again, on other images of the same batch size (the augment previews' probes). Not an
    ``nn.Module``: it holds no weights, so checkpoints stay the network's alone.
    """

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def __call__(self, images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        with torch.no_grad():
            out = self.pipeline(images)
        return out.clamp(0, 1), self._matrices(images)

    def with_masks(self, images: "torch.Tensor", masks: "torch.Tensor"
                   ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """One draw over images (N, 3, H, W) and masks (N, M, H, W) float: (images, masks, matrices);
        masks follow the geometry alone (nearest pixel), as kornia treats a ``mask``."""
        import torch

        with torch.no_grad():
            out, masks_out = self.pipeline(images, masks, data_keys=["input", "mask"])
        return out.clamp(0, 1), masks_out, self._matrices(images)

    def _matrices(self, images: "torch.Tensor") -> "torch.Tensor":
        """The last draw's (N, 3, 3) matrices; identities when the list moves no pixel."""
        import torch

        matrices = self.pipeline.transform_matrix
        if matrices is None:
            matrices = torch.eye(3, device=images.device).expand(len(images), 3, 3)
        return matrices.to(images.dtype)

    def replay(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        with torch.no_grad():
            return self.pipeline(images, params=self.pipeline._params)


def move_points(points: "torch.Tensor", matrices: "torch.Tensor") -> "torch.Tensor":
    """points (N, K, 2) x, y in pixel-centre coordinates, matrices (N, 3, 3) -> (N, K, 2)."""
    from kornia.geometry.linalg import transform_points

    return transform_points(matrices, points)


def mirrored(matrices: "torch.Tensor") -> "torch.Tensor":
    """bool (N,): whether each draw was a reflection (left and right swapped)."""
    import torch

    return torch.linalg.det(matrices[:, :2, :2]) < 0


class DeviceAugmentHooks:
    """LightningModule hooks for a family that augments on the device (``augment_on: device``).

    ``batch_augment`` (set for training by the family; None: the loader augmented): a training
    batch -> the augmented batch, applied once the batch is on the device. Validation batches
    pass untouched. Mixed in before the family's ``TaskModule``.
    """

    batch_augment: Callable[[Any], Any] | None = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batch_augment is not None and self._trainer is not None and self.trainer.training:
            return self.batch_augment(batch)
        return batch

    def on_train_epoch_start(self) -> None:
        """Under DDP, each rank draws from a stream of its own. ``EpochSeeding`` (which runs
        first) seeds every rank alike, which would give the same draw to the same batch
        position on every rank. One process is left as it is."""
        import torch

        from visionflow.data.batching import derived_seed

        if self.batch_augment is not None and self.trainer.world_size > 1:
            torch.manual_seed(derived_seed(torch.initial_seed(), self.global_rank))
