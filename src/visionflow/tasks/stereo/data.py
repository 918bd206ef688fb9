"""Stereo training data: pairs from a Middlebury/KITTI-layout dataset, stereo-safe augmentation.

Items and batches (all float32):

- left, right: ``(3, H, W)`` in ``[0, 1]``;
- disparity: ``(1, H, W)`` left-image px, ``inf`` where invalid;
- real_left, real_right: unlabelled real pairs for self-supervision, or empty ``(0, 3, H, W)``
  tensors in a batch when self-supervision is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visionflow.config import ConfigError, TransformSpec
from visionflow.tasks.stereo.params import StereoAugmentParams, StereoParams
from visionflow.data.batching import TrainValLoaders, image_to_tensor
from visionflow.data.disparity import check_disparity_header
from visionflow.data.stereo import StereoRecord, find_pairs, list_splits, read_pair
from visionflow.paths import TaskPaths


class StereoBatch(NamedTuple):
    left: torch.Tensor  # (N, 3, H, W)
    right: torch.Tensor  # (N, 3, H, W)
    disparity: torch.Tensor  # (N, 1, H, W), inf invalid
    real_left: torch.Tensor  # (M, 3, H, W), M = 0 without self-supervision
    real_right: torch.Tensor


def source_root(data_root: Path, source: str, task: str = "stereo") -> Path:
    """The folder of another data source of the same project (``synthetic`` or an acquired name).

    ``data_root`` is ``<project>/data/synthetic/<task>`` or ``<project>/data/raw/<name>``; both
    sit three levels below the project root.
    """
    root = TaskPaths(task, Path(data_root).parents[2]).data_root(source)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: stereo data source '{source}' not found; declare it under "
                                f"acquire.datasets (format middlebury or kitti) and run `visionflow acquire`")
    return root


def _image_only(specs: list[TransformSpec], key_path: str):
    import albumentations as A

    from visionflow.augment import build_transforms

    for index, spec in enumerate(specs):
        cls = getattr(A, spec.name, None)
        if isinstance(cls, type) and issubclass(cls, A.DualTransform):
            raise ConfigError(f"{key_path}[{index}].name: {spec.name} is a geometric transform; it would "
                              f"break the stereo geometry. Use pixel-level transforms here (geometry: "
                              f"stereo.augment.crop / vertical_flip)")
    return build_transforms(specs, key_path)


PLANAR_CURVATURE_PX = 0.05  # |second difference| of disparity above this: a depth edge, not a plane


def resize_disparity(disparity: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Disparity ``(H, W)`` (px, non-finite invalid) resized to ``size = (width, height)``.

    Values are multiplied by ``width / W``. Bilinear where the 2x2 source pixels lie on
    one plane (disparity is affine there, so bilinear is exact), nearest next to depth
    edges and invalid pixels, so no disparity between two surfaces is invented.
    """
    finite = np.isfinite(disparity)
    filled = np.where(finite, disparity, 0).astype(np.float32)
    curvature = np.zeros_like(filled)
    curvature[:, 1:-1] = np.abs(filled[:, 2:] - 2 * filled[:, 1:-1] + filled[:, :-2])
    curvature[1:-1] = np.maximum(curvature[1:-1], np.abs(filled[2:] - 2 * filled[1:-1] + filled[:-2]))
    edge = ((curvature > PLANAR_CURVATURE_PX) | ~finite).astype(np.uint8)
    planar = cv2.dilate(edge, np.ones((3, 3), np.uint8)) == 0
    linear = cv2.resize(filled, size, interpolation=cv2.INTER_LINEAR)
    nearest = cv2.resize(disparity.astype(np.float32), size, interpolation=cv2.INTER_NEAREST)
    use_linear = cv2.resize(planar.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return np.where(use_linear, linear, nearest) * np.float32(size[0] / disparity.shape[1])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` to ``size = (width, height)``: area-averaged when shrinking, bilinear when enlarging."""
    shrink = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class StereoAugmenter:
    """Rescale, crop, vertical flip and an occluding patch on both views + disparity; photometric per view.

    Inputs and outputs: uint8 ``(H, W, 3)`` left/right and float32 ``(H, W)`` disparity.
    """

    def __init__(self, params: StereoAugmentParams, seed: int, key_path: str = "stereo.augment"):
        self.params = params
        self.per_view = _image_only(params.per_view, f"{key_path}.per_view") if params.per_view else None
        self.both_views = None
        if params.both_views:
            import albumentations as A

            checked = _image_only(params.both_views, f"{key_path}.both_views")
            self.both_views = A.Compose(list(checked.transforms), additional_targets={"right": "image"})
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Start a new stream (and reseed the photometric pipelines from it)."""
        self._rng = np.random.default_rng(seed)
        for pipeline in (self.per_view, self.both_views):
            if pipeline is not None:
                pipeline.set_random_seed(int(self._rng.integers(2 ** 31)))

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # not reseeded per sample (the preview): one stream from the seed
            self.reseed(self.seed)
        return self._rng

    def geometry(self, left: np.ndarray, right: np.ndarray, disparity: np.ndarray | None,
                 crop: tuple[int, int], rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rescale, crop and flip; draws from ``rng`` (default: the augmenter's own stream)."""
        rng = rng if rng is not None else self.rng
        low, high = self.params.scale
        factor = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low < high else low
        if factor != 1.0:  # the scene seen by a camera with a longer focal length: disparities scale too
            size = (round(left.shape[1] * factor), round(left.shape[0] * factor))
            left, right = resize_image(left, size), resize_image(right, size)
            disparity = resize_disparity(disparity, size) if disparity is not None else None
        height, width = left.shape[:2]
        ch, cw = crop
        if height < ch or width < cw:
            raise ValueError(f"image {width}x{height} (rescaled by {factor:.2f}) is smaller than the crop "
                             f"{cw}x{ch} (stereo.augment.crop, stereo.augment.scale)")
        y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
        window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        left, right = left[window], right[window]
        disparity = disparity[window] if disparity is not None else None
        if rng.uniform() < self.params.vertical_flip:  # rows stay rows: epipolar lines are kept
            left, right = left[::-1], right[::-1]
            disparity = disparity[::-1] if disparity is not None else None
        # Copies: the dataset caches the originals, and transforms may work in place.
        return left.copy(), right.copy(), (disparity.copy() if disparity is not None else None)

    def occlude(self, right: np.ndarray) -> np.ndarray:
        """Paste a patch of the image's mean colour into the right view (no match for what it hides)."""
        rng = self.rng
        if rng.uniform() >= self.params.occlusion_patch:
            return right
        height, width = right.shape[:2]
        ph, pw = int(rng.uniform(0.1, 0.35) * height), int(rng.uniform(0.1, 0.35) * width)
        y0, x0 = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        right = right.copy()
        right[y0: y0 + ph, x0: x0 + pw] = right.reshape(-1, 3).mean(0).astype(np.uint8)
        return right

    def photometric(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.rng  # seeds the pipelines on first use
        if self.both_views is not None:
            out = self.both_views(image=left, right=right)
            left, right = out["image"], out["right"]
        if self.per_view is not None:
            left, right = self.per_view(image=left)["image"], self.per_view(image=right)["image"]
        return left, right

    def __call__(self, left: np.ndarray, right: np.ndarray, disparity: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        left, right, disparity = self.geometry(left, right, disparity, self.params.crop)
        right = self.occlude(right)
        left, right = self.photometric(left, right)
        return left, right, disparity


def disparity_to_tensor(disparity: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(disparity, dtype=np.float32))[None]


class StereoPairDataset(Dataset):
    """Labelled pairs as ``(left, right, disparity)`` tensors, augmented when ``augmenter`` is set.

    With ``real`` records (unlabelled pairs, downscaled by ``real_downscale`` and cropped like
    the labelled ones) each item also carries one real pair, for self-supervision.
    """

    def __init__(self, records: list[StereoRecord], augmenter: StereoAugmenter | None = None,
                 real: list[StereoRecord] | None = None, real_downscale: float = 1.0):
        unlabelled = [r.left for r in records if r.disparity is None]
        if unlabelled:
            raise FileNotFoundError(f"{unlabelled[0]}: no disparity file beside it; supervised training "
                                    f"needs labelled pairs ({len(unlabelled)} of {len(records)} lack one)")
        self.records, self.augmenter = records, augmenter
        self.real, self.real_downscale = real or [], real_downscale
        # Decoded pairs are kept: small images, read every epoch (~170 KB a pair at 96x160).
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # Real pairs too, once downscaled: one is drawn for every item (~1.1 MB a pair at 741x500).
        self._real_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # Real draws have their own random stream, so the labelled pairs' augmentation is the
        # same with or without self-supervision (and before its start_epoch).
        self._real_generator: np.random.Generator | None = None

    def _labelled(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if index not in self._cache:
            pair = read_pair(self.records[index])
            self._cache[index] = (pair.left, pair.right, pair.disparity)
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.records)

    def _real(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._real_cache:
            pair = read_pair(self.real[index], with_labels=False)
            left, right = pair.left, pair.right
            if self.real_downscale > 1:
                size = (round(left.shape[1] / self.real_downscale), round(left.shape[0] / self.real_downscale))
                left = cv2.resize(left, size, interpolation=cv2.INTER_AREA)
                right = cv2.resize(right, size, interpolation=cv2.INTER_AREA)
            self._real_cache[index] = (left, right)
        return self._real_cache[index]

    def reseed(self, seed: int) -> None:
        if self.augmenter is not None:
            self.augmenter.reseed(seed)
        self._real_generator = np.random.default_rng([seed, 1])

    @property
    def _real_rng(self) -> np.random.Generator:
        if self._real_generator is None:  # not reseeded per sample: one stream from the seed
            self._real_generator = np.random.default_rng([self.augmenter.seed, 1])
        return self._real_generator

    def _real_item(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._real_rng
        left, right = self._real(int(rng.integers(len(self.real))))
        left, right, _ = self.augmenter.geometry(left, right, None, self.augmenter.params.crop, rng)
        return image_to_tensor(left), image_to_tensor(right)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        left, right, disparity = self._labelled(index)
        if self.augmenter is not None:
            left, right, disparity = self.augmenter(left, right, disparity)
        item = (image_to_tensor(left), image_to_tensor(right), disparity_to_tensor(disparity))
        if self.real and self.augmenter is not None:
            item = item + self._real_item()
        return item


def stereo_collate(items: list[tuple[torch.Tensor, ...]]) -> StereoBatch:
    """Stack items; sizes may differ (pads bottom/right: images with 0, disparity with inf)."""
    height = max(item[0].shape[1] for item in items)
    width = max(item[0].shape[2] for item in items)

    def stack(index: int, fill: float) -> torch.Tensor:
        tensors = [item[index] for item in items]
        out = torch.full((len(tensors), tensors[0].shape[0], height, width), fill)
        for i, t in enumerate(tensors):
            out[i, :, : t.shape[1], : t.shape[2]] = t
        return out

    left, right, disparity = stack(0, 0.0), stack(1, 0.0), stack(2, float("inf"))
    if len(items[0]) == 5:
        real_left, real_right = torch.stack([i[3] for i in items]), torch.stack([i[4] for i in items])
    else:
        real_left = real_right = torch.zeros(0, 3, height, width)
    return StereoBatch(left, right, disparity, real_left, real_right)


def labelled_split(root: Path, split: str) -> list[StereoRecord]:
    """The split's pairs, checked before training: every disparity file's header (an 8-bit
    KITTI PNG far into the split would otherwise stop training late) and the first pair in
    full (a dataset whose disparities are all invalid trains with a loss of 0)."""
    records = find_pairs(root, split)
    if not records:
        raise FileNotFoundError(f"{root / split}: no stereo pairs")
    for record in records:
        if record.disparity is not None:
            check_disparity_header(record.disparity)
    read_pair(records[0])
    return records


class StereoDataModule(TrainValLoaders):
    """Labelled synthetic (or acquired) pairs, plus unlabelled real pairs for the self-supervised phase."""

    collate = staticmethod(stereo_collate)
    val_batch_multiplier = 1

    def __init__(self, data_root: Path, params: StereoParams, num_workers: int = 0, pin_memory: bool = False):
        self.data_root = Path(data_root)
        self.params = params
        self.batch_size, self.num_workers, self.seed = params.train.batch_size, num_workers, params.train.seed
        self.pin_memory = pin_memory
        data = params.data
        self.train_records = labelled_split(self.data_root, data.train_split)
        val_split = data.val_split if data.val_split in list_splits(self.data_root) else data.test_split
        self.val_records = labelled_split(self.data_root, val_split)
        selfsup = params.train.self_supervised
        self.real_records: list[StereoRecord] = []
        if selfsup.source is not None:
            self.real_records = find_pairs(source_root(self.data_root, selfsup.source), selfsup.split)
            if not self.real_records:
                raise FileNotFoundError(f"stereo.train.self_supervised: no pairs in {selfsup.source}/"
                                        f"{selfsup.split}")
        self.augmenter = StereoAugmenter(params.augment, seed=self.seed)
        self.train = StereoPairDataset(self.train_records, self.augmenter, self.real_records,
                                       selfsup.downscale)
        self.val = StereoPairDataset(self.val_records)
