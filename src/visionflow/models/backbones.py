"""Backbone weights that travel between tasks: save once, load strictly anywhere.

A backbone file is what self-supervised pretraining hands to the supervised
families: the ``state_dict`` of a :class:`~visionflow.models.unet.UNetEncoder`
plus the architecture that produced it, saved with ``torch.save``::

    {"format": "visionflow-backbone/1", "architecture": {"channels": [...], "dilations": [...]},
     "state_dict": {...}, "meta": {...}}

Loading is strict on purpose: a missing key, an unexpected key or a shape
mismatch raises :class:`BackboneMismatchError` naming every offending key and
both shapes, since a silently half-loaded backbone trains as if from scratch.
Pure torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionflow.models.checkpoints import CheckpointError, load_weights

BACKBONE_FORMAT = "visionflow-backbone/1"


class BackboneMismatchError(ValueError):
    """A backbone file whose weights do not fit the module they are loaded into."""


def encoder_architecture(encoder: nn.Module) -> dict[str, Any]:
    """What rebuilds ``encoder``: a UNetEncoder's channels (dilations live in its state keys)."""
    return {"channels": list(getattr(encoder, "channels", ()))}


def save_state(state_dict: dict[str, torch.Tensor], path: str | Path, architecture: dict[str, Any],
               meta: dict[str, Any] | None = None) -> Path:
    """Write an encoder ``state_dict`` (as CPU tensors) in the backbone format to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    torch.save({"format": BACKBONE_FORMAT, "architecture": dict(architecture), "state_dict": state,
                "meta": dict(meta or {})}, path)
    return path


def save_backbone(encoder: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``encoder``'s weights and architecture to ``path``."""
    return save_state(encoder.state_dict(), path, encoder_architecture(encoder), meta)


def _load_tensors(path: Path, what: str) -> Any:
    """Tensors only (:func:`~visionflow.models.checkpoints.load_weights`); a missing or unreadable
    file is an error naming it."""
    try:
        return load_weights(path, what)
    except CheckpointError as exc:
        raise BackboneMismatchError(str(exc)) from None


def read_backbone(path: str | Path) -> dict[str, Any]:
    """The parsed backbone file; errors name the file and what is wrong with it."""
    path = Path(path)
    return _checked_backbone(_load_tensors(path, "backbone file"), path)


def _checked_backbone(payload: Any, path: Path) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BackboneMismatchError(f"{path}: format is {found!r}, expected {BACKBONE_FORMAT!r} "
                                    f"(written by visionflow.models.backbones.save_backbone)")
    if not isinstance(payload.get("state_dict"), dict):
        raise BackboneMismatchError(f"{path}: field 'state_dict' is missing or not a mapping")
    return payload


def check_compatible(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise BackboneMismatchError listing missing / unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: backbone {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"shape mismatch ({len(shapes)}): " + "; ".join(shapes[:8])
                        + (" ..." if len(shapes) > 8 else ""))
    if problems:
        raise BackboneMismatchError(f"{source}: weights do not fit {type(module).__name__}:\n  "
                                    + "\n  ".join(problems))


def load_backbone(encoder: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy a backbone file's weights into ``encoder`` (in place); returns the file's meta.

    Strict: nothing is copied unless every key matches in name and shape.
    """
    payload = read_backbone(path)
    state = payload["state_dict"]
    check_compatible(encoder, state, str(path))
    encoder.load_state_dict(state, strict=True)
    return dict(payload.get("meta", {}))


def encoder_state_from_checkpoint(state_dict: dict[str, torch.Tensor], source: str,
                                  marker: str = "stem.0.0.weight") -> dict[str, torch.Tensor]:
    """The U-Net encoder's weights inside a whole model's ``state_dict`` (e.g. a Lightning checkpoint).

    The encoder is found by its first convolution's key (``<prefix>stem.0.0.weight``);
    exactly one such prefix must exist. Returns the keys under that prefix, prefix removed.
    """
    prefixes = sorted(k[: -len(marker)] for k in state_dict if k.endswith(marker))
    if len(prefixes) != 1:
        found = ", ".join(repr(p) for p in prefixes) or "none"
        raise BackboneMismatchError(f"{source}: expected exactly one U-Net encoder (a key ending in "
                                    f"{marker!r}), found {len(prefixes)}: {found}")
    prefix = prefixes[0]
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def backbone_from_file(path: str | Path) -> dict[str, Any]:
    """A backbone payload from a backbone file or from a Lightning checkpoint holding an encoder."""
    path = Path(path)
    payload = _load_tensors(path, "backbone file or checkpoint")
    if isinstance(payload, dict) and payload.get("format") == BACKBONE_FORMAT:
        return _checked_backbone(payload, path)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state = encoder_state_from_checkpoint(payload["state_dict"], str(path))
        return {"format": BACKBONE_FORMAT, "architecture": {}, "state_dict": state,
                "meta": {"from_checkpoint": str(path)}}
    raise BackboneMismatchError(f"{path}: neither a visionflow backbone file nor a checkpoint with a "
                                f"'state_dict'")
