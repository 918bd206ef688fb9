"""Rectified stereo datasets on disk: Middlebury-style and KITTI-style layouts, one reader.

Middlebury style (also what the synthetic generator writes)::

    <root>/<split>/<scene>/im0.png        left image
                          im1.png        right image
                          disp0.pfm      left disparity, inf = invalid (MiddEval3: disp0GT.pfm); optional
                          mask0nocc.png  255 = visible in the right image, 128 = occluded, 0 = invalid; optional
                          calib.txt      ``ndisp=<int>`` bounds the disparity range; optional

KITTI style (KITTI 2015 ``data_scene_flow``)::

    <root>/<split>/image_2/<id>_10.png    left image (frames ``_10`` only when GT exists for them)
                   image_3/<id>_10.png    right image
                   disp_occ_0/<id>_10.png all valid pixels, 16-bit PNG (value / 256, 0 = invalid); optional
                   disp_noc_0/<id>_10.png non-occluded pixels only; optional

A pair without disparity is unlabelled (self-supervised training can use it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionflow.data.disparity import read_disparity
from visionflow.data.images import IMAGE_SUFFIXES, ImageReadError, read_rgb

STEREO_FORMATS = ("middlebury", "kitti")
MIDDLEBURY_DISPARITY_NAMES = ("disp0.pfm", "disp0GT.pfm")
NONOCC_VISIBLE = 255  # mask0nocc.png: visible in the right view
NONOCC_OCCLUDED = 128  # mask0nocc.png: occluded (or outside the right image)


@dataclass(frozen=True)
class StereoRecord:
    """Where one pair's files are. ``disparity``/``nonocc``/``calib`` are None when absent."""

    name: str
    left: Path
    right: Path
    disparity: Path | None = None
    nonocc: Path | None = None  # mask0nocc.png, or KITTI's disp_noc_0 map (nonocc_is_disparity)
    calib: Path | None = None
    nonocc_is_disparity: bool = False


@dataclass
class StereoPair:
    """One pair in memory.

    left, right: uint8 ``(H, W, 3)`` RGB. disparity: float32 ``(H, W)`` left-image px, ``inf``
    invalid, or None (unlabelled). nonoccluded: bool ``(H, W)`` (True = the pixel is seen by
    the right camera), or None when the dataset does not say. max_disparity: the dataset's bound
    on the range (Middlebury ``ndisp``), or None.
    """

    name: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray | None = None
    nonoccluded: np.ndarray | None = None
    max_disparity: float | None = None


def _first_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def detect_layout(split_dir: Path) -> str | None:
    """``"kitti"``, ``"middlebury"`` or None for a split folder."""
    if (split_dir / "image_2").is_dir() and (split_dir / "image_3").is_dir():
        return "kitti"
    if split_dir.is_dir() and any(_first_image(scene, "im0") for scene in split_dir.iterdir() if scene.is_dir()):
        return "middlebury"
    return None


def middlebury_records(split_dir: Path) -> list[StereoRecord]:
    records = []
    for scene in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        left = _first_image(scene, "im0")
        if left is None:
            continue
        right = _first_image(scene, "im1")
        if right is None:
            raise ImageReadError(f"{scene}: has {left.name} but no right image im1.png")
        records.append(StereoRecord(
            name=scene.name, left=left, right=right,
            disparity=_existing(*(scene / n for n in MIDDLEBURY_DISPARITY_NAMES)),
            nonocc=_existing(scene / "mask0nocc.png"), calib=_existing(scene / "calib.txt")))
    return records


