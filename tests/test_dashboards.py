"""The dashboards `make ui` starts show what the pipeline did (slow: starts two servers)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, REPO
from test_flow import RUN_AND_REPORT

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 90.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def post_json(url: str, body: dict) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_prefect_and_mlflow_uis_show_the_runs(tiny_project: Path, project_env: dict):
    script = RUN_AND_REPORT.format(pipelines=str(REPO / "pipelines"),
                                   params=str(tiny_project / "params.yaml"))
    subprocess.run([sys.executable, "-c", script], cwd=tiny_project, env=project_env, check=True,
                   capture_output=True, timeout=600)

    prefect_port, mlflow_port = free_port(), free_port()
    servers = [
        subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                          "--port", str(prefect_port)], cwd=tiny_project, env=project_env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(mlflow_port),
                          "--backend-store-uri", f"sqlite:///{tiny_project / 'mlflow.db'}"],
                         cwd=tiny_project, env={**project_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        prefect = f"http://127.0.0.1:{prefect_port}"
        wait_for(f"{prefect}/api/health")
        flow_runs = post_json(f"{prefect}/api/flow_runs/filter", {})
        assert [run["state_type"] for run in flow_runs] == ["COMPLETED"]
        task_runs = post_json(f"{prefect}/api/task_runs/filter", {})
        assert {run["name"]: run["state_type"] for run in task_runs}["train@segmentation"] == "COMPLETED"
        assert b"<html" in wait_for(f"{prefect}/").lower()

        mlflow = f"http://127.0.0.1:{mlflow_port}"
        wait_for(f"{mlflow}/health")
        experiment = json.loads(wait_for(
            f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=visionflow-segmentation"))
        runs = post_json(f"{mlflow}/api/2.0/mlflow/runs/search",
                         {"experiment_ids": [experiment["experiment"]["experiment_id"]]})["runs"]
        train = [r for r in runs if {"key": "visionflow.stage", "value": "train"} in r["data"]["tags"]]
        assert train and any(m["key"] == "val_mIoU" for m in train[0]["data"]["metrics"])
        assert any(p["key"] == "segmentation.train.lr" for p in train[0]["data"]["params"])
        alias = json.loads(wait_for(
            f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=visionflow-segmentation&alias=champion"))
        assert alias["model_version"]["version"] == "1"
        assert b"<html" in wait_for(f"{mlflow}/").lower()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
