"""The Prefect flow runs the stages, shows them as task runs, and leaves dvc.lock up to date."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import BIN, REPO, tiny_params_dict, write_project_params
from visionflow.dag import stage_name

# Runs the flow in Prefect's ephemeral mode, then asks the same (still running)
# server what it recorded, as the Prefect UI would.
RUN_AND_REPORT = """
import asyncio, json, sys
sys.path.insert(0, {pipelines!r})
from flow import visionflow_pipeline
from prefect.client.orchestration import get_client

visionflow_pipeline(params_file={params!r})

async def report():
    async with get_client() as client:
        flow_runs = await client.read_flow_runs()
        task_runs = await client.read_task_runs()
        return {{"flow_runs": [[r.name, r.state_type.value] for r in flow_runs],
                "task_runs": {{r.name: r.state_type.value for r in task_runs}}}}

print("REPORT" + json.dumps(asyncio.run(report())))
"""


def test_flow_runs_stages_as_task_runs_and_leaves_dvc_clean(tiny_project: Path, project_env: dict):
    script = RUN_AND_REPORT.format(pipelines=str(REPO / "pipelines"),
                                   params=str(tiny_project / "params.yaml"))
    result = subprocess.run([sys.executable, "-c", script], cwd=tiny_project, env=project_env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert [state for _, state in report["flow_runs"]] == ["COMPLETED"]
    tasks = yaml.safe_load((tiny_project / "params.yaml").read_text())["tasks"]
    expected = {"acquire", "report"} | {stage_name(stage, task) for task in tasks for stage in
                                        ("synthesize", "augment", "train", "evaluate", "register")}
    assert report["task_runs"] == {name: "COMPLETED" for name in expected}
    assert json.loads((tiny_project / "metrics/segmentation.json").read_text())["mIoU"] >= 0

    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tiny_project, env=project_env,
                            capture_output=True, text=True)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tiny_project, env=project_env,
                           capture_output=True, text=True)
    assert "Running stage" not in repro.stdout, repro.stdout


PLAN = """
import json, sys
sys.path.insert(0, {pipelines!r})
from pathlib import Path
from flow import pipeline_plan
print("PLAN" + json.dumps([[s.name, list(s.upstream)] for s in pipeline_plan(Path("."), {families!r})]))
"""


def flow_plan(project: Path, env: dict, families: list[str] | None) -> list[tuple[str, list[str]]]:
    script = PLAN.format(pipelines=str(REPO / "pipelines"), families=families)
    result = subprocess.run([sys.executable, "-c", script], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return [tuple(step) for step in json.loads(result.stdout.split("PLAN", 1)[1])]


def test_the_flow_takes_stages_and_order_from_dvc(tiny_project: Path, project_env: dict):
    """Each stage waits for the stages DVC says it depends on, cross-family ones included;
    ``--tasks`` keeps a family's stages and what they need, and the report only with every family."""
    write_project_params(tiny_project, tiny_params_dict(
        tasks=["segmentation", "selfsup", "detection", "pose"], pose={"evaluate": {"boxes": "detection"}},
        pretrained={"segmentation": "models/selfsup/best.ckpt"}))
    plan = flow_plan(tiny_project, project_env, None)
    names = [name for name, _ in plan]
    upstream = dict(plan)
    assert len(names) == len(set(names)) == 1 + 4 * 5 + 1 + 1  # acquire, 4 families, pretrained, report
    assert names[-1] == "report"  # after each family's register
    assert {f"register-{task}" for task in ("segmentation", "selfsup", "detection", "pose")} <= set(upstream["report"])
    assert all(names.index(before) < names.index(name) for name, deps in plan for before in deps)
    assert upstream["pretrained-segmentation"] == ["train-selfsup"]
    assert "pretrained-segmentation" in upstream["train-segmentation"]
    assert "train-detection" in upstream["evaluate-pose"]

    only_pose = [name for name, _ in flow_plan(tiny_project, project_env, ["pose"])]
    assert set(only_pose) == {"acquire", "synthesize-pose", "augment-pose", "train-pose", "evaluate-pose",
                              "register-pose", "synthesize-detection", "train-detection"}
    # Every family named: the report, which reads them all, comes along.
    every_family = flow_plan(tiny_project, project_env, ["segmentation", "selfsup", "detection", "pose"])
    assert every_family == plan


HOLD_DVC_LOCK = """
import time
from dvc.repo import Repo
Repo(".").lock.lock()
print("locked", flush=True)
time.sleep(600)  # until killed: the lock goes with the process
"""

STAGE_CHANGED = """
import sys, time
sys.path.insert(0, {pipelines!r})
from pathlib import Path
from flow import stage_changed
print("ready", flush=True)
started = time.perf_counter()
changed = stage_changed(Path("."), {stage!r})
print(round(time.perf_counter() - started, 1), changed, flush=True)
"""


def test_the_flow_waits_for_dvcs_lock_while_another_process_holds_it(tiny_project: Path, project_env: dict):
    """A GPU worker's stage (another process) may hold DVC's repo lock; plain DVC gives up after
    3 s, the flow's DVC calls wait until it is free."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DVC_LOCK], cwd=tiny_project, env=project_env,
                              stdout=subprocess.PIPE, text=True)
    script = STAGE_CHANGED.format(pipelines=str(REPO / "pipelines"), stage="synthesize-segmentation")
    checker = subprocess.Popen([sys.executable, "-c", script], cwd=tiny_project, env=project_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert checker.stdout.readline().strip() == "ready"
        time.sleep(4.5)  # past DVC's own 3 s of retries
        assert checker.poll() is None  # still waiting, not failed
        holder.kill()
        out, err = checker.communicate(timeout=60)
        assert checker.returncode == 0, err[-3000:]
        waited, changed = out.split()
        assert float(waited) >= 4.5 and changed == "True"  # never run: out of date
    finally:
        for process in (holder, checker):
            process.kill()
            process.wait()


def test_a_gpu_deployment_without_a_shared_server_stops_before_any_stage(tiny_project: Path, project_env: dict):
    """Without PREFECT_API_URL the flow runs on a temporary server no worker reaches: GPU stages
    handed to a deployment would wait for ever, so the flow refuses at once, in one line."""
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "flow.py"), "--params",
                             str(tiny_project / "params.yaml"), "--gpu-deployment", "visionflow-stage/gpu"],
                            cwd=tiny_project, env=project_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "flow.py: --gpu-deployment: gpu deployment 'visionflow-stage/gpu': needs a Prefect server its "
        "workers reach (`make ui`, or PREFECT_API_URL); this flow would run on a temporary one"]
    assert not (tiny_project / "data").exists()
