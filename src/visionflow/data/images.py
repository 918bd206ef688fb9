"""Reading and writing images with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that is missing, unreadable, or not what its annotation says."""


def decode_file(path: Path, flags: int, error: type[Exception] = ImageReadError, kind: str = "image",
                undecodable: str = "cannot decode image (corrupt or not an image)") -> np.ndarray:
    """The image file ``path`` as OpenCV's ``imdecode`` reads it with ``flags``.

    A missing file, an empty one or one that does not decode raises ``error`` naming
    the file: ``<path>: <kind> file not found``, ``<path>: <undecodable>``.
    """
    if not path.is_file():
        raise error(f"{path}: {kind} file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise error(f"{path}: {undecodable}")
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; grey and RGBA files are converted."""
    return decode_file(Path(path), cv2.IMREAD_COLOR_RGB)


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
