"""Self-supervision quality: probes against baselines, label efficiency, and the issue's floors.

    python bench/selfsup.py                       # run the default selfsup pipeline, then report
    python bench/selfsup.py --metrics metrics/selfsup.json   # report an existing result
    python bench/selfsup.py --set selfsup.train.epochs=20    # params overrides, as bench/pipeline.py

Runs ``bench/pipeline.py --tasks selfsup`` (the five stages from scratch in a
temp copy, timed per stage) unless ``--metrics`` is given, then prints the
linear-probe and kNN accuracy of the pretrained encoder, a randomly initialised
encoder and raw pixels on the same probe set, the label-efficiency table, and
whether each floor of the issue holds. Exit code 1 if a floor fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
MIN_GAIN_OVER_RANDOM = 0.10  # linear probe: pretrained >= random init + 10 points
MAX_PIPELINE_SECONDS = 6 * 60


def report(metrics: dict, wall: float | None) -> bool:
    rows = [("pretrained", metrics["linear_probe_accuracy"], metrics["knn_accuracy"]),
            ("random init", metrics["random_init"]["linear_probe_accuracy"],
             metrics["random_init"]["knn_accuracy"]),
            ("raw pixels", metrics["raw_pixels"]["linear_probe_accuracy"],
             metrics["raw_pixels"]["knn_accuracy"])]
    probe = metrics["probe"]
    print(f"\nprobe set: {probe['source']} ({', '.join(probe['classes'])}), "
          f"{probe['train_images']} train / {probe['test_images']} test images, "
          f"chance {probe['chance_accuracy']:.3f}")
    print(f"{'representation':<16}{'linear probe':>14}{'kNN':>8}")
    for name, linear, knn in rows:
        print(f"{name:<16}{linear:>14.3f}{knn:>8.3f}")
    floors = [
        ("linear probe >= random init + 10 points",
         metrics["linear_probe_gain_over_random_init"] >= MIN_GAIN_OVER_RANDOM),
        ("linear probe > raw pixels", metrics["linear_probe_gain_over_raw_pixels"] > 0),
    ]
    efficiency = metrics.get("label_efficiency")
    if efficiency:
        print(f"\n{'labels':<10}{'images':>8}{'scratch mIoU':>14}{'pretrained mIoU':>17}")
        for fraction, row in efficiency.items():
            print(f"{float(fraction) * 100:>5g} %   {row['labelled_images']:>8}"
                  f"{row['scratch_mIoU']:>14.3f}{row['pretrained_mIoU']:>17.3f}")
        smallest = min(efficiency, key=float)
        floors.append((f"at {float(smallest) * 100:g} % labels pretrained beats scratch (mIoU)",
                       efficiency[smallest]["pretrained_mIoU"] > efficiency[smallest]["scratch_mIoU"]))
    if wall is not None:
        floors.append((f"default pipeline <= {MAX_PIPELINE_SECONDS} s (took {wall:.0f} s)",
                       wall <= MAX_PIPELINE_SECONDS))
    print()
    for name, ok in floors:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return all(ok for _, ok in floors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, help="report this metrics file instead of running")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    wall = None
    if args.metrics:
        metrics = json.loads(args.metrics.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="visionflow-selfsup-") as workdir:
            started = time.perf_counter()
            command = [sys.executable, str(PROJECT / "bench" / "pipeline.py"), "--tasks", "selfsup",
                       "--workdir", workdir]
            if args.overrides:
                command += ["--set", *args.overrides]
            subprocess.run(command, check=True)
            wall = time.perf_counter() - started
            metrics = json.loads((Path(workdir) / "metrics" / "selfsup.json").read_text())
    return 0 if report(metrics, wall) else 1


if __name__ == "__main__":
    sys.exit(main())
