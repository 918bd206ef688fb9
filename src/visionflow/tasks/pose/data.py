"""Top-down pose data: the skeleton from the data, per-object crops, keypoint augmentation.

Everything about the skeleton (keypoint names, limbs, left/right pairs) comes
from the COCO file's keypoint category and from params, never from code, so
any COCO keypoints dataset works.

Crops: an object's box (COCO xywh) grows by ``margin`` and to the crop's aspect
ratio around its centre, and is resized into a (crop_height, crop_width) crop by
one scale and shift, ``x_crop = (x - x0) * scale`` (same for y): keypoints move
with exactly the same map as the pixels (OpenCV's ``warpAffine``, pixel centres
at integers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visionflow.config import ConfigError, TransformSpec
from visionflow.data.batching import TrainValLoaders, image_to_tensor, reseed_albumentations
from visionflow.data.coco import CocoDataset, CocoFormatError, load_coco


# --- the skeleton, from the data --------------------------------------------------------------


@dataclass(frozen=True)
class KeypointSchema:
    """The one keypoint category of a dataset.

    ``skeleton``: limbs as 0-based index pairs; ``flip_index[k]``: the keypoint that k
    becomes in a mirror image (k itself for midline points); ``flip_source``: where the
    pairs came from (params, the category, names, or none).
    """

    category_id: int
    category_name: str
    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_index: tuple[int, ...]
    flip_source: str

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def as_dict(self) -> dict[str, Any]:
        return {"category_id": self.category_id, "category_name": self.category_name,
                "names": list(self.names), "skeleton": [list(p) for p in self.skeleton],
                "flip_index": list(self.flip_index), "flip_source": self.flip_source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KeypointSchema":
        return cls(int(data["category_id"]), str(data["category_name"]), tuple(data["names"]),
                   tuple(tuple(p) for p in data["skeleton"]), tuple(data["flip_index"]),
                   str(data["flip_source"]))


def _side_swapped(name: str) -> str | None:
    """``left_knee`` -> ``right_knee`` (also ``Left``, ``l_``/``r_`` prefixes); None if no side."""
    for a, b in (("left", "right"), ("right", "left"), ("Left", "Right"), ("Right", "Left")):
        if a in name:
            return name.replace(a, b)
    match = re.match(r"^([lr])([_\-.])(.+)$", name)
    if match:
        return ("r" if match.group(1) == "l" else "l") + match.group(2) + match.group(3)
    return None


def flip_index_from_pairs(names: Sequence[str], pairs: Sequence[Sequence[str]], where: str,
                          error: type[Exception] = ConfigError) -> tuple[int, ...]:
    index = {name: i for i, name in enumerate(names)}
    flip = list(range(len(names)))
    paired: set[str] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise error(f"{where}: each flip pair needs two keypoint names, got {list(pair)}")
        for name in pair:
            if name not in index:
                raise error(f"{where}: unknown keypoint {name!r}; the dataset's keypoints: {', '.join(names)}")
            if name in paired:
                raise error(f"{where}: keypoint {name!r} is in more than one flip pair")
            paired.add(name)
        a, b = index[pair[0]], index[pair[1]]
        flip[a], flip[b] = b, a
    return tuple(flip)


def keypoint_schema(coco: CocoDataset, flip_pairs: Sequence[Sequence[str]] | None = None,
                    params_key: str = "pose.data.flip_pairs") -> KeypointSchema:
    """The dataset's keypoint category with its limbs and mirror pairs.

    Flip pairs: ``flip_pairs`` (params) if given, else the category's ``flip_pairs``
    field, else pairs of names that differ only by left/right.
    """
    categories = [c for c in coco.categories if c.get("keypoints")]
    if len(categories) != 1:
        names = [c["name"] for c in categories]
        raise CocoFormatError(f"{coco.path}: a pose dataset needs exactly one category with 'keypoints', "
                              f"found {len(categories)} {names if names else ''}".rstrip())
    category = categories[0]
    names = tuple(str(n) for n in category["keypoints"])
    where = f"{coco.path}: category {category['id']}"
    if len(set(names)) != len(names):
        raise CocoFormatError(f"{where}: field 'keypoints' has duplicate names")
    skeleton = []
    for limb in category.get("skeleton", []) or []:
        if (not isinstance(limb, list) or len(limb) != 2
                or not all(isinstance(i, int) and 1 <= i <= len(names) for i in limb)):
            raise CocoFormatError(f"{where}: field 'skeleton' entry {limb} must be two 1-based keypoint "
                                  f"indices in [1, {len(names)}]")
        skeleton.append((limb[0] - 1, limb[1] - 1))
    if flip_pairs is not None:
        flip, source = flip_index_from_pairs(names, flip_pairs, params_key), "params"
    elif category.get("flip_pairs") is not None:
        flip = flip_index_from_pairs(names, category["flip_pairs"], f"{where}: field 'flip_pairs'",
                                     CocoFormatError)
        source = "category"
    else:
        pairs = [(name, _side_swapped(name)) for i, name in enumerate(names)
                 if _side_swapped(name) in names[i + 1:]]
        flip = flip_index_from_pairs(names, pairs, where, CocoFormatError)
        source = "names" if pairs else "none"
    return KeypointSchema(int(category["id"]), str(category["name"]), names, tuple(skeleton), flip, source)


def load_split(data_root: Path, split: str) -> CocoDataset:
    path = data_root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' not found in dataset {data_root}")
    return load_coco(path, root=data_root)


# --- crops ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropGeometry:
    """Crop size and box margin (from ``pose.model``)."""

    height: int
    width: int
    margin: float

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def crop_transform(bbox: Sequence[float], geometry: CropGeometry) -> tuple[float, float, float]:
    """(x0, y0, scale) with ``x_crop = (x - x0) * scale`` for a COCO box [x, y, w, h].

    The box's centre goes to the crop's centre; the box, grown by the margin and to the
    crop's aspect ratio, fills the crop. COCO boxes span pixel edges, so the centre in
    pixel-centre coordinates is ``x + w / 2 - 0.5``.
    """
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = x + w / 2 - 0.5, y + h / 2 - 0.5
    w, h = max(w, 1.0) * geometry.margin, max(h, 1.0) * geometry.margin
    aspect = geometry.width / geometry.height
    if w / h > aspect:
        h = w / aspect
    else:
        w = h * aspect
    scale = geometry.width / w
    return cx - (geometry.width - 1) / 2 / scale, cy - (geometry.height - 1) / 2 / scale, scale


def crop_image(image: np.ndarray, x0: float, y0: float, scale: float, geometry: CropGeometry) -> np.ndarray:
    """uint8 (crop_height, crop_width, 3) from uint8 (H, W, 3); outside the image is black."""
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    return cv2.warpAffine(image, matrix, (geometry.width, geometry.height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def keypoints_to_crop(keypoints: np.ndarray, x0: float, y0: float, scale: float,
                      geometry: CropGeometry) -> np.ndarray:
    """float32 (K, 3) in crop pixels; labelled points that fall outside the crop get v = 0."""
    out = np.asarray(keypoints, np.float32).copy()
    out[:, 0] = (out[:, 0] - x0) * scale
    out[:, 1] = (out[:, 1] - y0) * scale
    return mark_outside(out, geometry.height, geometry.width)


def mark_outside(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Keypoints (K, 3) outside an image of (height, width) get v = 0 and x = y = 0 (as COCO writes
    unlabelled points); so do points already unlabelled. Modifies and returns ``keypoints``."""
    x, y = keypoints[:, 0], keypoints[:, 1]
    outside = (x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5) | (keypoints[:, 2] <= 0)
    keypoints[outside] = 0.0
    return keypoints


