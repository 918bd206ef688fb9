"""register: log the model to MLflow, register a version, move the alias only on improvement.

The version points at the run that trained the model and carries the test
metrics (on its logged model), a description and tags naming the family, the
data, the params and the commit, so a version in the registry tells where it
came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from visionflow.config import Params
from visionflow.dag import stage_name
from visionflow.lineage import provenance
from visionflow.paths import TaskPaths, read_stage_json
from visionflow.tasks import get_task
from visionflow.tracking import (TAG_PARAMS_HASH, StageRun, log_metrics, log_onnx, log_pytorch_model,
                                 metric_values, register_model, run_tag, stage_run)


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    metrics = read_stage_json(paths.metrics, f"evaluate --task {task}")
    train_summary = read_stage_json(paths.train_summary, f"train --task {task}")
    stage = StageRun(task, "register", {f"{task}.register": section.registry})
    with stage_run(stage, params.tracking, root, parent_run_id=train_summary["mlflow_run_id"]):
        exported = family.export(family.load_module(paths.best_checkpoint),
                                 paths.data_root(section.data.source))
        lineage = model_provenance(params, task, root, train_summary)
        model = log_pytorch_model(exported, name=task, params=lineage, tags={"family": task})
        log_metrics(metrics, prefix="test/", model_id=model.model_id)
        log_onnx(paths.onnx_dir, metrics.get("onnx", {"error": "no ONNX parity in the metrics"}))
        primary = float(metrics[family.primary_metric])
        description = (f"{task} model trained by run {train_summary['mlflow_run_id']} on "
                       f"{lineage['data']}, params {lineage['params_hash']}, commit {lineage['commit'][:12]}; "
                       f"test {family.primary_metric} {primary:.4f}. `visionflow lineage` prints its data hashes.")
        registration = register_model(
            model, section.registry.model_name, family.primary_metric, primary, section.registry.alias,
            family.higher_is_better, trained_by_run=train_summary["mlflow_run_id"], description=description,
            tags={**lineage, **metric_values(metrics, prefix="test/")},
            model_description=f"visionflow {task} models; the alias {section.registry.alias!r} names the "
                              f"best by test {family.primary_metric}.")
    result = {**registration.as_dict(), "provenance": lineage}
    paths.registered.write_text(json.dumps(result, indent=2) + "\n")
    return result


def model_provenance(params: Params, task: str, root: Path, train_summary: dict) -> dict[str, str]:
    """Family, data folder, and :func:`visionflow.lineage.provenance` (commit, dirty flag, params
    hash, backbone, the data md5s ``dvc.lock`` holds for the training stage) of a trained model."""
    data_root = TaskPaths(task, root).data_root(params.task(task).data.source)
    run_id = train_summary["mlflow_run_id"]
    return {"family": task, "data": str(data_root.relative_to(root)),
            **provenance(root, stage_name("train", task), run_tag(run_id, TAG_PARAMS_HASH) or "unknown",
                         train_summary.get("pretrained_backbone"), run_id)}
