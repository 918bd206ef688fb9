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

    paths = TaskPaths(task, root)
    backbone = None
    if task in params.pretrained:  # written by the pretrained-<task> stage
        backbone = paths.pretrained_backbone
        if not backbone.is_file():
            raise FileNotFoundError(f"{backbone}: not found; params.yaml's pretrained.{task} names "
                                    f"{params.pretrained[task]}: run `visionflow pretrained --task {task}`")
    return train_task(get_task(task), params.task(task), params.trainer, params.tracking,
                      paths, extra_callbacks=callbacks, pretrained_backbone=backbone)
