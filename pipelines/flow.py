"""The visionflow pipeline as a Prefect flow: the same stages as ``dvc repro``, shown in the Prefect UI.

    python pipelines/flow.py [--params params.yaml] [--tasks FAMILY ...]

The stages and their order are DVC's: the flow writes dvc.yaml for the params
(``visionflow dag``), reads DVC's stage graph (``dvc.repo.Repo.index.graph``) and
submits each stage as one Prefect task run named like the DVC stage
(``train-<family>``), waiting for the task runs of the stages it depends on, so
families run side by side and a cross-family input (a pretrained backbone, another
family's model) is ready before its reader starts. ``--tasks`` keeps the families'
stages and everything they depend on. One ``dvc status`` at the start finds the
stages that are out of date and everything downstream of them; the others finish at
once in a ``Skipped`` state (tag ``up-to-date``) without running anything. A stage
that may run checks ``dvc status`` again once its upstream stages are done, runs
dvc.yaml's command in its own process, so families do not share seeds or threads,
and is then recorded in dvc.lock with ``dvc commit``: a ``dvc repro`` right after the
flow has nothing to do. ``acquire`` is retried on failure (networks flake).

GPU stages on a GPU machine: with ``gpu_deployment`` (``--gpu-deployment``, set by
``pipelines/deploy.py --gpu-pool``), a ``train`` or ``evaluate`` stage that must run is
handed to that deployment of the one-stage flow ``visionflow-stage``; a worker of its
work pool (``make worker-gpu`` on the GPU machine) runs it, and the flow's task waits
for it. Prefect sends flow runs, not task runs, to work pools: hence a deployment for
the GPU stage group. The GPU worker must run in the same project folder (the same
disk, or a shared one), since the stage's inputs and outputs are files there.

The flow run is named after what it runs (``visionflow: 2 families @ 1a2b3c4``),
tagged with the families, commit and params hash, and leaves a table artifact of
each family's headline test metric with links to its MLflow runs.

Where it reports: a Prefect server already listening (``PREFECT_API_URL``, or
``make ui``'s on 127.0.0.1:4200) gets the runs live, and the flow prints the run's
link; otherwise Prefect starts a temporary server on the project's database
(``.cache/prefect``), which ``make ui`` shows afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import visionflow  # noqa: F401  (quiet, offline, in-project settings before Prefect is imported)

DEFAULT_PREFECT_SERVER = "http://127.0.0.1:4200"


def running_prefect_server(url: str = DEFAULT_PREFECT_SERVER) -> str | None:
    """``url``'s API address if a Prefect server answers there, else None."""
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return f"{url}/api" if response.status == 200 else None
    except OSError:
        return None


# Decided before Prefect is imported. VISIONFLOW_PREFECT_UI names the server to look for;
# empty, it looks for none (the tests keep off a developer's running `make ui`).
_server = os.environ.get("VISIONFLOW_PREFECT_UI", DEFAULT_PREFECT_SERVER)
if "PREFECT_API_URL" not in os.environ and _server:
    _found = running_prefect_server(_server.rstrip("/"))
    if _found:
        os.environ["PREFECT_API_URL"] = _found

from prefect import flow, get_run_logger, tags, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.runtime import flow_run as current_flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402

from visionflow.config import load_params  # noqa: E402
from visionflow.dag import stage_name  # noqa: E402
from visionflow.stages import TASK_STAGES  # noqa: E402

_DVC_LOCK = threading.Lock()  # DVC holds a repo-wide lock: one DVC call at a time
UP_TO_DATE_TAG = "up-to-date"
# Stages that use the GPU carry this tag: `prefect concurrency-limit create gpu 1` lets one
# of them run at a time while the other families' CPU stages go on. With a GPU deployment,
# they run as flow runs of STAGE_FLOW on the GPU work pool.
ACCELERATOR_TAG = "gpu"
ACCELERATOR_STAGES = ("train", "evaluate")
STAGE_FLOW = "visionflow-stage"
RETRIED_STAGES = ("acquire",)  # it downloads: networks flake
LAST_FLOW_RUN: dict[str, str] = {}  # the id of this process's latest flow run, for its link


@dataclass(frozen=True)
class PlannedStage:
    """One DVC stage as the flow runs it: its name, command and the stages it waits for."""

    name: str
    cmd: str
    upstream: tuple[str, ...]

    @property
    def kind(self) -> str:  # "train" of "train-<family>"
        return self.name.partition("-")[0]

    @property
    def family(self) -> str | None:
        return self.name.partition("-")[2] or None


