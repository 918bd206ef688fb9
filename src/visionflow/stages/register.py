"""register: log the model to MLflow, register a version, move the alias only on improvement.

The version points at the run that trained the model and carries the test
metrics (on its logged model), a description and tags naming the family, the
data, the params and the commit, so a version in the registry tells where it
came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths, read_stage_json
from visionflow.tasks import get_task
from visionflow.tracking import (TAG_PARAMS_HASH, StageRun, git_commit, log_metrics, log_pytorch_model,
                                 metric_values, register_model, run_tag, stage_run)


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    metrics = read_stage_json(paths.metrics, f"evaluate --task {task}")
    train_summary = read_stage_json(paths.train_summary, f"train --task {task}")
    stage = StageRun(task, "register", {f"{task}.register": section.registry})
    with stage_run(stage, params.tracking, root, parent_run_id=train_summary["mlflow_run_id"]):
        exported = family.export(family.load_module(paths.best_checkpoint),
                                 paths.data_root(section.data.source))
        provenance = model_provenance(params, task, root, train_summary)
        model = log_pytorch_model(exported, name=task, params=provenance, tags={"family": task})
        log_metrics(metrics, prefix="test/", model_id=model.model_id)
        primary = float(metrics[family.primary_metric])
        description = (f"{task} model trained by run {train_summary['mlflow_run_id']} on "
                       f"{provenance['data']} (manifest sha256 {provenance['data_sha256'][:12]}), params "
                       f"{provenance['params_hash']}, commit {provenance['commit'][:12]}; "
                       f"test {family.primary_metric} {primary:.4f}.")
        registration = register_model(
            model, section.registry.model_name, family.primary_metric, primary, section.registry.alias,
            family.higher_is_better, trained_by_run=train_summary["mlflow_run_id"], description=description,
            tags={**provenance, **metric_values(metrics, prefix="test/")},
            model_description=f"visionflow {task} models; the alias {section.registry.alias!r} names the "
                              f"best by test {family.primary_metric}.")
    result = registration.as_dict()
    paths.registered.write_text(json.dumps(result, indent=2) + "\n")
    return result


def model_provenance(params: Params, task: str, root: Path, train_summary: dict) -> dict[str, str]:
    """Family, data (folder and its manifest's digest), params hash and commit of a trained model."""
    paths = TaskPaths(task, root)
    section = params.task(task)
    data_root = paths.data_root(section.data.source)
    manifest = paths.dataset_manifest(section.data.source)
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else "unknown"
    return {"family": task, "data": str(data_root.relative_to(root)), "data_sha256": digest,
            "params_hash": run_tag(train_summary["mlflow_run_id"], TAG_PARAMS_HASH) or "unknown",
            "commit": git_commit(root), "train_run_id": train_summary["mlflow_run_id"]}
