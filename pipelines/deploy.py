"""Deploy the visionflow flow to a Prefect process work pool, for workers to run.

    python pipelines/deploy.py [--pool visionflow] [--params params.yaml] [--tasks ...] [--limit 2]
                               [--project .]

Needs a Prefect server (``make ui``, or ``PREFECT_API_URL``). Creates the process
work pool if it is missing (``--limit``: flow runs at once) and the deployment
``visionflow/visionflow``, whose code is this project folder. Then:

    prefect worker start --pool visionflow      # make worker: on each machine that runs flows
    prefect deployment run visionflow/visionflow

A worker runs each flow run in its own process in this folder; the families'
stages run side by side inside it, as with ``make flow``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import visionflow  # noqa: F401  (quiet, offline, in-project settings before Prefect is imported)
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow import run_tags  # noqa: E402

from visionflow.config import load_params  # noqa: E402

DEPLOYMENT = "visionflow"
ENTRYPOINT = "pipelines/flow.py:visionflow_pipeline"


async def ensure_process_pool(name: str, limit: int | None) -> None:
    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=limit))
        except ObjectAlreadyExists:
            pass


def deploy(root: Path, pool: str, params_file: str = "params.yaml", tasks: list[str] | None = None,
           limit: int | None = None) -> str:
    """Create (or update) the deployment; return its id. ``params_file`` is relative to ``root``."""
    asyncio.run(ensure_process_pool(pool, limit))
    families = tasks or load_params(root / params_file).tasks
    source = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    deployment_id = source.deploy(name=DEPLOYMENT, work_pool_name=pool, build=False, push=False,
                                  parameters={"params_file": params_file, "tasks": list(families)},
                                  tags=run_tags(root / params_file, list(families)), print_next_steps=False)
    return str(deployment_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="visionflow", help="process work pool (created if missing)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to the project")
    parser.add_argument("--tasks", nargs="+", help="task families (default: params.yaml's tasks)")
    parser.add_argument("--limit", type=int, help="flow runs the pool runs at once (default: no limit)")
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the project folder workers run in (default: this one)")
    args = parser.parse_args()
    root = args.project.resolve()
    deployment_id = deploy(root, args.pool, args.params, args.tasks, args.limit)
    print(f"deployment visionflow/{DEPLOYMENT} ({deployment_id}) on work pool {args.pool!r}; next:\n"
          f"  prefect worker start --pool {args.pool}\n  prefect deployment run visionflow/{DEPLOYMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
