"""What the trainer is given on a CPU and on CUDA: determinism, precision, loaders (no GPU needed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from visionflow.config import ConfigError, TrainerParams, parse_params
from visionflow.runtime import named_nondeterministic_ops, resolve_runtime, to_channels_last
from visionflow.training import ChannelsLast, build_trainer

from conftest import tiny_params_dict


def test_auto_on_a_cpu_is_exact_full_precision_and_loads_in_process():
    runtime = resolve_runtime(TrainerParams(), device="cpu", cores=2)
    assert (runtime.deterministic, runtime.benchmark, runtime.precision) == (True, False, "32-true")
    assert (runtime.num_workers, runtime.pin_memory, runtime.channels_last) == (0, False, False)
    # With cores to spare, loading moves to worker processes.
    sixteen = resolve_runtime(TrainerParams(), device="cpu", cores=16)
    assert (sixteen.num_workers, sixteen.compute_threads) == (4, 12)
    assert resolve_runtime(TrainerParams(), device="cpu", cores=6).num_workers == 1


def test_auto_on_cuda_never_raises_for_determinism_and_uses_the_gpu_well():
    runtime = resolve_runtime(TrainerParams(), device="cuda", cores=16, bf16_supported=True)
    assert runtime.deterministic == "warn"  # deterministic kernels where they exist; others are named
    assert (runtime.benchmark, runtime.precision) == (False, "bf16-mixed")
    assert (runtime.num_workers, runtime.pin_memory, runtime.channels_last) == (8, True, True)
    assert resolve_runtime(TrainerParams(), device="cuda", cores=16, bf16_supported=False).precision == "16-mixed"
    # Even a 2-core GPU machine loads in a worker: the GPU, not the CPU, does the step.
    assert resolve_runtime(TrainerParams(), device="cuda", cores=2, bf16_supported=True).num_workers == 1


def test_explicit_values_win():
    fastest = resolve_runtime(TrainerParams(deterministic=False, precision="16-mixed", num_workers=3),
                              device="cuda", cores=16)
    assert (fastest.deterministic, fastest.benchmark, fastest.precision, fastest.num_workers) == \
        (False, True, "16-mixed", 3)
    strict = resolve_runtime(TrainerParams(deterministic=True), device="cuda", cores=16, bf16_supported=True)
    assert (strict.deterministic, strict.benchmark) == (True, False)  # raises on an op without a kernel
    assert resolve_runtime(TrainerParams(deterministic=False), device="cpu", cores=2).benchmark is False


@pytest.mark.parametrize("deterministic, enabled, warn_only", [
    (True, True, False), ("warn", True, True), (False, False, False)])
def test_the_trainer_sets_torch_to_what_the_runtime_says(tmp_path, deterministic, enabled, warn_only):
    runtime = resolve_runtime(TrainerParams(accelerator="cpu"), device="cpu", cores=2)
    runtime = type(runtime)(**{**vars(runtime), "deterministic": deterministic})
    try:
        build_trainer(TrainerParams(accelerator="cpu", progress_bar=False), 1, tmp_path, [], runtime)
        assert torch.are_deterministic_algorithms_enabled() is enabled
        assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
    finally:
        torch.use_deterministic_algorithms(False)


def test_channels_last_is_added_on_cuda_only(tmp_path):
    cpu = resolve_runtime(TrainerParams(accelerator="cpu"), device="cpu", cores=2)
    trainer = build_trainer(TrainerParams(accelerator="cpu", progress_bar=False), 1, tmp_path, [], cpu)
    assert not any(isinstance(c, ChannelsLast) for c in trainer.callbacks)
    torch.use_deterministic_algorithms(False)
    conv, conv3d = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv3d(8, 4, 3)
    image = torch.rand(2, 3, 8, 8)
    before = conv(image)
    to_channels_last(torch.nn.ModuleList([conv, conv3d]))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv3d.weight.is_contiguous()  # 5-D weights keep their layout
    torch.testing.assert_close(conv(image), before)  # same numbers, another layout


def test_ops_without_a_deterministic_kernel_are_named_once_and_other_warnings_pass():
    message = ("nll_loss2d_forward_out_cuda_template does not have a deterministic implementation, but you "
               "set 'torch.use_deterministic_algorithms(True, warn_only=True)'.")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with named_nondeterministic_ops() as ops:
            for _ in range(3):
                warnings.warn(message, UserWarning)
            warnings.warn("something else", UserWarning)
    assert ops == {"nll_loss2d_forward_out_cuda_template"}
    assert [str(w.message) for w in shown] == ["something else"]


@pytest.mark.parametrize("key, value, error", [
    ("deterministic", "sometimes", "trainer.deterministic"),
    ("precision", "8-bit", "trainer.precision"),
    ("num_workers", -1, "trainer.num_workers"),
])
def test_trainer_keys_reject_bad_values_naming_the_key(key, value, error):
    params = tiny_params_dict()
    params["trainer"][key] = value
    with pytest.raises(ConfigError, match=error):
        parse_params(params)