def kitti_records(split_dir: Path) -> list[StereoRecord]:
    lefts = sorted(p for p in (split_dir / "image_2").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if any(p.stem.endswith("_10") for p in lefts):  # KITTI 2015: ground truth is for frame 10
        lefts = [p for p in lefts if p.stem.endswith("_10")]
    records = []
    for left in lefts:
        right = split_dir / "image_3" / left.name
        if not right.is_file():
            raise ImageReadError(f"{left}: no right image {right}")
        records.append(StereoRecord(
            name=left.stem, left=left, right=right,
            disparity=_existing(split_dir / "disp_occ_0" / left.name),
            nonocc=_existing(split_dir / "disp_noc_0" / left.name), nonocc_is_disparity=True))
    return records


def find_pairs(root: Path, split: str) -> list[StereoRecord]:
    """The pairs of ``<root>/<split>`` in a Middlebury or KITTI layout, sorted by name."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        splits = ", ".join(list_splits(root)) or "none"
        raise FileNotFoundError(f"{split_dir}: split '{split}' not found in stereo dataset {root} "
                                f"(splits there: {splits})")
    layout = detect_layout(split_dir)
    if layout == "kitti":
        return kitti_records(split_dir)
    if layout == "middlebury":
        return middlebury_records(split_dir)
    raise FileNotFoundError(f"{split_dir}: no stereo pairs: expected <scene>/im0.png + im1.png "
                            f"(Middlebury) or image_2/ + image_3/ (KITTI)")


def list_splits(root: Path) -> list[str]:
    """Subfolders of ``root`` that hold stereo pairs."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and detect_layout(p) is not None)


def read_calib_ndisp(path: Path) -> float | None:
    """``ndisp`` from a Middlebury ``calib.txt`` (None if the file has none)."""
    match = re.search(r"^\s*ndisp\s*=\s*([0-9.]+)", path.read_text(), re.MULTILINE)
    return float(match.group(1)) if match else None


def read_pair(record: StereoRecord, with_labels: bool = True) -> StereoPair:
    """Load a record; sizes must agree (the error names both files)."""
    left, right = read_rgb(record.left), read_rgb(record.right)
    if left.shape != right.shape:
        raise ImageReadError(f"{record.right}: right image is {right.shape[1]}x{right.shape[0]} but "
                             f"left image {record.left} is {left.shape[1]}x{left.shape[0]}")
    pair = StereoPair(record.name, left, right)
    if record.calib is not None:
        pair.max_disparity = read_calib_ndisp(record.calib)
    if not with_labels or record.disparity is None:
        return pair
    disparity = read_disparity(record.disparity)
    if disparity.shape != left.shape[:2]:
        raise ImageReadError(f"{record.disparity}: disparity is {disparity.shape[1]}x{disparity.shape[0]} "
                             f"but image {record.left} is {left.shape[1]}x{left.shape[0]}")
    finite = disparity[np.isfinite(disparity)]
    if not finite.size:  # trained on, it gives a loss of 0 and teaches nothing
        raise ImageReadError(f"{record.disparity}: no valid disparity (every pixel is NaN, inf or, in "
                             f"KITTI PNGs, 0)")
    if (finite < 0).any():
        raise ImageReadError(f"{record.disparity}: negative disparity values (min {finite.min():.3f})")
    pair.disparity = disparity
    if record.nonocc is not None:
        if record.nonocc_is_disparity:  # KITTI disp_noc_0: valid exactly where not occluded
            nonoccluded = np.isfinite(read_disparity(record.nonocc))
        else:
            nonoccluded = read_rgb(record.nonocc)[..., 0] == NONOCC_VISIBLE
        if nonoccluded.shape != disparity.shape:
            raise ImageReadError(f"{record.nonocc}: mask is {nonoccluded.shape[1]}x{nonoccluded.shape[0]} "
                                 f"but disparity {record.disparity} is {disparity.shape[1]}x{disparity.shape[0]}")
        pair.nonoccluded = nonoccluded
    return pair


def check_stereo_dataset(root: Path, fmt: str) -> dict[str, int]:
    """Validate an unpacked stereo dataset (acquire's format check); return counts.

    Every split folder must hold pairs in the layout ``fmt`` names; each pair's
    images must exist; disparity files (where present) must decode and match
    the image size. Reads only the first pair of each split fully, to stay fast
    on large datasets.
    """
    splits = list_splits(root)
    if not splits:
        raise FileNotFoundError(f"{root}: no stereo split folders: expected <split>/<scene>/im0.png "
                                f"(middlebury) or <split>/image_2/ (kitti)")
    counts = {"splits": len(splits), "pairs": 0, "labelled_pairs": 0}
    for split in splits:
        layout = detect_layout(Path(root) / split)
        if layout != fmt:
            raise ValueError(f"{Path(root) / split}: looks like a {layout} layout, but the dataset's "
                             f"format is {fmt}")
        records = find_pairs(root, split)
        read_pair(records[0])
        counts["pairs"] += len(records)
        counts["labelled_pairs"] += sum(r.disparity is not None for r in records)
    return counts
