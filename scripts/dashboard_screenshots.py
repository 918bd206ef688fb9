"""Screenshots of the Prefect and MLflow UIs after a flow run (docs/dashboards.md's pictures).

    python scripts/dashboard_screenshots.py [--family segmentation] [--out docs/dashboards]

Needs `make ui` running (Prefect on 127.0.0.1:4200, MLflow on :5000) and Chromium
(`apt install chromium`). Finds the latest two flow runs, the family's experiment, its
champion version and training run through the servers' APIs, and shoots each page
with headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path


def call(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def shoot(url: str, path: Path, size: str = "1600,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt install chromium")
    # Virtual time lets the single-page apps finish loading (charts load lazily) before the shot.
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--run-all-compositor-stages-before-draw", f"--window-size={size}",
                    "--virtual-time-budget=120000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=300)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect", default="http://127.0.0.1:4200")
    parser.add_argument("--mlflow", default="http://127.0.0.1:5000")
    parser.add_argument("--family", default="segmentation")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboards"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    layout = "workflowType=machine_learning"

    flow_runs = call(f"{args.prefect}/api/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 2})
    latest, previous = flow_runs[0], flow_runs[-1]
    shoot(f"{args.prefect}/runs/flow-run/{previous['id']}", args.out / "prefect-run-trained.png")
    shoot(f"{args.prefect}/runs/flow-run/{latest['id']}", args.out / "prefect-run-up-to-date.png")
    artifacts = call(f"{args.prefect}/api/artifacts/filter",
                     {"artifacts": {"flow_run_id": {"any_": [latest["id"]]}}})
    if artifacts:
        shoot(f"{args.prefect}/artifacts/artifact/{artifacts[0]['id']}", args.out / "prefect-metrics-artifact.png",
              "1600,700")

    api = f"{args.mlflow}/api/2.0/mlflow"
    name = f"visionflow-{args.family.replace('_', '-')}"
    experiment = call(f"{api}/experiments/get-by-name?experiment_name={name}")["experiment"]["experiment_id"]
    shoot(f"{args.mlflow}/#/experiments/{experiment}/runs?{layout}&viewStateShareKey=headline",
          args.out / "mlflow-runs.png", "2200,1000")
    version = call(f"{api}/registered-models/alias?name={name}&alias=champion")["model_version"]
    shoot(f"{args.mlflow}/#/models/{name}/versions/{version['version']}?{layout}", args.out / "mlflow-version.png",
          "1600,1100")
    shoot(f"{args.mlflow}/#/experiments/{experiment}/runs/{version['run_id']}/system-metrics?{layout}",
          args.out / "mlflow-system-metrics.png")
    shoot(f"{args.mlflow}/#/experiments/{experiment}/runs/{version['run_id']}/model-metrics?{layout}",
          args.out / "mlflow-model-metrics.png", "1600,1200")


if __name__ == "__main__":
    main()