def open_repo(root: Path):
    """The DVC repo at ``root``, waiting for its lock when another process holds it (a GPU
    worker's stage committing, a teammate's ``dvc status``): what ``dvc --wait-for-lock`` does."""
    from dvc.repo import Repo

    return Repo(str(root), _wait_for_lock=True)


def pipeline_plan(root: Path, families: list[str] | None = None) -> list[PlannedStage]:
    """The stages of ``root/dvc.yaml`` from DVC's graph, each after the stages it depends on.

    ``families``: only their stages, everything those depend on, and the report when it reads
    nothing else (every family is named) (None: every stage).
    Stages that depend on nothing go first, then those that depend only on them, and so on
    (dvc.yaml's order within a step), so Prefect starts the families' stages side by side.
    """
    import networkx as nx

    with _DVC_LOCK, open_repo(root) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = {stage.addressing: i for i, stage in enumerate(repo.index.stages)}
        # Only pipeline stages run; a .dvc file's data (`dvc add`) is there already.
        runnable = graph.subgraph([stage for stage in graph if getattr(stage, "cmd", None)])
        by_name = {stage.addressing: stage for stage in runnable}
        if families is not None:
            wanted = {name for name in by_name for family in families
                      if name in {stage_name(kind, family) for kind in ("pretrained", *TASK_STAGES)}}
            keep = set()
            for name in wanted:
                keep |= {by_name[name], *nx.descendants(runnable, by_name[name])}
            # A stage of no family (the report) comes along when every stage it reads is kept.
            keep |= {stage for name, stage in by_name.items() if "-" not in name
                     and (reads := set(runnable.successors(stage))) and reads <= keep}
            runnable = runnable.subgraph(keep)
        plan = []
        for generation in nx.topological_generations(runnable.reverse(copy=False)):
            for stage in sorted(generation, key=lambda s: order.get(s.addressing, len(order))):
                plan.append(PlannedStage(stage.addressing, stage.cmd if isinstance(stage.cmd, str)
                                         else " && ".join(stage.cmd),
                                         tuple(sorted(d.addressing for d in runnable.successors(stage)))))
    return plan


def stage_changed(root: Path, name: str) -> bool:
    with _DVC_LOCK, open_repo(root) as repo:
        return bool(repo.status(targets=[name]))


def stages_to_check(root: Path) -> set[str]:
    """Stages that are out of date now, and every stage downstream of one (it may change).

    The rest are up to date and stay so during this flow: nothing upstream of them runs.
    """
    import networkx as nx

    with _DVC_LOCK, open_repo(root) as repo:
        changed = set(repo.status())
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {stage.addressing: stage for stage in graph}
        downstream = {d.addressing for name in changed if name in by_name
                      for d in nx.ancestors(graph, by_name[name])}
    return changed | downstream


def dvc_commit(root: Path, name: str) -> None:
    with _DVC_LOCK, open_repo(root) as repo:
        repo.commit(name, force=True)


def stage_command(cmd: str, params_file: Path) -> list[str]:
    """dvc.yaml's command for a stage; a ``visionflow`` one runs with this interpreter and
    ``params_file`` (the console script may not be on a worker's PATH)."""
    words = shlex.split(cmd)
    if words and words[0] == "visionflow":
        return [sys.executable, "-m", "visionflow.cli", "--params", str(params_file), *words[1:]]
    return ["sh", "-c", cmd]


def _skipped(name: str) -> Completed:
    return Completed(name="Skipped", message=f"{name} is up to date (dvc status): nothing ran",
                     data={"stage": name, "ran": False})


def _run_stage(name: str, cmd: str, params_file: str, may_run: bool = True, deployment: str | None = None):
    """Run one DVC stage if it is out of date; a Completed state named ``Skipped`` if not.

    ``deployment``: run it as a flow run of that deployment of :func:`visionflow_stage` (a GPU
    work pool's worker takes it) and wait for it, instead of in this process.
    """
    logger = get_run_logger()
    params_path = Path(params_file).resolve()
    root = params_path.parent
    if not may_run or not stage_changed(root, name):
        logger.info("%s is up to date (dvc status): nothing to run", name)
        return _skipped(name)
    if deployment:
        return run_on_deployment(deployment, name, cmd, params_path.name)  # beside dvc.yaml
    return execute_stage(name, cmd, params_path)


