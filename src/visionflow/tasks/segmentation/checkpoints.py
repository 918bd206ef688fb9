"""Read Lightning checkpoints for inference without importing Lightning (which costs seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_lightning_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, hyper_parameters) of a checkpoint written by ``Trainer.fit``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["state_dict"], checkpoint.get("hyper_parameters", {})


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed (a submodule's weights)."""
    start = prefix.rstrip(".") + "."
    return {key[len(start):]: value for key, value in state_dict.items() if key.startswith(start)}