# --- augmentation -----------------------------------------------------------------------------


class KeypointAugment:
    """An albumentations pipeline from params, applied to a crop and its keypoints.

    Mirroring transforms (HorizontalFlip, VerticalFlip, Transpose, ...) swap left/right
    keypoints by ``flip_index``: whether the pipeline mirrored is measured, not looked
    up, by carrying three probe points along and checking their orientation, so any
    combination of transforms is handled (albumentations 2.0.8 has no label swap).
    Keypoints that leave the crop get v = 0 (x = y = 0). ``replay``: use
    ``A.ReplayCompose`` so :meth:`apply` can return the draw for replaying on probes.
    """

    def __init__(self, specs: Sequence[TransformSpec], key_path: str, flip_index: Sequence[int],
                 seed: int | None = None, replay: bool = False):
        import albumentations as A

        from visionflow.augment import _transforms

        self.flip_index = np.asarray(flip_index, np.int64)
        keypoint_params = A.KeypointParams(format="xy", remove_invisible=False)
        if replay:
            self.compose = A.ReplayCompose(_transforms(specs, key_path), keypoint_params=keypoint_params)
            self.compose.set_random_seed(seed)
        else:
            self.compose = A.Compose(_transforms(specs, key_path), keypoint_params=keypoint_params, seed=seed)

    def reseed(self, seed: int) -> None:
        reseed_albumentations(self.compose, seed)

    def apply(self, image: np.ndarray, keypoints: np.ndarray) -> dict[str, Any]:
        """{"image", "keypoints" (K, 3), "mirrored" (bool), "replay" (with ``replay=True``)}."""
        height, width = image.shape[:2]
        out = self.compose(image=image, keypoints=with_probes(keypoints[:, :2], height, width))
        moved = np.asarray(out["keypoints"], np.float32).reshape(-1, 2)
        result = np.concatenate([moved[: len(keypoints)], keypoints[:, 2:3]], axis=1).astype(np.float32)
        mirrored = is_mirrored(moved[len(keypoints):])
        if mirrored:
            result = result[self.flip_index]  # the point that was left_x now sits where right_x would
        new_height, new_width = out["image"].shape[:2]
        return {"image": out["image"], "keypoints": mark_outside(result, new_height, new_width),
                "mirrored": mirrored, "replay": out.get("replay")}

    def __call__(self, image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image uint8 (H, W, 3), keypoints float (K, 3) -> the same, transformed."""
        out = self.apply(image, keypoints)
        return out["image"], out["keypoints"]


def keypoint_drift(augment: KeypointAugment, image: np.ndarray, keypoints: np.ndarray) -> float:
    """Largest distance (px) between a transformed keypoint and where its pixel went, one draw.

    Each labelled keypoint is painted as a small Gaussian blob into a probe image that goes
    through the same draw of the pipeline's geometry (``augment`` built with ``replay=True``;
    colour transforms switched off for the probe); the blob's peak (sub-pixel, by a
    3x3 centroid) should sit on the keypoint, after the left/right swap. 0 if none is labelled.
    """
    import albumentations as A

    out = augment.apply(image, keypoints)
    record = out["replay"]
    for t in record["transforms"]:
        cls = getattr(A, t["__class_fullname__"].rsplit(".", 1)[-1], None)
        if not (isinstance(cls, type) and issubclass(cls, A.DualTransform)):
            t["applied"] = False
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    worst = 0.0
    for k, (x, y, v) in enumerate(keypoints):
        slot = augment.flip_index[k] if out["mirrored"] else k
        if v <= 0 or out["keypoints"][slot, 2] <= 0:
            continue
        probe = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)[..., None].astype(np.float32)
        moved = A.ReplayCompose.replay(record, image=probe, keypoints=with_probes(keypoints[:, :2], height,
                                                                                   width))["image"][..., 0]
        peak = blob_peak(moved)
        if peak is not None:
            worst = max(worst, float(np.hypot(peak[0] - out["keypoints"][slot, 0], peak[1] - out["keypoints"][slot, 1])))
    return worst


def blob_peak(probe: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of a blob's peak in a float (H, W) probe, sub-pixel by the 3x3 centroid around the
    brightest pixel; None where that pixel is on the border (no sub-pixel estimate)."""
    row, col = np.unravel_index(int(probe.argmax()), probe.shape)
    if not (0 < row < probe.shape[0] - 1 and 0 < col < probe.shape[1] - 1):
        return None
    patch = probe[row - 1: row + 2, col - 1: col + 2]
    steps = np.array([-1.0, 0.0, 1.0])
    return col + float((patch.sum(0) * steps).sum() / patch.sum()), row + float((patch.sum(1) * steps).sum() / patch.sum())


