"""The visionflow pipeline as a Prefect flow: the same stages as ``dvc repro``, shown in the Prefect UI.

    python pipelines/flow.py [--params params.yaml] [--tasks segmentation ...]

Each DVC stage is one Prefect task run named like the DVC stage
(``train@segmentation``). One ``dvc status`` at the start finds the stages that
are out of date and everything downstream of them; the others finish at once in
a ``Skipped`` state (tag ``up-to-date``) without running anything. A stage that
may run checks ``dvc status`` again once its upstream stages are done, runs as its
CLI command (the very command dvc.yaml gives) in its own process, so families run
side by side without sharing seeds or threads, and is then recorded in dvc.lock
with ``dvc commit``: a ``dvc repro`` right after the flow has nothing to do.
``acquire`` is retried on failure (networks flake).

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
import subprocess
import sys
import threading
import time
import urllib.request
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
from visionflow.stages import TASK_STAGES  # noqa: E402

_DVC_LOCK = threading.Lock()  # DVC holds a repo-wide lock: one DVC call at a time
UP_TO_DATE_TAG = "up-to-date"
# Stages that use the GPU carry this tag: `prefect concurrency-limit create gpu 1` lets one
# of them run at a time while the other families' CPU stages go on.
ACCELERATOR_TAG = "gpu"
ACCELERATOR_STAGES = ("train", "evaluate")
LAST_FLOW_RUN: dict[str, str] = {}  # the id of this process's latest flow run, for its link


def dvc_stage_name(stage: str, task_name: str | None) -> str:
    return stage if task_name is None else f"{stage}@{task_name}"


def stage_changed(root: Path, name: str) -> bool:
    from dvc.repo import Repo

    with _DVC_LOCK, Repo(str(root)) as repo:
        return bool(repo.status(targets=[name]))


def stages_to_check(root: Path) -> set[str]:
    """Stages that are out of date now, and every stage downstream of one (it may change).

    The rest are up to date and stay so during this flow: nothing upstream of them runs.
    """
    import networkx as nx
    from dvc.repo import Repo

    with _DVC_LOCK, Repo(str(root)) as repo:
        changed = set(repo.status())
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {stage.addressing: stage for stage in graph}
        downstream = {d.addressing for name in changed if name in by_name
                      for d in nx.ancestors(graph, by_name[name])}
    return changed | downstream


def upstream_stages(root: Path, name: str) -> list[str]:
    """The DVC stages ``name`` depends on directly (those producing its deps)."""
    from dvc.repo import Repo

    with _DVC_LOCK, Repo(str(root)) as repo:
        graph = repo.index.graph
        for stage in graph:
            if stage.addressing == name:
                return sorted(s.addressing for s in graph.successors(stage))
    raise KeyError(f"{name}: no such stage in {root / 'dvc.yaml'}")


def submission_order(families: list[str], needs: dict[str, set[str]]) -> list[str]:
    """Families in an order where each comes after the families it takes a backbone from."""
    ordered: list[str] = []
    remaining = list(families)
    while remaining:
        ready = [f for f in remaining if not (needs.get(f, set()) & set(remaining)) - {f}]
        if not ready:
            raise ValueError(f"pretrained backbones form a cycle among {remaining}")
        ordered += ready
        remaining = [f for f in remaining if f not in ready]
    return ordered


def dvc_commit(root: Path, name: str) -> None:
    from dvc.repo import Repo

    with _DVC_LOCK, Repo(str(root)) as repo:
        repo.commit(name, force=True)


def stage_command(stage: str, task_name: str | None, params_file: Path) -> list[str]:
    command = [sys.executable, "-m", "visionflow.cli", "--params", str(params_file), stage]
    if stage == "acquire":
        return command + ["--no-progress"]
    return command + ["--task", task_name]


def _skipped(name: str) -> Completed:
    return Completed(name="Skipped", message=f"{name} is up to date (dvc status): nothing ran",
                     data={"stage": name, "ran": False})


def _run_stage(stage: str, task_name: str | None, params_file: str, may_run: bool = True):
    """Run one DVC stage if it is out of date; a Completed state named ``Skipped`` if not."""
    logger = get_run_logger()
    params_path = Path(params_file).resolve()
    root = params_path.parent
    name = dvc_stage_name(stage, task_name)
    if not may_run or not stage_changed(root, name):
        logger.info("%s is up to date (dvc status): nothing to run", name)
        return _skipped(name)
    started = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars make unreadable logs
    process = subprocess.Popen(stage_command(stage, task_name, params_path), cwd=root, env=env,
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


# Results are small dicts and inputs plain strings: no caching or result persistence needed.
run_stage = task(_run_stage, cache_policy=NO_CACHE, persist_result=False)
run_acquire = task(_run_stage, name="acquire", cache_policy=NO_CACHE, persist_result=False,
                   retries=2, retry_delay_seconds=5)


def _submit(stage_task, stage: str, family: str | None, params_file: str, planned: set[str], wait_for: list):
    name = dvc_stage_name(stage, family)
    may_run = name in planned
    labels = [f"stage:{stage}"] + ([f"family:{family}"] if family else []) + ([] if may_run else [UP_TO_DATE_TAG])
    if stage in ACCELERATOR_STAGES:
        labels.append(ACCELERATOR_TAG)
    return stage_task.with_options(task_run_name=name, tags=labels).submit(
        stage, family, params_file, may_run, wait_for=wait_for)


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
def visionflow_pipeline(params_file: str = "params.yaml", tasks: list[str] | None = None) -> list[dict]:
    """acquire, then synthesize → augment → train → evaluate → register for each family in parallel.

    A family listed under ``pretrained`` in params.yaml gets ``pretrained@<family>`` before its
    train stage, started once the stages producing its backbone (per dvc.yaml) have finished.
    """
    LAST_FLOW_RUN["id"] = str(current_flow_run.id)
    params = load_params(params_file)
    families = tasks or params.tasks
    for family in families:
        params.task(family)  # an unknown or disabled family fails before anything runs
    root = Path(params_file).resolve().parent
    create_tracking_store(params, root)
    planned = stages_to_check(root)
    upstream = {family: upstream_stages(root, dvc_stage_name("pretrained", family))
                for family in families if family in params.pretrained}
    needs = {family: {name.split("@", 1)[1] for name in names if "@" in name}
             for family, names in upstream.items()}
    acquired = _submit(run_acquire, "acquire", None, params_file, planned, [])
    submitted = {"acquire": acquired}
    chains = []
    for family in submission_order(list(families), needs):
        previous = acquired
        chain = []
        for stage in TASK_STAGES:
            if stage == "train" and family in upstream:
                producers = [submitted[s] for s in upstream[family] if s in submitted]
                previous = _submit(run_stage, "pretrained", family, params_file, planned, [previous, *producers])
                chain.append(previous)
            previous = _submit(run_stage, stage, family, params_file, planned, [previous])
            submitted[dvc_stage_name(stage, family)] = previous
            chain.append(previous)
        chains.append(chain)
    futures = [acquired] + [future for chain in chains for future in chain]
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
        stages = [s for s in TASK_STAGES if dvc_stage_name(s, family) in ran]
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


def run_pipeline(params_file: str, tasks: list[str] | None = None) -> list[dict]:
    """The flow, tagged with what it runs: families, commit, params hash."""
    params_path = Path(params_file).resolve()
    families = tasks or load_params(params_path).tasks
    with tags(*run_tags(params_path, families)):
        return visionflow_pipeline(params_file=str(params_path), tasks=list(families))


def run_tags(params_path: Path, families: list[str]) -> list[str]:
    digest = hashlib.sha256(params_path.read_bytes()).hexdigest()[:12]
    return [*[f"family:{f}" for f in families], f"commit:{git_commit_short(params_path.parent)}", f"params:{digest}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (its folder is the project)")
    parser.add_argument("--tasks", nargs="+", help="task families to run (default: params.yaml's tasks)")
    args = parser.parse_args()
    results = run_pipeline(args.params, args.tasks)
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
