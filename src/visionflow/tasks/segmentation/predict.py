"""Segment user images with an exported model: label PNGs and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visionflow.data.batching import image_to_tensor
from visionflow.data.images import read_rgb, write_png
from visionflow.viz import overlay_labels, palette


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: list[Path], out_dir: Path,
                  device: torch.device) -> list[Path]:
    """For each image: ``<stem>_labels.png`` (class index per pixel) and ``<stem>_overlay.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    written = []
    for path in images:
        image = read_rgb(path)
        logits = model(image_to_tensor(image)[None].to(device))  # (1, C, H, W)
        labels = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        colours = palette(logits.shape[1])
        for suffix, picture in (("labels", labels), ("overlay", overlay_labels(image, labels, colours))):
            target = out_dir / f"{Path(path).stem}_{suffix}.png"
            write_png(target, picture)
            written.append(target)
    return written
