"""Run the default pipeline from scratch and print each stage's wall time, peak memory, metrics.

    python bench/pipeline.py [--tasks segmentation ...] [--workdir DIR] [--set key=value ...]
                             [--profile params.gpu.yaml] [--jobs N] [--json OUT]

Works in a fresh copy of the project's params.yaml (in a temp
folder unless --workdir is given) with its own MLflow store, so the project's
own results are untouched. Each stage is the real CLI call ``dvc repro`` would
make, timed as a separate process. ``--jobs N`` runs N families side by side
(each family's stages in order; on a GPU machine they share the GPU), with the
machine's cores split between them.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
TASK_STAGES = ("synthesize", "augment", "train", "evaluate", "register")


# Create the tracking store (and run its migrations) once, before stages run side by side.
INIT_TRACKING = """
from pathlib import Path
import mlflow
from visionflow.config import load_params
from visionflow.tracking import tracking_uri
root = Path.cwd()
mlflow.set_tracking_uri(tracking_uri(load_params(root / "params.yaml").tracking, root))
mlflow.search_experiments()
"""


def run_stage(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one stage process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(stderr[-3000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def run_family(cli: list[str], task: str, workdir: Path, env: dict | None) -> list[tuple[str, float, float, int]]:
    """Every stage of one family in order; stops at the first failure."""
    rows = []
    for stage in TASK_STAGES:
        wall, peak, code = run_stage([*cli, stage, "--task", task], workdir, env)
        rows.append((f"{stage}-{task}", wall, peak, code))
        print(f"{stage + '-' + task:<28}{wall:>9.1f}{peak:>10.0f}", flush=True)
        if code != 0:
            break
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="task families (default: params.yaml's tasks)")
    parser.add_argument("--workdir", type=Path, help="where to run (default: a temp folder, removed)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params overrides, e.g. segmentation.train.epochs=5")
    parser.add_argument("--profile", type=Path, help="a profile merged over params.yaml, e.g. params.gpu.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="families run side by side (default 1)")
    parser.add_argument("--json", type=Path, help="also write stage times and metrics as JSON here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="visionflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(PROJECT / "src"))
    from visionflow.config import merge_overrides, profile_overrides

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    if args.profile:
        params = merge_overrides(params, profile_overrides(PROJECT / "params.yaml", args.profile))
    params = merge_overrides(params, {key: yaml.safe_load(value) for key, _, value in
                                      (assignment.partition("=") for assignment in args.overrides)})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tasks = args.tasks or params["tasks"]
    env_bin = Path(sys.executable).parent
    cli = [str(env_bin / "visionflow")]
    jobs = max(1, min(args.jobs, len(tasks)))
    env = None
    if jobs > 1:  # split the cores: each family's torch and OpenCV get their share
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    if jobs > 1:  # families started together would race to create a fresh MLflow store
        subprocess.run([sys.executable, "-c", INIT_TRACKING], cwd=workdir, env=env, check=True)
    print(f"workdir: {workdir}\n")
    print(f"{'stage':<28}{'wall s':>9}{'peak MiB':>10}")
    started = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        results = dict(zip(tasks, pool.map(lambda t: run_family(cli, t, workdir, env), tasks)))
    elapsed = time.perf_counter() - started
    report = {"tasks": {}, "wall_seconds": round(elapsed, 1), "jobs": jobs}
    failed = False
    for task, rows in results.items():
        task_total = sum(wall for _, wall, _, _ in rows)
        entry = {"stages": {name: {"seconds": round(wall, 1), "peak_mib": round(peak)} for name, wall, peak, _ in rows},
                 "seconds": round(task_total, 1)}
        if rows[-1][3] != 0:
            print(f"{rows[-1][0]} failed with exit code {rows[-1][3]}")
            entry["failed"] = rows[-1][0]
            failed = True
        else:
            entry["metrics"] = json.loads((workdir / "metrics" / f"{task}.json").read_text())
            print(f"{'total ' + task:<28}{task_total:>9.1f}")
            print(f"{task} metrics: " + json.dumps(entry["metrics"], indent=None))
        report["tasks"][task] = entry
    print(f"\nall tasks: {sum(e['seconds'] for e in report['tasks'].values()):.1f} s of stages, "
          f"{elapsed:.1f} s wall ({jobs} at a time)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
