"""Synthesis speed-up with several render processes, and proof that the files do not change.

    python bench/synthesis.py --task detection --workers 1 2     # default params' dataset
    python bench/synthesis.py --task all --workers 1 16 --json out.json

Renders the family's dataset (params.yaml's ``<task>.synth``) once per worker count into a
temp folder, times it, and compares every file's sha256 with the first count's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", required=True, help="a family, or all (repeatable)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from visionflow.config import load_params
    from visionflow.tasks import get_task

    params = load_params(args.params)
    tasks = params.tasks if "all" in args.task else args.task
    rows, identical = [], True
    print(f"{'task':<24}{'workers':>8}{'seconds':>10}{'speed-up':>10}  same files")
    for task in tasks:
        base_seconds = base_digest = None
        for workers in args.workers:
            out = Path(tempfile.mkdtemp(prefix="visionflow-synth-")) / task
            started = time.perf_counter()
            get_task(task).synthesize(params.task(task), out, progress=False, workers=workers)
            seconds = time.perf_counter() - started
            digest = tree_digest(out)
            shutil.rmtree(out.parent)
            base_seconds, base_digest = base_seconds or seconds, base_digest or digest
            identical &= digest == base_digest
            rows.append({"task": task, "workers": workers, "seconds": round(seconds, 2),
                         "speedup": round(base_seconds / seconds, 2), "sha256": digest})
            print(f"{task:<24}{workers:>8}{seconds:>10.1f}{base_seconds / seconds:>10.2f}  {digest == base_digest}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