def with_probes(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (K + 3, 2): the points and three probes forming a counter-clockwise triangle."""
    cx, cy, d = (width - 1) / 2, (height - 1) / 2, min(height, width) / 4
    probes = np.array([[cx, cy], [cx + d, cy], [cx, cy + d]], np.float32)
    return np.concatenate([np.asarray(points, np.float32).reshape(-1, 2), probes])


def is_mirrored(probes: np.ndarray) -> bool:
    """Whether the probe triangle's orientation flipped (the transform was a reflection)."""
    (x0, y0), (x1, y1), (x2, y2) = probes[:3]
    return (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) < 0


# --- datasets ---------------------------------------------------------------------------------


class CocoPoseDataset(Dataset):
    """One item per annotated object: its crop and keypoints.

    Items are (crop float32 (3, H, W) in [0, 1], keypoints float32 (K, 3) x, y in crop
    pixels and v, info float32 (5,) = x0, y0, scale (the crop map), the box's longer side
    in image pixels, and the object's index in ``instances``).
    Objects: annotations of the keypoint category that are not crowds and (with
    ``labelled_only``) have at least one labelled keypoint.
    """

    def __init__(self, coco: CocoDataset, schema: KeypointSchema, geometry: CropGeometry,
                 transform: KeypointAugment | None = None, labelled_only: bool = True):
        self.coco, self.schema, self.geometry, self.transform = coco, schema, geometry, transform
        self.images = {image["id"]: image for image in coco.images}
        self.instances = [a for a in coco.annotations
                          if a["category_id"] == schema.category_id and not a.get("iscrowd", 0)
                          and "keypoints" in a
                          and (not labelled_only or any(v > 0 for v in a["keypoints"][2::3]))]
        self._items: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see cache_items

    def __len__(self) -> int:
        return len(self.instances)

    def cache_items(self) -> None:
        """Cut every crop once. Without a transform the items never change (augmentation, if any,
        happens on the device), so ``__getitem__`` then only indexes arrays: crops uint8
        (N, H, W, 3), 9 KiB a crop at 64 x 48. Needs at least one item."""
        if self.transform is not None:
            raise ValueError("cache_items: the crops of a dataset with a transform change every draw")
        crops, keypoints, info = zip(*(self.raw(index) for index in range(len(self))))
        self._items = np.stack(crops), np.stack(keypoints), np.stack(info)

    def image(self, image_id: int) -> np.ndarray:
        """uint8 (H, W, 3) (decoded once if the dataset was preloaded; crops never change it)."""
        return self.coco.read_image(self.images[image_id])

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crop uint8 (H, W, 3), keypoints float32 (K, 3) in crop pixels, info float32 (5,))."""
        annotation = self.instances[index]
        image = self.image(annotation["image_id"])
        x0, y0, scale = crop_transform(annotation["bbox"], self.geometry)
        crop = crop_image(image, x0, y0, scale, self.geometry)
        keypoints = np.asarray(annotation["keypoints"], np.float32).reshape(-1, 3)
        crop_keypoints = keypoints_to_crop(keypoints, x0, y0, scale, self.geometry)
        info = np.array([x0, y0, scale, max(annotation["bbox"][2], annotation["bbox"][3]), index], np.float32)
        return crop, crop_keypoints, info

    def reseed(self, seed: int) -> None:
        if self.transform is not None:
            self.transform.reseed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._items is not None:
            crops, keypoints, info = self._items
            return image_to_tensor(crops[index]), torch.from_numpy(keypoints[index].copy()), \
                torch.from_numpy(info[index].copy())
        crop, keypoints, info = self.raw(index)
        if self.transform is not None:
            crop, keypoints = self.transform(crop, keypoints)
        return image_to_tensor(crop), torch.from_numpy(keypoints), torch.from_numpy(info)


class PoseDataModule(TrainValLoaders):
    """Per-object crops of the train and validation splits, with their loaders."""

    val_batch_multiplier = 4

    def __init__(self, data_root: Path, schema: KeypointSchema, geometry: CropGeometry, batch_size: int,
                 train_transform: KeypointAugment | None = None, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False):
        self.data_root = Path(data_root)
        self.schema, self.geometry = schema, geometry
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory = pin_memory
        self.train = CocoPoseDataset(load_split(self.data_root, "train"), schema, geometry, train_transform)
        self.train.coco.preload()
        val_split = "val" if (self.data_root / "val.json").is_file() else "test"
        val_coco = load_split(self.data_root, val_split)
        val_schema = keypoint_schema(val_coco, flip_pairs=None)
        if val_schema.names != schema.names:
            raise CocoFormatError(f"{val_coco.path}: keypoints {list(val_schema.names)} differ from "
                                  f"{self.train.coco.path}'s {list(schema.names)}")
        self.val = CocoPoseDataset(val_coco, schema, geometry)
        if not len(self.train):
            raise CocoFormatError(f"{self.data_root}/train.json: no object with labelled keypoints to train on")
        if train_transform is None:  # augmented on the device, or not at all
            self.train.cache_items()
