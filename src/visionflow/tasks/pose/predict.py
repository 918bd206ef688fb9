"""Keypoints on user images with an exported pose model (crops in, keypoints out).

Boxes come from a detection model: the one given (``visionflow predict --detector``),
else the project's ``models/detection/best.ckpt`` when it exists; without one each
image is one box, the whole image, which suits images of a single object. Writes per
image ``<stem>_keypoints.json`` (COCO keypoint results, image pixels) and
``<stem>_overlay.png`` (stems made distinct by :func:`~visionflow.tasks.base.output_stems`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionflow.data.batching import image_to_tensor
from visionflow.data.images import read_rgb, write_png
from visionflow.tasks.base import output_stems
from visionflow.tasks.pose.data import CropGeometry, crop_image, crop_transform
from visionflow.viz import draw_keypoints

DEFAULT_MARGIN = 1.25


def _buffer(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(model, name, None)
    return value if isinstance(value, torch.Tensor) else None


def project_detector(device: torch.device) -> Any | None:
    """The detection family's exported model, or None (with a note) when there is none."""
    from visionflow.env import project_root
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task

    root = project_root()
    checkpoint = TaskPaths("detection", root).best_checkpoint
    try:
        family = get_task("detection")
    except KeyError:
        family = None
    if family is None or not checkpoint.is_file():
        print(f"visionflow predict: no detection model ({checkpoint}); each image is one box",
              file=sys.stderr)
        return None
    return family.inference_module(family.load_module(checkpoint)).to(device).eval()


def _boxes(detector: Any | None, image: np.ndarray, device: torch.device, min_score: float = 0.3
           ) -> list[tuple[list[float], float]]:
    """COCO boxes [x, y, w, h] with scores."""
    height, width = image.shape[:2]
    if detector is None:
        return [([0.0, 0.0, float(width), float(height)], 1.0)]
    rows = detector(image_to_tensor(image)[None].to(device))[0].cpu().numpy()  # (max_det, 6)
    return [([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(score))
            for x1, y1, x2, y2, score, cls in rows if cls >= 0 and score >= min_score]


def _geometry(model: torch.nn.Module) -> CropGeometry:
    crop_size = _buffer(model, "crop_size")
    if crop_size is None:
        raise ValueError("this pose model does not say its crop size (buffer 'crop_size'); "
                         "export it again with `visionflow register --task pose`")
    height, width = (int(v) for v in crop_size.tolist())
    return CropGeometry(height, width, DEFAULT_MARGIN)


def _skeleton(model: torch.nn.Module) -> list[tuple[int, ...]]:
    skeleton = _buffer(model, "skeleton")
    return [tuple(p) for p in skeleton.tolist()] if skeleton is not None else []


@torch.no_grad()
def image_keypoints(model: torch.nn.Module, image: np.ndarray, device: torch.device, detector: Any | None,
                    geometry: CropGeometry) -> list[tuple[list[float], float, np.ndarray]]:
    """Per box (``detector``'s, or the whole image when None) of uint8 RGB (H, W, 3): the COCO box
    [x, y, w, h] px, its score and float32 keypoints (K, 3) = x, y image pixels, score."""
    boxes = _boxes(detector, image, device)
    if not boxes:
        return []
    maps = [crop_transform(box, geometry) for box, _ in boxes]
    crops = torch.stack([image_to_tensor(crop_image(image, *m, geometry)) for m in maps])
    keypoints = model(crops.to(device)).float().cpu().numpy()  # (N, K, 3) crop pixels
    found = []
    for (box, score), (x0, y0, scale), row in zip(boxes, maps, keypoints):
        row[:, 0] = row[:, 0] / scale + x0
        row[:, 1] = row[:, 1] / scale + y0
        found.append((box, score, row))
    return found


_PROJECT_DETECTORS: dict[str, Any] = {}


def answer_keypoints(model: torch.nn.Module, image: np.ndarray, device: torch.device,
                     detector: Any | None = "project") -> dict:
    """The served answer: per box, xyxy px and score, and its keypoints as [x, y, score] (image px,
    rounded as in ``<stem>_keypoints.json``) in the model's order; ``detector`` as for predict
    ("project" is read once per server and device)."""
    if detector == "project":
        if str(device) not in _PROJECT_DETECTORS:
            _PROJECT_DETECTORS[str(device)] = project_detector(device)
        detector = _PROJECT_DETECTORS[str(device)]
    model = model.to(device)
    found = image_keypoints(model, image, device, detector, _geometry(model))
    flip_index = _buffer(model, "flip_index")
    count = len(found[0][2]) if found else (int(flip_index.numel()) if flip_index is not None else 0)
    names = list(getattr(model, "keypoint_names", None) or [f"keypoint_{k}" for k in range(count)])
    return {"height": int(image.shape[0]), "width": int(image.shape[1]), "keypoint_names": names,
            "skeleton": [list(p) for p in _skeleton(model)],
            "instances": [{"box": [round(x, 3), round(y, 3), round(x + w, 3), round(y + h, 3)],
                           "box_score": score,
                           "keypoints": [[round(float(v), 3) for v in point] for point in row]}
                          for (x, y, w, h), score, row in found]}


@torch.no_grad()
def predict_keypoints(model: torch.nn.Module, images: list[Path], out_dir: Path, device: torch.device,
                      detector: Any | None = None) -> list[Path]:
    """Keypoints of every box (``detector``'s, or the whole image when None) of every image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    geometry = _geometry(model)
    skeleton = _skeleton(model)
    flip_index = _buffer(model, "flip_index")
    flip_index = flip_index.tolist() if flip_index is not None and flip_index.numel() else None
    written = []
    for path, stem in zip(images, output_stems(images)):
        image = read_rgb(path)
        results, overlay = [], image
        for box, score, row in image_keypoints(model, image, device, detector, geometry):
            results.append({"file_name": Path(path).name, "bbox": box, "box_score": score,
                            "keypoints": [round(float(v), 3) for v in row.ravel()]})
            overlay = draw_keypoints(overlay, row, skeleton, min_score=0.2, flip_index=flip_index)
        json_path = out_dir / f"{stem}_keypoints.json"
        json_path.write_text(json.dumps(results, indent=1) + "\n")
        png_path = out_dir / f"{stem}_overlay.png"
        write_png(png_path, overlay)
        written += [json_path, png_path]
    return written
