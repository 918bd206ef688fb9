"""Deploy the visionflow flow to a Prefect process work pool, for workers to run.

    python pipelines/deploy.py [--pool visionflow] [--params params.yaml] [--tasks ...] [--limit 2]
                               [--gpu-pool visionflow-gpu [--gpu-limit 1]] [--project .]

Needs a Prefect server (``make ui``, or ``PREFECT_API_URL``). Creates the process
work pool if it is missing (``--limit``: flow runs at once) and the deployment
``visionflow/visionflow``, whose code is this project folder. Then:

    prefect worker start --pool visionflow      # make worker: on each machine that runs flows
    prefect deployment run visionflow/visionflow

A worker runs each flow run in its own process in this folder; the families'
stages run side by side inside it, as with ``make flow``.

``--gpu-pool``: also a second process pool (``--gpu-limit``: GPU stages at once, default 1)
and the deployment ``visionflow-stage/gpu`` of the one-stage flow on it; the pipeline
deployment then hands its train and evaluate stages to that pool:

    prefect worker start --pool visionflow-gpu  # make worker-gpu: on the GPU machine
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
from flow import ACCELERATOR_TAG, STAGE_FLOW, run_tags  # noqa: E402

from visionflow.config import load_params  # noqa: E402

DEPLOYMENT = "visionflow"
ENTRYPOINT = "pipelines/flow.py:visionflow_pipeline"
GPU_DEPLOYMENT = "gpu"
STAGE_ENTRYPOINT = "pipelines/flow.py:visionflow_stage"


async def ensure_process_pool(name: str, limit: int | None) -> None:
    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=limit))
        except ObjectAlreadyExists:
            pass


def deploy(root: Path, pool: str, params_file: str = "params.yaml", tasks: list[str] | None = None,
           limit: int | None = None, gpu_pool: str | None = None, gpu_limit: int | None = 1) -> str:
    """Create (or update) the deployment; return its id. ``params_file`` is relative to ``root``.

    ``gpu_pool``: also the pool and the stage deployment that the pipeline's GPU stages go to.
    """
    asyncio.run(ensure_process_pool(pool, limit))
    families = tasks or load_params(root / params_file).tasks
    parameters = {"params_file": params_file, "tasks": list(families)}
    if gpu_pool:
        parameters["gpu_deployment"] = deploy_gpu_stages(root, gpu_pool, gpu_limit)
    source = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    deployment_id = source.deploy(name=DEPLOYMENT, work_pool_name=pool, build=False, push=False,
                                  parameters=parameters, tags=run_tags(root / params_file, list(families)),
                                  print_next_steps=False, ignore_warnings=True)
    return str(deployment_id)


def deploy_gpu_stages(root: Path, pool: str, limit: int | None) -> str:
    """The one-stage flow deployed on process pool ``pool``; returns its ``flow/deployment`` name."""
    asyncio.run(ensure_process_pool(pool, limit))
    source = flow.from_source(source=str(root), entrypoint=STAGE_ENTRYPOINT)
    source.deploy(name=GPU_DEPLOYMENT, work_pool_name=pool, build=False, push=False,
                  tags=[ACCELERATOR_TAG], print_next_steps=False, ignore_warnings=True)
    return f"{STAGE_FLOW}/{GPU_DEPLOYMENT}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="visionflow", help="process work pool (created if missing)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to the project")
    parser.add_argument("--tasks", nargs="+", help="task families (default: params.yaml's tasks)")
    parser.add_argument("--limit", type=int, help="flow runs the pool runs at once (default: no limit)")
    parser.add_argument("--gpu-pool", help="send train and evaluate stages to this process pool "
                                           "(created if missing) through deployment visionflow-stage/gpu")
    parser.add_argument("--gpu-limit", type=int, default=1,
                        help="GPU stages the GPU pool runs at once (default 1)")
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the project folder workers run in (default: this one)")
    args = parser.parse_args()
    root = args.project.resolve()
    deployment_id = deploy(root, args.pool, args.params, args.tasks, args.limit, args.gpu_pool, args.gpu_limit)
    print(f"deployment visionflow/{DEPLOYMENT} ({deployment_id}) on work pool {args.pool!r}; next:\n"
          f"  prefect worker start --pool {args.pool}")
    if args.gpu_pool:
        print(f"  prefect worker start --pool {args.gpu_pool}      # on the GPU machine, same project folder")
    print(f"  prefect deployment run visionflow/{DEPLOYMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
