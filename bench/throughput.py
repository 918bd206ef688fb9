"""Where a family's training time goes: the loader alone, the training step alone, end to end.

    python bench/throughput.py --task detection            # one family
    python bench/throughput.py --task all --out t.json     # every family, JSON too
    python bench/throughput.py --task all --repeats 3      # median of 3 (a noisy host)
    python bench/throughput.py --task stereo --set trainer.num_workers=1 --set stereo.train.batch_size=32

For each family, samples/s (images; crops for pose, pairs for stereo) of
- loader: iterating the training loader alone (decode, augment, collate, workers as params say);
- step: training steps on batches already in memory (on the device), Lightning included (and
  augmentation, for families that augment on the device);
- end to end: training steps fed by the real loader;
plus the share of end-to-end time between steps (waiting for data, and device-side augmentation),
and e2e / min(loader, step)
(1.0: loading is hidden behind the step; below 0.9 the loader is in the way). On CUDA also the
mean GPU utilisation over the end-to-end window (nvidia-smi, every 0.1 s). Synthetic data must
exist (`dvc repro synthesize-<task>`); the project's params.yaml is used unless --params names
another project's (its folder is that project's root).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import visionflow  # noqa: E402,F401  (quiet, offline settings)


def load_params(path: Path, overrides: list[str]):
    """``path``'s params with ``key.path=value`` overrides (YAML values), validated."""
    import yaml

    from visionflow.config import merge_overrides, parse_params, read_yaml_mapping

    flat = {}
    for text in overrides:
        key, sep, value = text.partition("=")
        if not key or not sep:
            raise SystemExit(f"--set {text!r}: expected key.path=value")
        flat[key] = yaml.safe_load(value)
    return parse_params(merge_overrides(read_yaml_mapping(path), flat), str(path))


class StepClock:
    """Times training steps ``warmup`` .. ``warmup + count``: total wall time and the gaps between
    one step's end and the next one's start (where the loop waits for a batch)."""

    def __init__(self, warmup: int, count: int, device_type: str):
        from lightning.pytorch.callbacks import Callback

        clock = self

        class _Hook(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                clock.batch_start(batch_idx)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                clock.batch_end(batch_idx)

        self.callback = _Hook()
        self.warmup, self.count, self.device_type = warmup, count, device_type
        self.started = self.finished = None
        self.waited, self._last_end = 0.0, None

    def _sync(self) -> None:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()

    def batch_start(self, index: int) -> None:
        now = time.perf_counter()
        if index == self.warmup:
            self._sync()
            self.started = time.perf_counter()
        elif self.started is not None and self.finished is None and self._last_end is not None:
            self.waited += now - self._last_end

    def batch_end(self, index: int) -> None:
        if index == self.warmup + self.count - 1:
            self._sync()
            self.finished = time.perf_counter()
        self._last_end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class GpuSampler:
    """Mean ``utilization.gpu`` of device 0 while running (nvidia-smi every 0.1 s)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.1)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def batch_size_of(batch) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


def fit_steps(params, task: str, module, loader, steps: int, clock: StepClock) -> None:
    import lightning as L

    from visionflow.runtime import resolve_runtime
    from visionflow.training import ChannelsLast

    runtime = resolve_runtime(params.trainer)
    trainer = L.Trainer(max_epochs=1, max_steps=steps, limit_train_batches=steps, limit_val_batches=0,
                        num_sanity_val_steps=0, accelerator=params.trainer.accelerator, devices=1,
                        precision=runtime.precision, deterministic=runtime.deterministic,
                        benchmark=runtime.benchmark, enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock.callback] + ([ChannelsLast()] if runtime.channels_last else []),
                        default_root_dir=ROOT / ".cache" / "bench")
    trainer.fit(module, train_dataloaders=loader)


def measure(params, task: str, warmup: int, count: int, root: Path = ROOT, repeats: int = 1) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from visionflow.paths import TaskPaths
    from visionflow.runtime import resolve_runtime
    from visionflow.tasks import get_task

    family, section = get_task(task), params.task(task)
    runtime = resolve_runtime(params.trainer)
    if runtime.compute_threads:
        torch.set_num_threads(runtime.compute_threads)
    data_root = TaskPaths(task, root).data_root(section.data.source)
    datamodule = family.datamodule(section, data_root, params.trainer)
    loader = datamodule.train_dataloader()
    count = min(count, len(loader) - warmup)
    if count < 2:
        raise SystemExit(f"{task}: {len(loader)} training batches; need more than {warmup + 2}")
    total = warmup + count

    # The loader alone (its first batches start the workers: not timed).
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(warmup)]
    started = time.perf_counter()
    batches += [next(iterator) for _ in range(count)]
    loader_seconds = time.perf_counter() - started
    del iterator
    samples = sum(batch_size_of(b) for b in batches[warmup:])

    # The step alone (the same batches from memory, already on the device), then end to end (a
    # fresh model fed by the real loader); ``repeats`` alternating pairs, each rate the median.
    from lightning.fabric.utilities.apply_func import move_data_to_device

    device = torch.device(runtime.device_type)
    in_memory = [move_data_to_device(b, device) for b in batches]
    step_runs, e2e_runs, waits, gpu_means = [], [], [], []
    for _ in range(repeats):
        torch.manual_seed(section.train.seed)
        clock = StepClock(warmup, count, runtime.device_type)
        fit_steps(params, task, family.module(section, datamodule), DataLoader(in_memory, batch_size=None,
                  collate_fn=lambda b: b), total, clock)
        step_runs.append(clock.seconds)
        torch.manual_seed(section.train.seed)
        clock = StepClock(warmup, count, runtime.device_type)
        with GpuSampler() if runtime.device_type == "cuda" else _Null() as gpu:
            fit_steps(params, task, family.module(section, datamodule), datamodule.train_dataloader(), total,
                      clock)
        e2e_runs.append(clock.seconds)
        waits.append(clock.waited / clock.seconds)
        gpu_means.append(gpu.mean)
    step_seconds, e2e_seconds = statistics.median(step_runs), statistics.median(e2e_runs)

    loader_rate, step_rate, e2e_rate = (samples / s for s in (loader_seconds, step_seconds, e2e_seconds))
    return {
        "task": task, "device": runtime.device_type, "precision": runtime.precision,
        "num_workers": runtime.num_workers, "threads": torch.get_num_threads(), "batch_size": batch_size_of(batches[0]), "steps": count,
        "loader_samples_per_s": round(loader_rate, 1), "step_samples_per_s": round(step_rate, 1),
        "e2e_samples_per_s": round(e2e_rate, 1),
        "e2e_over_min": round(e2e_rate / min(loader_rate, step_rate), 3),
        "data_wait_share": round(statistics.median(waits), 3),
        "gpu_util_percent": statistics.median(gpu_means) if None not in gpu_means else None,
    }


class _Null:
    mean = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


COLUMNS = ("task", "device", "precision", "num_workers", "threads", "batch_size", "steps", "loader_samples_per_s",
           "step_samples_per_s", "e2e_samples_per_s", "e2e_over_min", "data_wait_share", "gpu_util_percent")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", required=True, help="a family, or all (repeatable)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key, e.g. trainer.num_workers=2")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--steps", type=int, default=40, help="timed batches (default 40)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate step-alone and end-to-end runs this many times; rates are medians "
                             "(a shared or noisy host: 3)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    params = load_params(args.params, args.set)
    tasks = params.tasks if "all" in args.task else args.task
    rows = []
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for task in tasks:
        row = measure(params, task, args.warmup, args.steps, args.params.resolve().parent, args.repeats)
        rows.append(row)
        print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
