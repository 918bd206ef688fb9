"""evaluate: score the best checkpoint on the held-out split; metrics JSON, plots, reports.

It also exports the network to ONNX (``models/<task>/onnx/``) and scores that copy with the same
code (:func:`visionflow.export.onnx_parity`): the metrics' ``onnx`` block says how far apart
they are. Register logs the file; it is written here so each stage writes only its own outs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from visionflow.config import Params
from visionflow.export import onnx_parity
from visionflow.paths import TaskPaths, read_stage_json
from visionflow.runtime import device_type
from visionflow.tasks import get_task
from visionflow.tasks.base import EvalOutputs
from visionflow.tracking import (StageRun, log_artifacts, log_dataset, log_metrics, metric_values, run_exists,
                                 set_headline_view, stage_run)


def run(params: Params, task: str, root: Path) -> dict:
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    train_summary = read_stage_json(paths.train_summary, f"train --task {task}")
    stage = StageRun(task, "evaluate", {f"{task}.evaluate": section.evaluate})
    data_root = paths.data_root(section.data.source)
    with stage_run(stage, params.tracking, root, parent_run_id=train_summary["mlflow_run_id"]) as active:
        log_dataset(data_root, paths.dataset_manifest(section.data.source), context="evaluation")
        module = family.load_module(paths.best_checkpoint)
        out = EvalOutputs(plots_dir=paths.eval_plots, reports_dir=paths.eval_reports, project_root=root)
        device = torch.device(device_type(params.trainer.accelerator))
        metrics = family.evaluate(section, module, data_root, out, device)
        if family.primary_metric not in metrics:
            raise KeyError(f"{task} evaluate() returned no {family.primary_metric!r}")
        metrics["onnx"] = export_and_check(params, task, root, metrics, device)
        paths.metrics.parent.mkdir(parents=True, exist_ok=True)
        paths.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
        log_metrics(metrics, prefix="test/")
        # The headline numbers belong on the run a person opens: the one that trained the model,
        # where this store holds it (stage_run warned if not).
        if run_exists(train_summary["mlflow_run_id"]):
            log_metrics(metrics, prefix="test/", run_id=train_summary["mlflow_run_id"])
        # Columns: the primary metric, then the other top-level numbers (not per-class breakdowns).
        headline = [family.primary_metric, *[k for k, v in metrics.items() if k != family.primary_metric
                                             and isinstance(v, (int, float)) and not isinstance(v, bool)]]
        set_headline_view(active.info.experiment_id, list(metric_values({k: metrics[k] for k in headline[:4]},
                                                                        "test/")))
        log_artifacts(sorted(out.reports_dir.glob("*.png")), "evaluation")
        log_artifacts([paths.metrics], "evaluation")
    return metrics


def export_and_check(params: Params, task: str, root: Path, metrics: dict, device: torch.device) -> dict:
    """The ``onnx`` block of the metrics; the ONNX file (or ``error.txt``) in ``paths.onnx_dir``."""
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    shutil.rmtree(paths.onnx_dir, ignore_errors=True)
    shutil.rmtree(paths.onnx_scratch, ignore_errors=True)
    scratch = EvalOutputs(plots_dir=paths.onnx_scratch / "plots", reports_dir=paths.onnx_scratch / "reports",
                          project_root=root)
    parity = onnx_parity(family, section, paths.best_checkpoint, paths.data_root(section.data.source),
                         paths.onnx_model, scratch, device, metrics, section.evaluate.onnx_tolerance)
    if "error" in parity:
        paths.onnx_model.unlink(missing_ok=True)
        paths.onnx_dir.mkdir(parents=True, exist_ok=True)
        paths.onnx_error.write_text(parity["error"] + "\n")
    return parity
