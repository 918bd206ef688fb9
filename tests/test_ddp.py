"""Two-process DDP on the CPU through the real CLI: one MLflow run, outputs written once (slow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN

pytestmark = pytest.mark.slow


def test_ddp_training_on_two_cpu_processes(tiny_project: Path, project_env: dict):
    params_file = tiny_project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["trainer"].update(accelerator="cpu", devices=2, strategy="ddp")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("synthesize", "train"):
        result = subprocess.run([str(BIN / "visionflow"), stage, "--task", "segmentation"],
                                cwd=tiny_project, env=project_env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tiny_project / "models/segmentation/train.json").read_text())
    assert summary["epochs"] == 1 and (tiny_project / "models/segmentation/best.ckpt").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("visionflow-segmentation")
    train_runs = client.search_runs([experiment.experiment_id], "tags.`visionflow.stage` = 'train'")
    assert [run.info.run_id for run in train_runs] == [summary["mlflow_run_id"]]
