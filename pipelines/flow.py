"""The visionflow pipeline as a Prefect flow: the same stages as ``dvc repro``, shown in the Prefect UI.

    python pipelines/flow.py [--params params.yaml] [--tasks segmentation ...]

Each DVC stage is one Prefect task run named like the DVC stage
(``train@segmentation``). A stage runs only if ``dvc status`` says it changed,
as its CLI command (the very command dvc.yaml gives), in its own process, so
task families run side by side without sharing seeds or threads. After a stage
runs, ``dvc commit`` records it in dvc.lock, so a ``dvc repro`` right after the
flow has nothing to do. ``acquire`` is retried on failure (networks flake).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import visionflow  # noqa: F401  (quiet, offline, in-project settings before Prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from visionflow.config import load_params
from visionflow.stages import TASK_STAGES

_DVC_LOCK = threading.Lock()  # DVC holds a repo-wide lock: one DVC call at a time


def dvc_stage_name(stage: str, task_name: str | None) -> str:
    return stage if task_name is None else f"{stage}@{task_name}"


def stage_changed(root: Path, name: str) -> bool:
    from dvc.repo import Repo

    with _DVC_LOCK, Repo(str(root)) as repo:
        return bool(repo.status(targets=[name]))


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


def _run_stage(stage: str, task_name: str | None, params_file: str) -> dict:
    logger = get_run_logger()
    params_path = Path(params_file).resolve()
    root = params_path.parent
    name = dvc_stage_name(stage, task_name)
    if not stage_changed(root, name):
        logger.info("%s is up to date (dvc status): nothing to run", name)
        return {"stage": name, "ran": False}
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


@flow(name="visionflow", log_prints=True)
def visionflow_pipeline(params_file: str = "params.yaml", tasks: list[str] | None = None) -> list[dict]:
    """acquire, then synthesize → augment → train → evaluate → register for each family in parallel.

    A family listed under ``pretrained`` in params.yaml gets ``pretrained@<family>`` before its
    train stage, started once the stages producing its backbone (per dvc.yaml) have finished.
    """
    params = load_params(params_file)
    families = tasks or params.tasks
    for family in families:
        params.task(family)  # an unknown or disabled family fails before anything runs
    root = Path(params_file).resolve().parent
    upstream = {family: upstream_stages(root, dvc_stage_name("pretrained", family))
                for family in families if family in params.pretrained}
    needs = {family: {name.split("@", 1)[1] for name in names if "@" in name}
             for family, names in upstream.items()}
    acquired = run_acquire.with_options(task_run_name="acquire").submit("acquire", None, params_file)
    submitted = {"acquire": acquired}
    chains = []
    for family in submission_order(list(families), needs):
        previous = acquired
        chain = []
        for stage in TASK_STAGES:
            if stage == "train" and family in upstream:
                name = dvc_stage_name("pretrained", family)
                producers = [submitted[s] for s in upstream[family] if s in submitted]
                previous = run_stage.with_options(task_run_name=name).submit(
                    "pretrained", family, params_file, wait_for=[previous, *producers])
                chain.append(previous)
            previous = run_stage.with_options(task_run_name=dvc_stage_name(stage, family)).submit(
                stage, family, params_file, wait_for=[previous])
            submitted[dvc_stage_name(stage, family)] = previous
            chain.append(previous)
        chains.append(chain)
    futures = [acquired] + [future for chain in chains for future in chain]
    wait(futures)
    return [future.result() for future in futures]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (its folder is the project)")
    parser.add_argument("--tasks", nargs="+", help="task families to run (default: params.yaml's tasks)")
    args = parser.parse_args()
    results = visionflow_pipeline(params_file=str(Path(args.params).resolve()), tasks=args.tasks)
    for result in results:
        ran = f"ran in {result['seconds']} s" if result["ran"] else "up to date"
        print(f"{result['stage']:<28} {ran}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
