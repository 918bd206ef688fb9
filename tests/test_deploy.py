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


def test_the_gpu_stage_deployment_runs_the_one_stage_flow(tiny_project: Path):
    from deploy import STAGE_ENTRYPOINT
    from prefect import flow

    (tiny_project / "pipelines").symlink_to(REPO / "pipelines")
    source = flow.from_source(source=str(tiny_project), entrypoint=STAGE_ENTRYPOINT)
    deployment = source.to_deployment(name="gpu", work_pool_name="visionflow-gpu")
    assert deployment.flow_name == "visionflow-stage"
    assert set(source.parameters.required) == {"name", "cmd"}


@pytest.mark.slow
def test_workers_run_a_deployment_of_two_families_with_gpu_stages_on_the_gpu_pool(tiny_project: Path,
                                                                                  project_env: dict):
    """A pipeline deployment on pool ``visionflow`` and the stage deployment on ``visionflow-gpu``
    (one stage at a time), each with its own real worker: the train and evaluate stages run as
    child flow runs on the GPU pool, the rest in the pipeline's flow run."""
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
    workers = []
    try:
        wait_for(f"{prefect}/api/health")
        early = subprocess.run([sys.executable, str(REPO / "pipelines" / "flow.py"), "--gpu-deployment",
                                "visionflow-stage/gpu"], cwd=tiny_project, env=env, capture_output=True,
                               text=True, timeout=120)  # not deployed yet: refused before any stage
        assert early.returncode == 2 and "'visionflow-stage/gpu': not on http://127.0.0.1:" in early.stderr
        assert not (tiny_project / "data").exists()
        subprocess.run([sys.executable, str(REPO / "pipelines" / "deploy.py"), "--project", str(tiny_project),
                        "--limit", "1", "--gpu-pool", "visionflow-gpu", "--gpu-limit", "1"],
                       cwd=tiny_project, env=env, check=True, capture_output=True, timeout=120)
        workers = [subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool],
                                    cwd=tiny_project, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for pool in ("visionflow", "visionflow-gpu")]
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "visionflow/visionflow", "--watch",
                              "--watch-timeout", "900"], cwd=tiny_project, env=env, capture_output=True,
                             text=True, timeout=960)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        flow_runs = post_json(f"{prefect}/api/flow_runs/filter", {})
        pipeline = [r for r in flow_runs if r["name"].startswith("visionflow: ")]
        assert len(pipeline) == 1 and pipeline[0]["state_type"] == "COMPLETED"
        assert pipeline[0]["name"].startswith("visionflow: 2 families @ ")
        assert pipeline[0]["work_pool_name"] == "visionflow"
        assert {"family:segmentation", "family:stereo"} <= set(pipeline[0]["tags"])
        task_runs = post_json(f"{prefect}/api/task_runs/filter",
                              {"flow_runs": {"id": {"any_": [pipeline[0]["id"]]}}})
        states = {r["name"]: r["state"]["name"] for r in task_runs}
        assert states["synthesize-segmentation"] == states["register-stereo"] == "Completed"
        assert all("gpu" in r["tags"] for r in task_runs if r["name"].startswith(("train-", "evaluate-")))

        gpu_runs = [r for r in flow_runs if r["id"] != pipeline[0]["id"]]
        assert sorted(r["name"] for r in gpu_runs) == ["evaluate-segmentation", "evaluate-stereo",
                                                      "train-segmentation", "train-stereo"]
        assert all(r["work_pool_name"] == "visionflow-gpu" and r["state_type"] == "COMPLETED"
                   for r in gpu_runs)
        # Each is a child of the pipeline's flow run (Prefect links it through a task run there).
        parents = post_json(f"{prefect}/api/task_runs/filter",
                            {"task_runs": {"id": {"any_": [r["parent_task_run_id"] for r in gpu_runs]}}})
        assert {t["flow_run_id"] for t in parents} == {pipeline[0]["id"]}
        spans = sorted((r["start_time"], r["end_time"]) for r in gpu_runs)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # limit 1

        status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tiny_project, env=env,
                                capture_output=True, text=True)
        assert "Data and pipelines are up to date" in status.stdout, status.stdout
        assert json.loads((tiny_project / "metrics" / "stereo.json").read_text())["epe"] > 0
    finally:
        for process in (*workers, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
