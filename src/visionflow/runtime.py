"""How one training run uses this machine, resolved once from ``trainer:`` params (torch only).

The same params run on a CPU and on a GPU; what differs is settled here:

=================  ==============================  =====================================
key                CPU                             CUDA
=================  ==============================  =====================================
deterministic      auto/true: exact kernels        auto: deterministic kernels where torch
                   (bit-identical reruns)          has them; an op without one is named in
                                                   the log and the MLflow run, never raised.
                                                   true: raise on such an op. false: fastest
                                                   kernels, cuDNN autotuning on
precision          auto: 32-true                   auto: bf16-mixed (16-mixed without bf16)
num_workers        auto: 0 with < 4 cores, else    auto: cores - 1, at most 8 (persistent,
                   a quarter of them (torch gets   pinned memory)
                   the rest)
channels-last      off                             on for 4-D weights (tensor cores)
=================  ==============================  =====================================
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from visionflow.machine import available_cores

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams

log = logging.getLogger(__name__)

NONDETERMINISTIC_MESSAGE = "does not have a deterministic implementation"
MAX_AUTO_WORKERS = 8
MIN_CORES_FOR_AUTO_WORKERS = 4  # below this a loader process takes a core from the training step


@dataclass(frozen=True)
class Runtime:
    """Concrete settings for Lightning's ``Trainer`` and the data loaders."""

    device_type: str  # "cpu", "cuda" or "mps": what accelerator "auto" found
    deterministic: bool | Literal["warn"]  # Lightning's values: True, False, "warn"
    benchmark: bool  # cuDNN autotuning
    precision: str  # a Lightning precision, never "auto"
    num_workers: int
    pin_memory: bool
    channels_last: bool
    compute_threads: int | None = None  # torch's intra-op threads on a CPU beside loader processes


def device_type(accelerator: str) -> str:
    """``auto`` -> the device Lightning would pick; ``gpu`` -> ``cuda``."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return accelerator


def resolve_runtime(trainer: "TrainerParams", device: str | None = None,
                    cores: int | None = None, bf16_supported: bool | None = None) -> Runtime:
    """What ``trainer`` params mean on this machine (``device``, ``cores`` and
    ``bf16_supported`` override detection, so any machine's answer can be checked anywhere)."""
    device = device or device_type(trainer.accelerator)
    cores = cores or available_cores()
    on_cuda = device == "cuda"

    if trainer.deterministic == "auto":
        deterministic: bool | Literal["warn"] = "warn" if on_cuda else True
    else:
        deterministic = trainer.deterministic

    precision = trainer.precision
    if precision == "auto":
        if on_cuda:
            if bf16_supported is None:
                import torch

                bf16_supported = torch.cuda.is_bf16_supported()
            precision = "bf16-mixed" if bf16_supported else "16-mixed"
        else:
            precision = "32-true"

    workers = trainer.num_workers
    if workers == "auto":
        if on_cuda:  # the GPU steps; the cores load
            workers = min(cores - 1, MAX_AUTO_WORKERS)
        else:  # the cores step too: loading gets a quarter of them
            workers = 0 if cores < MIN_CORES_FOR_AUTO_WORKERS else min(cores // 4, MAX_AUTO_WORKERS)
    workers = max(workers, 0)
    # On a CPU the step and the loader processes share the cores: leave the loaders theirs.
    threads = max(1, cores - workers) if device == "cpu" and workers > 0 else None
    return Runtime(device_type=device, deterministic=deterministic,
                   benchmark=on_cuda and deterministic is False, precision=precision,
                   num_workers=workers, pin_memory=on_cuda, channels_last=on_cuda, compute_threads=threads)


def loader_settings(trainer: "TrainerParams") -> dict[str, int | bool]:
    """``num_workers`` and ``pin_memory`` for a family's data loaders."""
    runtime = resolve_runtime(trainer)
    return {"num_workers": runtime.num_workers, "pin_memory": runtime.pin_memory}


def to_channels_last(module: "torch.nn.Module") -> None:
    """Store 4-D (conv) weights channels-last, in place; convolutions then run NHWC, which tensor
    cores prefer. 5-D weights (3-D convolutions) keep their layout."""
    import torch

    for parameter in module.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)


@contextmanager
def named_nondeterministic_ops() -> Iterator[set[str]]:
    """Collect the ops torch reports as having no deterministic kernel (``deterministic: auto`` on
    CUDA runs with ``warn_only``); each op is logged once, and the yielded set names them all."""
    import warnings

    found: set[str] = set()
    show = warnings.showwarning

    def record(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
               line: str | None = None) -> None:
        text = str(message)
        if NONDETERMINISTIC_MESSAGE not in text:
            show(message, category, filename, lineno, file, line)
            return
        op = text.split(NONDETERMINISTIC_MESSAGE)[0].strip() or "unknown op"
        if op not in found:
            found.add(op)
            log.warning("%s has no deterministic CUDA kernel: this run is not bit-reproducible "
                        "(trainer.deterministic: true would stop here instead)", op)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=f".*{NONDETERMINISTIC_MESSAGE}.*")
        warnings.showwarning = record
        yield found
