"""The dashboards tell what happened (slow: starts both UIs' servers and runs the flow twice).

Prefect: the second flow run's stages are Skipped (up to date), the flow run is named and
tagged after what it ran and carries a metrics artifact. MLflow: the training run carries
the test metrics, system metrics and its dataset; the champion version points at it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, write_project_params

pytestmark = pytest.mark.slow

FAMILIES = ["segmentation", "stereo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 120.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def get_json(url: str) -> dict:
    return json.loads(wait_for(url, timeout=10))


def post_json(url: str, body: dict) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def seconds(run: dict) -> float:
    start, end = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


@pytest.fixture
def two_family_project(tiny_project: Path, project_env: dict) -> Path:
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["tasks"] = FAMILIES
    params["segmentation"]["train"]["epochs"] = 3  # training a little longer than the 0.2 s system-metrics interval
    write_project_params(tiny_project, params)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        subprocess.run(command, cwd=tiny_project, env=project_env, check=True, capture_output=True)
    return tiny_project


@pytest.fixture
def servers(two_family_project: Path, project_env: dict):
    """Prefect and MLflow servers on free 127.0.0.1 ports, over the project's stores."""
    prefect, mlflow = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                          "--port", prefect.rsplit(":", 1)[1]], cwd=two_family_project, env=project_env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", mlflow.rsplit(":", 1)[1],
                          "--backend-store-uri", f"sqlite:///{two_family_project / 'mlflow.db'}"],
                         cwd=two_family_project, env={**project_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for(f"{prefect}/api/health")
        wait_for(f"{mlflow}/health")
        yield prefect, mlflow
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def run_flow(project: Path, env: dict, prefect: str, mlflow: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "flow.py"), "--params", str(project / "params.yaml")],
        cwd=project, capture_output=True, text=True, timeout=900,
        env={**env, "PREFECT_API_URL": f"{prefect}/api", "VISIONFLOW_MLFLOW_UI": mlflow,
             "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_dashboards_tell_what_ran_and_what_models_are_worth(two_family_project: Path, project_env: dict,
                                                            servers: tuple[str, str]):
    prefect, mlflow = servers
    first = run_flow(two_family_project, project_env, prefect, mlflow)
    second = run_flow(two_family_project, project_env, prefect, mlflow)
    assert f"Prefect: {prefect}/runs/flow-run/" in first

    # Prefect: two flow runs, named and tagged after what they ran.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=two_family_project,
                            capture_output=True, text=True, check=True).stdout.strip()
    flow_runs = post_json(f"{prefect}/api/flow_runs/filter", {"sort": "START_TIME_ASC"})
    assert [run["name"] for run in flow_runs] == [f"visionflow: 2 families @ {commit}"] * 2
    assert {"family:segmentation", "family:stereo", f"commit:{commit}"} <= set(flow_runs[0]["tags"])
    assert any(tag.startswith("params:") for tag in flow_runs[0]["tags"])
    assert all(run["state_type"] == "COMPLETED" for run in flow_runs)

    def task_runs(flow_run: dict) -> dict[str, dict]:
        runs = post_json(f"{prefect}/api/task_runs/filter",
                         {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
        return {run["name"]: run for run in runs}

    first_runs, second_runs = task_runs(flow_runs[0]), task_runs(flow_runs[1])
    stages = {"acquire"} | {f"{stage}-{family}" for family in FAMILIES
                            for stage in ("synthesize", "augment", "train", "evaluate", "register")}
    assert set(first_runs) == set(second_runs) == stages
    assert first_runs["train-segmentation"]["state"]["name"] == "Completed"
    assert seconds(first_runs["train-segmentation"]) > 1.0
    ran_again = sorted(name for name, run in second_runs.items() if run["state"]["name"] != "Skipped")
    assert not ran_again, second
    assert all("up-to-date" in run["tags"] for run in second_runs.values())
    assert "up to date" in second

    artifacts = post_json(f"{prefect}/api/artifacts/filter",
                          {"artifacts": {"flow_run_id": {"any_": [flow_runs[1]["id"]]}}})
    assert [artifact["type"] for artifact in artifacts] == ["markdown"]
    table = artifacts[0]["data"]
    assert "| segmentation | mIoU " in table and "| stereo | epe " in table and f"{mlflow}/#/experiments/" in table

    # MLflow: the training run is the one that tells what the model is worth.
    api = f"{mlflow}/api/2.0/mlflow"
    experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=visionflow-segmentation")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    active = post_json(f"{api}/experiments/search", {"max_results": 100})["experiments"]
    assert "Default" not in [e["name"] for e in active]
    runs = post_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    train = [r for r in runs if {"key": "visionflow.stage", "value": "train"} in r["data"]["tags"]]
    assert len(train) == 1
    train = train[0]
    metrics = {m["key"] for m in train["data"]["metrics"]}
    assert {"test/mIoU", "val/mIoU", "train/loss"} <= metrics
    assert any(name.startswith("system/cpu_utilization") for name in metrics)
    assert train["inputs"]["dataset_inputs"][0]["dataset"]["name"] == "segmentation"
    assert (train["info"]["end_time"] - train["info"]["start_time"]) / 1000 > 1.0
    # A stage's run spans its work: the file the work wrote last was written while the run was open.
    for stage, output in (("synthesize", "data/synthetic/segmentation.json"),
                          ("augment", "reports/segmentation/augment.json"), ("evaluate", "metrics/segmentation.json")):
        run = next(r for r in runs if {"key": "visionflow.stage", "value": stage} in r["data"]["tags"])
        written_ms = (two_family_project / output).stat().st_mtime * 1000
        assert run["info"]["start_time"] <= written_ms <= run["info"]["end_time"], stage

    champion = get_json(f"{api}/registered-models/alias?name=visionflow-segmentation&alias=champion")
    version = champion["model_version"]
    assert version["run_id"] == train["info"]["run_id"]
    assert "segmentation" in version["description"] and commit in version["description"]
    version_tags = {tag["key"]: tag["value"] for tag in version["tags"]}
    assert version_tags["family"] == "segmentation" and "test/mIoU" in version_tags
    assert b"<html" in wait_for(f"{mlflow}/").lower() and b"<html" in wait_for(f"{prefect}/").lower()
