"""Disparity maps on disk: PFM (Middlebury, SceneFlow) and 16-bit PNG (KITTI). One reader for both.

In memory a disparity map is float32 ``(H, W)`` in left-image pixels
(``x_right = x_left - d``); invalid pixels hold :data:`INVALID_DISPARITY`
(``inf``, Middlebury's convention). Any non-finite value read from a file is
invalid.

- PFM: a text header ``Pf`` (1 channel) or ``PF`` (3 channels), ``width height``,
  and a scale whose sign gives the byte order (negative: little-endian), then
  float32 rows stored **bottom to top**.
- KITTI PNG: uint16, ``disparity = value / 256``, ``0`` = invalid; so a valid
  disparity is at least 1/256 px and at most 255.996 px, with 1/256 px steps.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from visionflow.data.images import decode_file

INVALID_DISPARITY = np.float32(np.inf)
KITTI_SCALE = 256.0

_PFM_HEADER = re.compile(rb"^(P[Ff])\s+(\d+)\s+(\d+)\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s")


class DisparityFormatError(ValueError):
    """A disparity file that cannot be read as what its name says; names the file."""


def read_pfm(path: str | Path) -> np.ndarray:
    """float32 ``(H, W)`` (``Pf``) or ``(H, W, 3)`` (``PF``), top row first, values as stored."""
    path = Path(path)
    if not path.is_file():
        raise DisparityFormatError(f"{path}: disparity file not found")
    data = path.read_bytes()
    match = _PFM_HEADER.match(data)
    if match is None:
        raise DisparityFormatError(f"{path}: not a PFM file (header must be 'Pf' or 'PF', "
                                   f"width height, scale)")
    magic, width, height, scale = match.groups()
    width, height, scale = int(width), int(height), float(scale)
    if width < 1 or height < 1 or scale == 0:
        raise DisparityFormatError(f"{path}: bad PFM header: width {width}, height {height}, scale {scale}")
    channels = 3 if magic == b"PF" else 1
    count = width * height * channels
    body = data[match.end():]
    if len(body) < 4 * count:
        raise DisparityFormatError(f"{path}: PFM data holds {len(body)} bytes, header says "
                                   f"{width}x{height}x{channels} float32 = {4 * count} bytes")
    dtype = np.dtype("<f4") if scale < 0 else np.dtype(">f4")
    values = np.frombuffer(body, dtype=dtype, count=count).astype(np.float32)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.ascontiguousarray(np.flipud(values.reshape(shape)))  # stored bottom row first


def write_pfm(path: str | Path, values: np.ndarray) -> None:
    """Write float32 ``(H, W)`` or ``(H, W, 3)`` as little-endian PFM (rows bottom to top)."""
    path = Path(path)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 2:
        magic = b"Pf"
    elif values.ndim == 3 and values.shape[2] == 3:
        magic = b"PF"
    else:
        raise ValueError(f"{path}: PFM holds (H, W) or (H, W, 3) arrays, got shape {values.shape}")
    height, width = values.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = np.flipud(values).astype("<f4").tobytes()
    path.write_bytes(magic + b"\n%d %d\n-1\n" % (width, height) + body)


def read_kitti_png(path: str | Path) -> np.ndarray:
    """float32 ``(H, W)`` disparity from a KITTI 16-bit PNG; 0 becomes ``inf`` (invalid)."""
    path = Path(path)
    image = decode_file(path, cv2.IMREAD_UNCHANGED, DisparityFormatError, "disparity", "cannot decode PNG")
    if image.dtype != np.uint16 or image.ndim != 2:
        raise DisparityFormatError(f"{path}: KITTI disparity must be a 1-channel 16-bit PNG, got "
                                   f"{image.dtype} with shape {image.shape}")
    disparity = image.astype(np.float32) / KITTI_SCALE
    disparity[image == 0] = INVALID_DISPARITY
    return disparity


def write_kitti_png(path: str | Path, disparity: np.ndarray) -> None:
    """Write float ``(H, W)`` disparity as a KITTI 16-bit PNG.

    Non-finite values become 0 (invalid); valid values are rounded to 1/256 px
    and clipped to ``[1/256, 65535/256]`` so that no valid pixel turns invalid.
    Negative disparities cannot be stored and raise.
    """
    path = Path(path)
    disparity = np.asarray(disparity, dtype=np.float64)
    if disparity.ndim != 2:
        raise ValueError(f"{path}: KITTI disparity must be (H, W), got shape {disparity.shape}")
    valid = np.isfinite(disparity)
    if (disparity[valid] < 0).any():
        raise ValueError(f"{path}: KITTI PNG cannot store negative disparities")
    encoded = np.zeros(disparity.shape, np.uint16)
    encoded[valid] = np.clip(np.round(disparity[valid] * KITTI_SCALE), 1, 65535).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(".png", encoded)
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    path.write_bytes(buffer.tobytes())


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_disparity_header(path: str | Path) -> None:
    """What the first bytes can tell: a ``.pfm`` starts with a PFM header, a KITTI ``.png`` is
    1-channel 16-bit. Cheap enough for every file of a dataset before training reads them."""
    path = Path(path)
    if not path.is_file():
        raise DisparityFormatError(f"{path}: disparity file not found")
    with open(path, "rb") as f:
        head = f.read(64)
    suffix = path.suffix.lower()
    if suffix == ".pfm":
        if _PFM_HEADER.match(head) is None:
            raise DisparityFormatError(f"{path}: not a PFM file (header must be 'Pf' or 'PF', "
                                       f"width height, scale)")
    elif suffix == ".png":
        # IHDR is the first chunk: bit depth at byte 24, colour type (0: grey) at 25
        if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
            raise DisparityFormatError(f"{path}: cannot decode PNG")
        depth, colour = head[24], head[25]
        if depth != 16 or colour != 0:
            raise DisparityFormatError(f"{path}: KITTI disparity must be a 1-channel 16-bit PNG, got "
                                       f"{depth}-bit colour type {colour}")
    else:
        raise DisparityFormatError(f"{path}: unknown disparity format {suffix!r}; use .pfm or KITTI .png")


def read_disparity(path: str | Path) -> np.ndarray:
    """float32 ``(H, W)`` disparity in px from ``.pfm`` or KITTI ``.png``; invalid = ``inf``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pfm":
        values = read_pfm(path)
        if values.ndim == 3:  # some writers store disparity in the first of three channels
            values = values[..., 0]
        values = values.copy()
        values[~np.isfinite(values)] = INVALID_DISPARITY
        return values
    if suffix == ".png":
        return read_kitti_png(path)
    raise DisparityFormatError(f"{path}: unknown disparity format {suffix!r}; use .pfm or KITTI .png")


def write_disparity(path: str | Path, disparity: np.ndarray) -> None:
    """Write by suffix: ``.pfm`` (float32, inf invalid) or ``.png`` (KITTI 16-bit)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".pfm":
        values = np.asarray(disparity, np.float32).copy()
        values[~np.isfinite(values)] = INVALID_DISPARITY
        write_pfm(path, values)
    elif suffix == ".png":
        write_kitti_png(path, disparity)
    else:
        raise DisparityFormatError(f"{path}: unknown disparity format {suffix!r}; use .pfm or KITTI .png")
