"""COCO JSON: validated loading, deterministic writing, masks from annotations.

Boxes are COCO ``[x, y, width, height]`` in pixels in files; code that needs
corners converts with ``torchvision.ops.box_convert`` at the edge. Segmentations
are RLE (compressed or not) or polygons, as pycocotools reads them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visionflow.constants import IGNORE_INDEX
from visionflow.data.images import ImageReadError, read_rgb

logger = logging.getLogger(__name__)

BOX_TOLERANCE_PX = 1.0  # boxes may stick out of the image by rounding, no more


# Decoded images a dataset keeps in memory at most (a 128x128 RGB image is 48 KiB).
PRELOAD_BUDGET_BYTES = 2 * 1024**3


class CocoFormatError(ValueError):
    """A COCO file that breaks the format; the message names the file, record and field."""


@dataclass
class CocoDataset:
    """A validated COCO file. ``root`` is the folder image ``file_name``s are relative to."""

    path: Path
    root: Path
    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    by_image: dict[int, list[dict]] = field(default_factory=dict)
    _decoded: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # image id -> pixels

    def __post_init__(self) -> None:
        grouped: dict[int, list[dict]] = defaultdict(list)
        for annotation in self.annotations:
            grouped[annotation["image_id"]].append(annotation)
        self.by_image = dict(grouped)

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def image_path(self, image: dict) -> Path:
        return self.root / image["file_name"]

    def preload(self, budget_bytes: int = PRELOAD_BUDGET_BYTES) -> bool:
        """Decode every image once and keep it, if all of them fit in ``budget_bytes``.

        Training reads each image every epoch; decoding it again each time would cost the
        loader more than the augmentation does. Loader processes forked afterwards share the
        decoded pixels. Returns whether the images were loaded.
        """
        if sum(3 * image["height"] * image["width"] for image in self.images) > budget_bytes:
            return False
        for image in self.images:
            self._decoded[image["id"]] = self._decode(image)
        return True

    def read_image(self, image: dict) -> np.ndarray:
        """The image of a record as uint8 (H, W, 3) RGB; its size must be the record's.
        A copy of the decoded image if :meth:`preload` kept it (callers may change it)."""
        if image["id"] in self._decoded:
            return self._decoded[image["id"]].copy()
        return self._decode(image)

    def _decode(self, image: dict) -> np.ndarray:
        path = self.image_path(image)
        pixels = read_rgb(path)
        if pixels.shape[:2] != (image["height"], image["width"]):
            raise ImageReadError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but {self.path} image id "
                                 f"{image['id']} says width {image['width']}, height {image['height']}")
        return pixels

    def annotations_of(self, image_id: int) -> list[dict]:
        return self.by_image.get(image_id, [])


def _require(record: dict, key: str, where: str, kinds: type | tuple[type, ...]) -> Any:
    if not isinstance(record, dict):
        raise CocoFormatError(f"{where}: must be an object, not {type(record).__name__}")
    if key not in record:
        raise CocoFormatError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise CocoFormatError(f"{where}: field '{key}' has type {type(value).__name__}")
    return value


def _finite(values: list, where: str, key: str) -> None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values):
        raise CocoFormatError(f"{where}: field '{key}' holds a non-finite or non-numeric value")


def _record_id(record: Any, index: int) -> str:
    """How an error names a record: its id, else its position in the list."""
    if isinstance(record, dict) and "id" in record:
        return str(record["id"])
    return f"? (entry {index})"


def validate_coco(data: Any, path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Check a parsed COCO file; returns (images, annotations, categories)."""
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be an object")
    images = _require(data, "images", str(path), list)
    annotations = _require(data, "annotations", str(path), list)
    categories = _require(data, "categories", str(path), list)

    category_ids: dict[int, dict] = {}
    for index, category in enumerate(categories):
        where = f"{path}: category {_record_id(category, index)}"
        cid = _require(category, "id", where, int)
        _require(category, "name", where, str)
        if cid in category_ids:
            raise CocoFormatError(f"{where}: duplicate category id")
        if "keypoints" in category:
            _require(category, "keypoints", where, list)
        category_ids[cid] = category

    image_sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(images):
        where = f"{path}: image {_record_id(image, index)}"
        iid = _require(image, "id", where, int)
        _require(image, "file_name", where, str)
        width = _require(image, "width", where, int)
        height = _require(image, "height", where, int)
        if width <= 0 or height <= 0:
            raise CocoFormatError(f"{where}: width and height must be positive")
        if iid in image_sizes:
            raise CocoFormatError(f"{where}: duplicate image id")
        if ".." in Path(image["file_name"]).parts or Path(image["file_name"]).is_absolute():
            raise CocoFormatError(f"{where}: field 'file_name' must be relative, inside the dataset")
        image_sizes[iid] = (width, height)

    seen: set[int] = set()
    for index, annotation in enumerate(annotations):
        where = f"{path}: annotation id {_record_id(annotation, index)}"
        aid = _require(annotation, "id", where, int)
        if aid in seen:
            raise CocoFormatError(f"{where}: duplicate annotation id")
        seen.add(aid)
        image_id = _require(annotation, "image_id", where, int)
        if image_id not in image_sizes:
            raise CocoFormatError(f"{where}: field 'image_id' refers to unknown image {image_id}")
        category_id = _require(annotation, "category_id", where, int)
        if category_id not in category_ids:
            raise CocoFormatError(f"{where}: field 'category_id' refers to unknown category {category_id}")
        bbox = _require(annotation, "bbox", where, list)
        if len(bbox) != 4:
            raise CocoFormatError(f"{where}: field 'bbox' must be [x, y, width, height]")
        _finite(bbox, where, "bbox")
        x, y, w, h = bbox
        if w < 0 or h < 0:
            raise CocoFormatError(f"{where}: field 'bbox' has negative width or height ({w}, {h})")
        width, height = image_sizes[image_id]
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise CocoFormatError(f"{where}: field 'bbox' {bbox} lies outside its "
                                  f"{width}x{height} image")
        if "segmentation" in annotation:
            _check_segmentation(annotation["segmentation"], where, (height, width))
        if "keypoints" in annotation:
            keypoints = _require(annotation, "keypoints", where, list)
            _finite(keypoints, where, "keypoints")
            expected = category_ids[category_id].get("keypoints")
            if len(keypoints) % 3 or (expected is not None and len(keypoints) != 3 * len(expected)):
                raise CocoFormatError(f"{where}: field 'keypoints' must hold x, y, v for each of the "
                                      f"category's {len(expected or [])} keypoints")
        if annotation.get("iscrowd", 0) not in (0, 1):
            raise CocoFormatError(f"{where}: field 'iscrowd' must be 0 or 1")
    return images, annotations, categories


