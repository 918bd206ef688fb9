"""train: fit the family's model with Lightning; best and last checkpoints into models/<task>/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionflow.config import Params
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task


def run(params: Params, task: str, root: Path, callbacks: Sequence[Any] = ()) -> dict:
    from visionflow.training import train_task

    return train_task(get_task(task), params.task(task), params.trainer, params.tracking,
                      TaskPaths(task, root), extra_callbacks=callbacks)
