"""A shared MLflow tracking server (`make mlflow-server`) receives the runs, models and registry.

The real `mlflow server` on a free 127.0.0.1 port, with a SQLite backend and artifacts
proxied by the server (``--serve-artifacts``) into a folder, both in tmp: the fast test
logs a run and registers a tiny model through tracking.py; the slow one runs the
segmentation family's stages through the CLI with ``MLFLOW_TRACKING_URI`` pointing at
the server and reads the champion alias back over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN

MODEL = "visionflow-segmentation"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def mlflow_server(tmp_path: Path, project_env: dict[str, str]):
    """``(url, artifacts folder)`` of a running `mlflow server`, flags as in `make mlflow-server`."""
    store = tmp_path / "mlflow-server"
    store.mkdir()
    artifacts = store / "artifacts"
    url = f"http://127.0.0.1:{free_port()}"
    # One worker: the default four cost seconds of start-up and memory that one client does not need.
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(artifacts)],
        cwd=store, env={**project_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=(store / "server.log").open("w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((store / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield url, artifacts
    finally:
        os.killpg(server.pid, 15)  # the server and the uvicorn worker it started
        server.wait(timeout=30)


def champion(url: str) -> dict:
    query = urllib.parse.urlencode({"name": MODEL, "alias": "champion"})
    return get_json(f"{url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]


def test_a_run_and_a_registered_model_go_to_the_server(mlflow_server, tmp_path: Path, monkeypatch):
    from visionflow.config import TrackingParams
    from visionflow.tracking import (LoggedModel, StageRun, log_artifacts, log_metrics, register_model,
                                     stage_run)

    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    weights = tmp_path / "weights.txt"
    weights.write_text("a tiny model\n")
    with stage_run(StageRun("segmentation", "train", {}), TrackingParams(), tmp_path) as run:
        log_metrics({"test": {"mIoU": 0.5}})
        log_artifacts([weights], artifact_path="model")
    run_id = run.info.run_id
    registration = register_model(LoggedModel(f"runs:/{run_id}/model", None, run_id), MODEL, "mIoU", 0.5,
                                  "champion")

    assert registration.alias_moved and registration.version == "1"
    version = champion(url)
    assert version["version"] == "1" and version["run_id"] == run_id
    assert [name for name in files_below(artifacts) if name.endswith("weights.txt")], files_below(artifacts)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


@pytest.mark.slow
def test_every_segmentation_stage_reports_to_the_server(mlflow_server, tiny_project: Path, project_env: dict):
    url, artifacts = mlflow_server
    env = {**project_env, "MLFLOW_TRACKING_URI": url}
    for stage in ("synthesize", "augment", "train", "evaluate", "register"):
        result = subprocess.run([str(BIN / "visionflow"), stage, "--task", "segmentation"], cwd=tiny_project,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{stage}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"

    version = champion(url)
    train_run = get_json(f"{url}/api/2.0/mlflow/runs/get?run_id={version['run_id']}")["run"]
    assert {tag["key"]: tag["value"] for tag in train_run["data"]["tags"]}["visionflow.stage"] == "train"

    # Every stage's run is on the server, in the family's experiment.
    experiment = get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={MODEL}")["experiment"]
    search = {"experiment_ids": [experiment["experiment_id"]]}
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=json.dumps(search).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.loads(response.read())["runs"]
    by_stage = {tags["visionflow.stage"]: (run, tags) for run in runs
                for tags in [{tag["key"]: tag["value"] for tag in run["data"]["tags"]}]}
    assert len(runs) == 5 and sorted(by_stage) == ["augment", "evaluate", "register", "synthesize", "train"]
    assert by_stage["train"][0]["info"]["run_id"] == version["run_id"]
    assert by_stage["evaluate"][1]["mlflow.parentRunId"] == version["run_id"]
    # Artifacts are addressed through the server's proxy, not as a path on this machine.
    assert all(run["info"]["artifact_uri"].startswith("mlflow-artifacts:/") for run in runs)

    # The model's files went through the server into its artifact folder, not into the project.
    stored = files_below(artifacts)
    assert any(name.endswith("MLmodel") for name in stored), stored
    assert not (tiny_project / "mlflow.db").exists() and not (tiny_project / "mlartifacts").exists()