def _check_segmentation(segmentation: Any, where: str, size: tuple[int, int]) -> None:
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise CocoFormatError(f"{where}: field 'segmentation' polygon needs >= 3 x, y pairs")
            _finite(polygon, where, "segmentation")
    elif isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise CocoFormatError(f"{where}: field 'segmentation' RLE needs 'counts' and 'size'")
        if not isinstance(segmentation["size"], list) or list(segmentation["size"]) != list(size):
            raise CocoFormatError(f"{where}: field 'segmentation' RLE size {segmentation['size']} "
                                  f"differs from its image's height, width {list(size)}")
        _check_rle_counts(segmentation["counts"], where, size)
    else:
        raise CocoFormatError(f"{where}: field 'segmentation' must be polygons or RLE")


def check_same_categories(train: CocoDataset, val: CocoDataset) -> None:
    """Validation must score the classes training learns: same ids and names, same order."""
    ours = [(c["id"], c["name"]) for c in train.categories]
    theirs = [(c["id"], c["name"]) for c in val.categories]
    if ours != theirs:
        raise CocoFormatError(f"{val.path}: categories {theirs} differ from {train.path}'s {ours} "
                              f"(id, name); both splits need the same list")


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` in Python).

    Each number is 6-bit characters from '0' (48) on: 5 bits of value, bit 0x20 "more follows",
    a sign from bit 0x10 of the last; from the fourth on, a number is a difference to the
    run two before. Raises ValueError on a character outside the alphabet or a cut-off number,
    which pycocotools would read past the end of the string.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the string ends inside a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[position]!r} at {position} is not RLE")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _check_rle_counts(counts: Any, where: str, size: tuple[int, int]) -> None:
    """Run lengths must be non-negative and cover the image exactly (pycocotools crashes, or
    fails later naming nothing, otherwise)."""
    if isinstance(counts, str):
        try:
            runs = rle_string_counts(counts)
        except ValueError as exc:
            raise CocoFormatError(f"{where}: field 'segmentation' RLE counts are corrupt: {exc}") from None
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
    else:
        raise CocoFormatError(f"{where}: field 'segmentation' RLE counts must be a string or a list of integers")
    if any(run < 0 for run in runs) or sum(runs) != size[0] * size[1]:
        raise CocoFormatError(f"{where}: field 'segmentation' RLE counts are corrupt: runs sum to {sum(runs)} "
                              f"pixels (negative runs: {sum(run < 0 for run in runs)}), the image has "
                              f"{size[0]}x{size[1]} = {size[0] * size[1]}")


def load_coco(path: str | Path, root: str | Path | None = None) -> CocoDataset:
    """Read and validate a COCO file; images resolve against ``root`` (default: its folder)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CocoFormatError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise CocoFormatError(f"{path}: not valid JSON: {exc}") from None
    images, annotations, categories = validate_coco(data, path)
    if images and not annotations:
        # Scores on such a split are -1 ("not applicable") and training learns only background.
        logger.warning("visionflow: warning: %s: %d images but no annotations", path, len(images))
    return CocoDataset(path, Path(root) if root is not None else path.parent, images, annotations,
                       categories)


def dump_json(path: str | Path, data: Any) -> None:
    """Deterministic JSON (fixed key order as given, no spaces) written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)


def encode_mask(mask: np.ndarray) -> dict:
    """bool (H, W) -> compressed RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """bool (H, W) mask of one annotation's ``segmentation`` (polygons or RLE)."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(annotations: list[dict], height: int, width: int,
                  label_of_category: dict[int, int]) -> np.ndarray:
    """uint8 (H, W) class labels from instance masks; 0 is background.

    Later annotations paint over earlier ones; ``iscrowd`` regions become
    :data:`IGNORE_INDEX`, since they mix classes or instances.
    """
    labels = np.zeros((height, width), np.uint8)
    for annotation in annotations:
        if "segmentation" not in annotation:
            raise CocoFormatError(f"annotation id {annotation['id']}: missing field 'segmentation'")
        mask = annotation_mask(annotation, height, width)
        labels[mask] = IGNORE_INDEX if annotation.get("iscrowd", 0) else label_of_category[
            annotation["category_id"]]
    return labels
