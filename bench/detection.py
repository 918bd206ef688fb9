"""Detection and instance segmentation: the default pipelines from scratch, stage times and COCO AP.

    python bench/detection.py [--tasks detection instance_segmentation]
                                                        [--set key=value ...] [--workdir DIR]

Runs each family's five stages as ``dvc repro`` would (the real CLI, one process
per stage, through ``bench/pipeline.py``) in a temp copy with its own MLflow
store, then prints each stage's wall time and peak memory, the COCO metrics the
evaluate stage wrote, the training throughput, and checks them against the
issue's targets (detection: AP >= 0.60, AP50 >= 0.90, <= 300 s; instance
segmentation: mask AP >= 0.40, <= 600 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402  (bench/pipeline.py)

TARGETS = {
    "detection": ({"AP": 0.60, "AP50": 0.90}, 300.0),
    "instance_segmentation": ({"mask_AP": 0.40}, 600.0),
}
SHOWN = {
    "detection": ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@100"],
    "instance_segmentation": ["mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "mask_AR@100"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--workdir", type=Path, help="where to run (default: a temp folder, removed)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="visionflow-bench-detection-"))
    sys.argv = ["pipeline.py", "--tasks", *args.tasks, "--workdir", str(workdir),
                "--set", *args.overrides]
    code = pipeline.main()
    if code == 0:
        print("\nsummary")
        for task in args.tasks:
            metrics = json.loads((workdir / "metrics" / f"{task}.json").read_text())
            train = json.loads((workdir / "models" / task / "train.json").read_text())
            params = pipeline.yaml.safe_load((workdir / "params.yaml").read_text())[task]
            images = params["synth"]["splits"]["train"] * train["epochs"]
            floors, budget = TARGETS[task]
            shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN[task] if k in metrics)
            print(f"{task}: {shown}")
            per_class = metrics.get("per_class_AP") or metrics.get("mask_per_class_AP")
            print(f"  per-class AP: " + "  ".join(f"{k} {v:.3f}" for k, v in per_class.items()))
            print(f"  train: {train['seconds']:.0f} s, {train['epochs']} epochs, "
                  f"{images / train['seconds']:.1f} img/s (with data loading and validation)")
            met = all(metrics[k] >= v for k, v in floors.items())
            print(f"  targets {floors}: {'met' if met else 'NOT met'} (pipeline budget {budget:.0f} s: "
                  "see the stage table above)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
