"""Embed user images with a pretrained backbone: one CSV row per image."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from visionflow.data.batching import image_to_tensor
from visionflow.data.images import read_rgb


@torch.no_grad()
def embed_image(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> list[float]:
    """uint8 RGB (H, W, 3) -> its embedding (D floats), the image at its own size."""
    return model(image_to_tensor(image).unsqueeze(0).to(device))[0].cpu().tolist()


def answer_embedding(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> dict:
    """The served answer: the pooled encoder output of the image, full float32 precision."""
    embedding = embed_image(model.to(device), image, device)
    return {"height": int(image.shape[0]), "width": int(image.shape[1]), "dim": len(embedding),
            "embedding": embedding}


@torch.no_grad()
def predict_embeddings(model: torch.nn.Module, inputs: list[Path], out_dir: Path,
                       device: torch.device) -> list[Path]:
    """Write ``out_dir/embeddings.csv``: ``file, e0 ... e{D-1}`` (the pooled encoder output).

    ``model`` maps images (N, 3, H, W) in [0, 1] to embeddings (N, D); each file
    is embedded at its own size.
    """
    model = model.to(device)  # export() hands over eval-mode modules
    rows = []
    for path in inputs:
        rows.append([str(path), *(f"{v:.6g}" for v in embed_image(model, read_rgb(path), device))])
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "embeddings.csv"
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *(f"e{i}" for i in range(len(rows[0]) - 1))] if rows else ["file"])
        writer.writerows(rows)
    return [target]
