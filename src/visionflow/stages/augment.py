"""augment: preview the augmentation pipeline and check labels stay aligned with images."""

from __future__ import annotations

import json
from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tracking import StageRun, log_artifacts, log_dataset, log_metrics, stage_run


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    augment = section.augment  # a list of transforms, or a section holding them (box tasks)
    logged = {"transforms": [t.model_dump() for t in augment]} if isinstance(augment, list) else augment
    data_root = paths.data_root(section.data.source)
    with stage_run(StageRun(task, "augment", {f"{task}.augment": logged}), params.tracking, root):
        log_dataset(data_root, paths.dataset_manifest(section.data.source), context="augment-preview")
        check = family.augment_preview(section, data_root, paths.augment_preview)
        paths.augment_check.write_text(json.dumps(check, indent=2) + "\n")
        log_metrics(check, prefix="data/")  # counts, not model quality: their own chart section
        log_artifacts([paths.augment_preview])
    return check
