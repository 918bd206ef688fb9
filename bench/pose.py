"""Pose: the default pipeline from scratch, its OKS AP against the floor, decoding and speed.

    python bench/pose.py [--workdir DIR] [--set key=value ...] [--floor 0.70]

1. Runs the five pose stages (the real CLI calls, as ``bench/pipeline.py``) in a
   fresh copy of the project (temp folder unless --workdir), with its own MLflow
   store: wall time and peak memory per stage, and the test metrics.
2. On the trained checkpoint: OKS AP with each heatmap decoding (argmax only,
   Taylor, Taylor on smoothed maps), the heatmap codec's round-trip error, and
   inference speed of the exported module (crops per second, batch 64, CPU).

Exits 1 if OKS AP with ground-truth boxes is below ``--floor``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pipeline import PROJECT, TASK_STAGES, run_stage, set_param  # noqa: E402


def run_pipeline(workdir: Path, overrides: list[str]) -> float:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["tasks"] = ["pose"]
    for assignment in overrides:
        set_param(params, assignment)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cli = [str(Path(sys.executable).parent / "visionflow")]
    print(f"workdir: {workdir}\n\n{'stage':<22}{'wall s':>9}{'peak MiB':>10}")
    total = 0.0
    for stage in TASK_STAGES:
        wall, peak, code = run_stage([*cli, stage, "--task", "pose"], workdir)
        total += wall
        print(f"{stage + '@pose':<22}{wall:>9.1f}{peak:>10.0f}", flush=True)
        if code != 0:
            raise SystemExit(f"{stage}@pose failed with exit code {code}")
    print(f"{'total':<22}{total:>9.1f}\n")
    return total


def decoding_and_speed(workdir: Path) -> dict:
    import torch

    from visionflow.config import load_params
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task
    from visionflow.tasks.base import EvalOutputs
    from visionflow.tasks.pose.evaluate import evaluate_pose
    from visionflow.tasks.pose.heatmaps import decode_heatmaps, encode_heatmaps

    params = load_params(workdir / "params.yaml").pose
    family, paths = get_task("pose"), TaskPaths("pose", workdir)
    data_root = paths.data_root(params.data.source)
    out = EvalOutputs(workdir / ".bench" / "plots", workdir / ".bench" / "reports", workdir)
    report: dict = {"decoding_AP": {}}
    module = family.load_module(paths.best_checkpoint)
    if module.model_params.head == "heatmap":
        for name, decode, modulate in (("argmax", "argmax", False), ("taylor", "taylor", False),
                                       ("taylor+modulate", "taylor", True)):
            module.model_params = module.model_params.model_copy(update={"decode": decode, "modulate": modulate})
            metrics = evaluate_pose(module, data_root, out, torch.device("cpu"), params.evaluate)
            report["decoding_AP"][name] = {"AP": round(metrics["AP"], 4),
                                           "mean_error_px": round(metrics["mean_error_px"], 3)}

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(1, 1000, 3, generator=generator) * torch.tensor([40.0, 56.0, 0.0]) \
        + torch.tensor([4.0, 4.0, 2.0])
    heatmaps, _ = encode_heatmaps(points, (64, 48), 2, 1.5)
    error = (decode_heatmaps(heatmaps, 2)[..., :2] - points[..., :2]).norm(dim=-1)
    report["codec_max_error_px"] = float(error.max())

    predictor = family.export(family.load_module(paths.best_checkpoint), data_root).module.eval()
    crops = torch.rand(64, 3, *module.crop_size)
    with torch.no_grad():
        predictor(crops)
        started = time.perf_counter()
        for _ in range(10):
            predictor(crops)
    report["inference_crops_per_s"] = round(640 / (time.perf_counter() - started), 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to run (default: a temp folder, removed)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--floor", type=float, default=0.70, help="minimum OKS AP (ground-truth boxes)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="visionflow-bench-pose-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        total = run_pipeline(workdir, args.overrides)
        metrics = json.loads((workdir / "metrics" / "pose.json").read_text())
        train = json.loads((workdir / "models" / "pose" / "train.json").read_text())
        shown = {k: metrics[k] for k in ("AP", "AP50", "AP75", "AR", "PCK@0.05", "PCK@0.1", "mean_error_px",
                                         "boxes", "test_instances")}
        print("test metrics: " + json.dumps(shown))
        print("error px per keypoint: " + json.dumps({k: round(v, 2) for k, v in metrics["error_px"].items()
                                                      if v is not None}))
        print(f"train: {train['epochs']} epochs, {train['global_steps']} steps, {train['seconds']} s")
        print(json.dumps(decoding_and_speed(workdir), indent=1))
        met = metrics["AP"] >= args.floor and metrics["boxes"] == "ground_truth"
        print(f"\nOKS AP {metrics['AP']:.4f} vs floor {args.floor}: {'met' if met else 'NOT met'}; "
              f"pipeline {total:.1f} s vs 300 s: {'met' if total <= 300 else 'NOT met'}")
        return 0 if met else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
