"""The flow as a Prefect deployment on a process work pool, run by a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, write_project_params
from test_dashboards import free_port, post_json, wait_for

sys.path.insert(0, str(REPO / "pipelines"))


def test_the_deployment_runs_this_projects_flow_with_its_families(tiny_project: Path):
    from deploy import ENTRYPOINT
    from prefect import flow

    (tiny_project / "pipelines").symlink_to(REPO / "pipelines")
    source = flow.from_source(source=str(tiny_project), entrypoint=ENTRYPOINT)
    deployment = source.to_deployment(name="visionflow", work_pool_name="visionflow",
                                      parameters={"params_file": "params.yaml", "tasks": ["segmentation"]})
    assert deployment.flow_name == "visionflow" and deployment.entrypoint == ENTRYPOINT
    assert deployment.parameters == {"params_file": "params.yaml", "tasks": ["segmentation"]}


@pytest.mark.slow
def test_a_worker_runs_a_deployment_of_two_families(tiny_project: Path, project_env: dict):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["tasks"] = ["segmentation", "stereo"]
    write_project_params(tiny_project, params)
    (tiny_project / "pipelines").symlink_to(REPO / "pipelines")
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        subprocess.run(command, cwd=tiny_project, env=project_env, check=True, capture_output=True)
    prefect = f"http://127.0.0.1:{free_port()}"
    env = {**project_env, "PREFECT_API_URL": f"{prefect}/api"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", prefect.rsplit(":", 1)[1]], cwd=tiny_project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_for(f"{prefect}/api/health")
        subprocess.run([str(BIN / "prefect"), "concurrency-limit", "create", "gpu", "1"], cwd=tiny_project,
                       env=env, check=True, capture_output=True, timeout=60)  # one GPU stage at a time
        subprocess.run([sys.executable, str(REPO / "pipelines" / "deploy.py"), "--project", str(tiny_project),
                        "--limit", "1"], cwd=tiny_project, env=env, check=True, capture_output=True, timeout=120)
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "visionflow"],
                                  cwd=tiny_project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "visionflow/visionflow", "--watch",
                              "--watch-timeout", "900"], cwd=tiny_project, env=env, capture_output=True,
                             text=True, timeout=960)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        flow_runs = post_json(f"{prefect}/api/flow_runs/filter", {})
        assert len(flow_runs) == 1 and flow_runs[0]["state_type"] == "COMPLETED"
        assert flow_runs[0]["deployment_id"] is not None
        assert flow_runs[0]["name"].startswith("visionflow: 2 families @ ")
        assert {"family:segmentation", "family:stereo"} <= set(flow_runs[0]["tags"])
        task_runs = post_json(f"{prefect}/api/task_runs/filter",
                              {"flow_runs": {"id": {"any_": [flow_runs[0]["id"]]}}})
        states = {r["name"]: r["state"]["name"] for r in task_runs}
        assert states["train-segmentation"] == states["train-stereo"] == "Completed"
        gpu_stages = sorted((r["start_time"], r["end_time"]) for r in task_runs if "gpu" in r["tags"])
        assert len(gpu_stages) == 4  # train and evaluate of both families, one at a time:
        assert all(end <= next_start for (_, end), (next_start, _) in zip(gpu_stages, gpu_stages[1:]))
        status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tiny_project, env=env,
                                capture_output=True, text=True)
        assert "Data and pipelines are up to date" in status.stdout, status.stdout
        assert json.loads((tiny_project / "metrics" / "stereo.json").read_text())["epe"] > 0
    finally:
        for process in (worker, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
