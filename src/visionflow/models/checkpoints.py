"""The one place visionflow reads a torch file: ``torch.load(..., weights_only=True)``.

A pickle can run any code when it is loaded; ``weights_only=True`` lets torch rebuild
tensors and plain containers only, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says
(an explicit argument wins over the environment). Lightning's ``load_from_checkpoint``
does not force it, so modules are built here from the hyper-parameters saved in the
checkpoint and then given its ``state_dict``. ``tests/test_checkpoints.py`` fails on
any other ``torch.load`` or ``load_from_checkpoint`` under ``src/``.

Imports torch only (it lives in ``models/``, which every stage that reads a model depends on):
Lightning stays out of the evaluate and predict paths that do not need it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

# Key of a Lightning checkpoint naming the family that wrote it (``TaskModule.on_save_checkpoint``).
TASK_KEY = "visionflow_task"


class CheckpointError(ValueError):
    """A model file that cannot be used as asked; the message names the file."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_weights(path: str | Path, what: str = "checkpoint") -> Any:
    """Tensors and plain containers from ``path``; never runs code from the file.

    A missing file is a ``FileNotFoundError``, an unreadable or truncated one (or one
    holding objects other than tensors) a :class:`CheckpointError`, both naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and unpickler errors all mean "not such a file"
        raise CheckpointError(f"{path}: not a readable {what} ({_first_line(exc)})") from None


def read_lightning_checkpoint(path: str | Path, task: str | None = None
                              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, hyper_parameters) of a checkpoint written by ``Trainer.fit``.

    ``task``: the family that will use it; a checkpoint another family wrote is an error.
    """
    payload = load_weights(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a visionflow training checkpoint (no 'state_dict')")
    written_by = payload.get(TASK_KEY)
    if task is not None and written_by is not None and written_by != task:
        raise CheckpointError(f"{path}: a {written_by} checkpoint, not {task}; use --task {written_by}")
    hparams = payload.get("hyper_parameters") or {}
    return payload["state_dict"], dict(hparams)


def require_hparams(hparams: dict[str, Any], keys: Iterable[str], path: str | Path, task: str) -> None:
    """Every key must be saved in the checkpoint: an older or foreign one is named, with the fix."""
    missing = [key for key in keys if hparams.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)} in the checkpoint: not a {task} checkpoint or "
                              f"one from an older visionflow; retrain with `visionflow train --task {task}`")


def build_from_checkpoint(module_class: type, path: str | Path, task: str, required: Iterable[str] = ()) -> Any:
    """``module_class.from_hyperparameters(hyper_parameters)`` with the checkpoint's weights, in eval mode.

    The hyperparameters are plain data; the module rebuilds its typed sections from them (and
    upgrades an older checkpoint's, through its family's one upgrade function).
    ``required``: hyper-parameters the family cannot do without (an error to retrain if absent).
    """
    state_dict, hparams = read_lightning_checkpoint(path, task)
    require_hparams(hparams, required, path, task)
    try:
        module = module_class.from_hyperparameters(hparams)
        module.load_state_dict(state_dict)
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: does not fit a {task} model ({_first_line(exc)}); "
                              f"retrain with `visionflow train --task {task}`") from None
    module.source_checkpoint = str(path)  # for later errors about what the file lacks
    return module.eval()


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed (a submodule's weights)."""
    start = prefix.rstrip(".") + "."
    return {key[len(start):]: value for key, value in state_dict.items() if key.startswith(start)}
