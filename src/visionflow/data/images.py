"""Reading and writing images with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that is missing, unreadable, or not what its annotation says."""


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; grey and RGBA files are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: cannot decode image (corrupt or not an image)")
    return image


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) RGB or (H, W) grey as PNG, byte-identical for equal arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    path.write_bytes(encoded.tobytes())


def list_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder``, sorted (deterministic order)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
