"""Run the default pipeline from scratch and print each stage's wall time, peak memory, metrics.

    python bench/pipeline.py [--tasks segmentation ...] [--workdir DIR] [--set key=value ...]

Works in a fresh copy of the project's params.yaml and dvc.yaml (in a temp
folder unless --workdir is given) with its own MLflow store, so the project's
own results are untouched. Each stage is the real CLI call ``dvc repro`` would
make, timed as a separate process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
TASK_STAGES = ("synthesize", "augment", "train", "evaluate", "register")


def run_stage(command: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one stage process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(stderr[-3000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def set_param(params: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = yaml.safe_load(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="task families (default: params.yaml's tasks)")
    parser.add_argument("--workdir", type=Path, help="where to run (default: a temp folder, removed)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params overrides, e.g. segmentation.train.epochs=5")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="visionflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for assignment in args.overrides:
        set_param(params, assignment)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tasks = args.tasks or params["tasks"]
    env_bin = Path(sys.executable).parent
    cli = [str(env_bin / "visionflow")]

    print(f"workdir: {workdir}\n")
    print(f"{'stage':<28}{'wall s':>9}{'peak MiB':>10}")
    rows = []
    total = 0.0
    for task in tasks:
        task_total = 0.0
        for stage in TASK_STAGES:
            wall, peak, code = run_stage([*cli, stage, "--task", task], workdir)
            task_total += wall
            rows.append((f"{stage}@{task}", wall, peak))
            print(f"{stage + '@' + task:<28}{wall:>9.1f}{peak:>10.0f}", flush=True)
            if code != 0:
                print(f"{stage}@{task} failed with exit code {code}")
                return 1
        print(f"{'total ' + task:<28}{task_total:>9.1f}\n")
        total += task_total
        metrics = json.loads((workdir / "metrics" / f"{task}.json").read_text())
        print(f"{task} metrics: " + json.dumps(metrics, indent=None))
    print(f"\nall tasks: {total:.1f} s")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