def execute_stage(name: str, cmd: str, params_path: Path) -> dict:
    """Run dvc.yaml's command for ``name`` in its own process, then record it in dvc.lock."""
    logger = get_run_logger()
    root = params_path.parent
    started = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars make unreadable logs
    process = subprocess.Popen(stage_command(cmd, params_path), cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in process.stdout:
        logger.info(line.rstrip())
        tail = (tail + [line])[-40:]
    if process.wait() != 0:
        raise RuntimeError(f"{name} failed (exit code {process.returncode}):\n{''.join(tail)}")
    dvc_commit(root, name)
    seconds = round(time.perf_counter() - started, 1)
    logger.info("%s finished in %.1f s and is recorded in dvc.lock", name, seconds)
    return {"stage": name, "ran": True, "seconds": seconds}


def run_on_deployment(deployment: str, name: str, cmd: str, params_file: str) -> dict:
    """``name`` as a flow run of ``deployment`` (a child of this task run in the UI), once one of
    its pool's workers has run it; raises if that run did not complete."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    started = time.perf_counter()
    logger.info("%s: handed to deployment %s; waiting for its work pool's worker", name, deployment)
    child = run_deployment(deployment, parameters={"name": name, "cmd": cmd, "params_file": params_file},
                           flow_run_name=name, timeout=None, poll_interval=2)
    if child.state is None or not child.state.is_completed():
        state = child.state.name if child.state else "no state"
        raise RuntimeError(f"{name} did not complete on deployment {deployment} "
                           f"(flow run {child.id}: {state})")
    seconds = round(time.perf_counter() - started, 1)
    logger.info("%s finished on deployment %s in %.1f s (flow run %s)", name, deployment, seconds, child.id)
    return {"stage": name, "ran": True, "seconds": seconds, "flow_run": str(child.id)}


# Results are small dicts and inputs plain strings: no caching or result persistence needed.
run_stage = task(_run_stage, cache_policy=NO_CACHE, persist_result=False)
run_retried_stage = task(_run_stage, cache_policy=NO_CACHE, persist_result=False,
                         retries=2, retry_delay_seconds=5)


def check_gpu_deployment(name: str) -> None:
    """Raise ValueError, in one line, when GPU stages could not reach ``name``'s workers: no
    Prefect server they share (a temporary one is this process's alone), or no such deployment.
    Checked before any stage runs, not when the first GPU stage would wait for ever."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise ValueError(f"gpu deployment {name!r}: needs a Prefect server its workers reach "
                         f"(`make ui`, or PREFECT_API_URL); this flow would run on a temporary one")
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ValueError(f"gpu deployment {name!r}: not on {api}; create it with "
                             f"`pipelines/deploy.py --gpu-pool <pool>` (make deploy GPU_POOL=...)") from None


@flow(name=STAGE_FLOW, flow_run_name="{name}", log_prints=True, persist_result=False)
def visionflow_stage(name: str, cmd: str, params_file: str = "params.yaml") -> dict:
    """One DVC stage that the pipeline flow found out of date, run in the worker's project folder
    (``params_file`` is relative to it) and recorded in its dvc.lock: how GPU stages reach a GPU
    work pool. Deployed by ``pipelines/deploy.py --gpu-pool``."""
    return execute_stage(name, cmd, Path(params_file).resolve())


def _submit(stage: PlannedStage, params_file: str, planned: set[str], wait_for: list,
            gpu_deployment: str | None = None):
    may_run = stage.name in planned
    labels = [f"stage:{stage.kind}"] + ([f"family:{stage.family}"] if stage.family else []) \
        + ([] if may_run else [UP_TO_DATE_TAG])
    deployment = None
    if stage.kind in ACCELERATOR_STAGES:
        labels.append(ACCELERATOR_TAG)
        deployment = gpu_deployment
    stage_task = run_retried_stage if stage.kind in RETRIED_STAGES else run_stage
    return stage_task.with_options(task_run_name=stage.name, tags=labels).submit(
        stage.name, stage.cmd, params_file, may_run, deployment, wait_for=wait_for)


def git_commit_short(root: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "no-commit"


def flow_run_name() -> str:
    """``visionflow: 6 families @ 1a2b3c4``, from the run's parameters (deployment runs too)."""
    parameters = current_flow_run.parameters
    params_path = Path(parameters.get("params_file") or "params.yaml").resolve()
    families = parameters.get("tasks") or load_params(params_path).tasks
    noun = "family" if len(families) == 1 else "families"
    return f"visionflow: {len(families)} {noun} @ {git_commit_short(params_path.parent)}"


@flow(name="visionflow", flow_run_name=flow_run_name, log_prints=True)
def visionflow_pipeline(params_file: str = "params.yaml", tasks: list[str] | None = None,
                        gpu_deployment: str | None = None) -> list[dict]:
    """Every stage of dvc.yaml (or those ``tasks`` need), each once the stages it depends on are done.

    ``gpu_deployment`` (e.g. ``visionflow-stage/gpu``): train and evaluate stages run as flow runs
    of that deployment, on its work pool's workers, instead of in this flow's process.
    """
    from visionflow import dag

    LAST_FLOW_RUN["id"] = str(current_flow_run.id)
    if gpu_deployment:
        check_gpu_deployment(gpu_deployment)
    params = load_params(params_file)
    families = tasks or params.tasks
    for family in families:
        params.task(family)  # an unknown or disabled family fails before anything runs
    root = Path(params_file).resolve().parent
    if dag.write(root, params):  # `tasks`, `pretrained` or a cross-family input changed
        get_run_logger().info("wrote %s for %s (visionflow dag)", root / dag.DVC_YAML, params_file)
    create_tracking_store(params, root)
    planned = stages_to_check(root)
    submitted: dict[str, object] = {}
    for stage in pipeline_plan(root, list(tasks) if tasks else None):
        submitted[stage.name] = _submit(stage, params_file, planned,
                                        [submitted[name] for name in stage.upstream], gpu_deployment)
    futures = list(submitted.values())
    wait(futures)
    results = [future.result() for future in futures]
    report_artifact(root, params, families, results)
    return results


def create_tracking_store(params, root: Path) -> None:
    """Create MLflow's store (and run its migrations) once: families' first stages start together,
    and two processes creating a fresh SQLite store at once fail in its migrations."""
    from visionflow.tracking import create_store

    create_store(params.tracking, root)


def report_artifact(root: Path, params, families: list[str], results: list[dict]) -> None:
    """A markdown table in the flow run's Artifacts tab: each family's headline test metric,
    which of its stages ran, and links to its MLflow training run and runs table."""
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task
    from visionflow.tracking import headline_link, run_experiment_id, run_link, use_store

    use_store(params.tracking, root)
    ran = {r["stage"] for r in results if r["ran"]}
    lines = ["| family | test metric | stages run | MLflow |", "|---|---|---|---|"]
    for family in families:
        paths, metric = TaskPaths(family, root), get_task(family).primary_metric
        value = json.loads(paths.metrics.read_text()).get(metric) if paths.metrics.is_file() else None
        stages = [s for s in ("pretrained", *TASK_STAGES) if stage_name(s, family) in ran]
        links = "-"
        if paths.train_summary.is_file():
            run_id = json.loads(paths.train_summary.read_text())["mlflow_run_id"]
            experiment_id = run_experiment_id(run_id)
            if experiment_id is not None:
                links = f"[training run]({run_link(experiment_id, run_id)}) · [runs]({headline_link(experiment_id)})"
        shown = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"{metric} -"
        lines.append(f"| {family} | {shown} | {', '.join(stages) or 'none (up to date)'} | {links} |")
    create_markdown_artifact("\n".join(lines), key="visionflow-metrics",
                             description="Headline test metric per family, and what this flow run ran")


def run_pipeline(params_file: str, tasks: list[str] | None = None,
                 gpu_deployment: str | None = None) -> list[dict]:
    """The flow, tagged with what it runs: families, commit, params hash."""
    params_path = Path(params_file).resolve()
    families = tasks or load_params(params_path).tasks
    with tags(*run_tags(params_path, families)):
        return visionflow_pipeline(params_file=str(params_path), tasks=list(families),
                                   gpu_deployment=gpu_deployment)


def run_tags(params_path: Path, families: list[str]) -> list[str]:
    digest = hashlib.sha256(params_path.read_bytes()).hexdigest()[:12]
    return [*[f"family:{f}" for f in families], f"commit:{git_commit_short(params_path.parent)}", f"params:{digest}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (its folder is the project)")
    parser.add_argument("--tasks", nargs="+", help="task families to run (default: params.yaml's tasks)")
    parser.add_argument("--gpu-deployment", metavar="FLOW/NAME",
                        help="run train and evaluate stages on this deployment's work pool, "
                             "e.g. visionflow-stage/gpu (pipelines/deploy.py --gpu-pool creates it)")
    args = parser.parse_args()
    if args.gpu_deployment:
        try:
            check_gpu_deployment(args.gpu_deployment)
        except ValueError as exc:
            print(f"flow.py: --gpu-deployment: {exc}", file=sys.stderr)
            return 2
    results = run_pipeline(args.params, args.tasks, args.gpu_deployment)
    for result in results:
        ran = f"ran in {result['seconds']} s" if result["ran"] else "up to date"
        print(f"{result['stage']:<28} {ran}")
    print_link()
    return 0


def print_link() -> None:
    api = os.environ.get("PREFECT_API_URL")
    flow_run_id = LAST_FLOW_RUN.get("id")
    if api and flow_run_id:
        print(f"Prefect: {api.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
    else:
        print("Prefect: ran on a temporary server; `make ui` shows this run at "
              f"{DEFAULT_PREFECT_SERVER}/runs")


if __name__ == "__main__":
    sys.exit(main())
