"""augment: preview the augmentation pipeline and check labels stay aligned with images."""

from __future__ import annotations

import json
from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tracking import StageRun, log_artifacts, log_metrics, stage_run


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    check = family.augment_preview(section, paths.data_root(section.data.source), paths.augment_preview)
    paths.augment_check.write_text(json.dumps(check, indent=2) + "\n")
    augment = section.augment  # a list of transforms, or a section holding them (box tasks)
    logged = {"transforms": [t.model_dump() for t in augment]} if isinstance(augment, list) else augment
    stage = StageRun(task, "augment", {f"{task}.augment": logged})
    with stage_run(stage, params.tracking, root):
        log_metrics(check)
        log_artifacts([paths.augment_preview])
    return check
