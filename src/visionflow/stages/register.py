"""register: log the model to MLflow, register a version, move the alias only on improvement."""

from __future__ import annotations

import json
from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths, read_stage_json
from visionflow.tasks import get_task
from visionflow.tracking import StageRun, log_pytorch_model, register_model, stage_run


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    metrics = read_stage_json(paths.metrics, f"evaluate --task {task}")
    train_summary = read_stage_json(paths.train_summary, f"train --task {task}")
    exported = family.export(family.load_module(paths.best_checkpoint),
                             paths.data_root(section.data.source))
    stage = StageRun(task, "register", {f"{task}.register": section.registry})
    with stage_run(stage, params.tracking, root, parent_run_id=train_summary["mlflow_run_id"]):
        model_uri = log_pytorch_model(exported, name=task)
        registration = register_model(model_uri, section.registry.model_name, family.primary_metric,
                                      float(metrics[family.primary_metric]), section.registry.alias,
                                      family.higher_is_better)
    result = registration.as_dict()
    paths.registered.write_text(json.dumps(result, indent=2) + "\n")
    return result
