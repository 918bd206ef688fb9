"""ONNX export of a family's inference network and a parity check against PyTorch.

:func:`export_onnx` writes an :class:`~visionflow.tasks.base.ExportedModel` as ONNX, trying
the dynamo exporter (``torch.export``) first and the TorchScript tracer second; the dims the
model's signature leaves free (-1) stay free in the ONNX graph. :class:`OnnxNetwork` runs the
file in onnxruntime behind an ``nn.Module`` so a family's own evaluation code can score it
(:meth:`~visionflow.tasks.base.TaskFamily.with_inference_network`); :func:`onnx_parity` does
that and compares the metric with PyTorch's. Knows no family by name and nothing of MLflow.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from visionflow.tasks.base import EvalOutputs, ExportedModel, TaskFamily

INPUT_NAME = "images"
OPSET = 17  # the TorchScript exporter's; the dynamo exporter picks its own (18+)
DIM_NAMES = ("batch", "channels", "height", "width")
# The torch release whose dynamo exporter the families' ``ExportedModel.dynamo_fails`` describe
# (constraints.txt pins it). Under any other release export tries dynamo again: a newer exporter
# may handle those networks, and a failure costs one attempt, named in ``dynamo_error``.
DYNAMO_FAILS_SEEN_WITH = "2.14"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # node metadata the dynamo exporter writes


@dataclass(frozen=True)
class OnnxExport:
    """Where the ONNX file went and which exporter wrote it (``dynamo`` or ``torchscript``);
    ``dynamo_error``: why the dynamo exporter was not used (first line), if it was not;
    ``dynamic_batch``: False where the graph takes one image per run (a trace that baked the
    example's batch size in: :class:`OnnxNetwork` then runs a batch image by image)."""

    path: Path
    exporter: str
    dynamo_error: str | None = None
    dynamic_batch: bool = True


def _free_dims(exported: "ExportedModel") -> list[int]:
    return [i for i, size in enumerate(exported.input_shape) if size == -1]


def _dim_name(i: int) -> str:
    return DIM_NAMES[i] if i < len(DIM_NAMES) else f"dim{i}"


def _first_line(exc: BaseException) -> str:
    """The root cause's type and first line (the exporters wrap it in step-by-step advice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def export_onnx(exported: "ExportedModel", path: Path) -> OnnxExport:
    """Write ``exported.module`` to ``path`` as ONNX with input ``images`` and the free dims of
    ``exported.input_shape`` dynamic; the file must load in onnxruntime and run the example.

    The dynamo exporter first; where it fails (or writes a graph onnxruntime rejects), the
    TorchScript tracer, whose graph holds whatever branches the example took. Raises the
    tracer's error when both fail. A model the registry stores as ``pickle`` is one that
    torch.export cannot trace, and ``exported.dynamo_fails`` names one the dynamo exporter of
    torch :data:`DYNAMO_FAILS_SEEN_WITH` fails on: both go to the tracer directly (a failed
    dynamo attempt takes up to minutes on a CPU).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = exported.module.eval()
    example = torch.from_numpy(np.ascontiguousarray(exported.example, dtype=np.float32))
    free = _free_dims(exported)
    if exported.serialization_format == "pickle":
        dynamo_error = "not tried: torch.export cannot trace this model (the registry pickles it)"
    elif exported.dynamo_fails and _torch_release() == DYNAMO_FAILS_SEEN_WITH:
        dynamo_error = f"not tried: {exported.dynamo_fails}"
    else:
        dynamo_error = _dynamo(module, example, path, free)
    if dynamo_error is None:
        return OnnxExport(path, "dynamo")
    _trace(module, example, path, free)
    if 0 in free and not _runs_other_batches(path, example):
        # The trace baked the example's batch in (Mask R-CNN splits its batch per image):
        # a graph for one image, that OnnxNetwork runs once per image.
        _trace(module, example[:1], path, [i for i in free if i != 0])
        OnnxNetwork(path)(example)
        return OnnxExport(path, "torchscript", dynamo_error, dynamic_batch=False)
    return OnnxExport(path, "torchscript", dynamo_error)


def _torch_release() -> str:
    """``major.minor`` of the running torch (``"2.14"`` for ``2.14.1+cu130``)."""
    return ".".join(torch.__version__.split(".")[:2])


def _dynamo(module: nn.Module, example: torch.Tensor, path: Path, free: list[int]) -> str | None:
    """Export with torch.export; None on success, else why not (one line)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        dynamic_shapes=({i: torch.export.Dim.DYNAMIC for i in free},),
                                        verbose=False, report=False)
        _drop_stack_traces(program.model)
        program.save(str(path), external_data=True)
        OnnxNetwork(path)(example)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the tracer
        return _first_line(exc)
    return None


def _drop_stack_traces(model: Any) -> None:
    """Remove the Python stack trace the dynamo exporter records on each node of ``model`` (an
    ``onnx_ir.Model``): it holds absolute source paths, so the file would differ from one
    checkout folder to another and tell the model's users where it was exported."""
    from onnx_ir.traversal import RecursiveGraphIterator

    for graph in (model.graph, *model.functions.values()):
        for node in RecursiveGraphIterator(graph):
            node.metadata_props.pop(STACK_TRACE_KEY, None)


def _trace(module: nn.Module, example: torch.Tensor, path: Path, free: list[int]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=["output"], opset_version=OPSET,
                          dynamic_axes={INPUT_NAME: {i: _dim_name(i) for i in free}})
    OnnxNetwork(path)(example)


def _runs_other_batches(path: Path, example: torch.Tensor) -> bool:
    network = OnnxNetwork(path)
    try:
        network(example[:1])
        network(torch.cat([example, example[:1]]))
    except Exception:  # noqa: BLE001 - onnxruntime's errors have no common type
        return False
    return True


class OnnxNetwork(nn.Module):
    """An ONNX file run by onnxruntime (CPU), callable like the network it was exported from.

    ``forward(x)``: float32 ``x`` of the exported input's shape -> the model's output as a CPU
    float tensor moved to ``x``'s device (a tuple where the graph has several outputs). With a
    ``reference`` network, every call also runs it on ``x`` and keeps the largest absolute
    difference between the two in :attr:`max_abs_diff` (NaN where shapes differ).
    """

    def __init__(self, path: Path, reference: nn.Module | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.one_image_per_run = batch == 1  # a graph with a fixed batch of 1 (see export_onnx)
        self.reference = [reference] if reference is not None else []  # a list: not a submodule
        self.max_abs_diff = 0.0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        runs = ([self.session.run(None, {self.input_name: array[i:i + 1]}) for i in range(len(array))]
                if self.one_image_per_run else [self.session.run(None, {self.input_name: array})])
        outputs = [torch.from_numpy(np.concatenate(parts)).to(x.device) for parts in zip(*runs)]
        if self.reference:
            with torch.no_grad():
                expected = self.reference[0](x)
            expected = expected if isinstance(expected, (tuple, list)) else (expected,)
            for got, want in zip(outputs, expected):
                diff = (float((got.float() - want.float()).abs().max()) if got.shape == want.shape and got.numel()
                        else (0.0 if got.shape == want.shape else math.nan))
                self.max_abs_diff = max(self.max_abs_diff, diff) if not math.isnan(diff) else math.nan
        self.calls += 1
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def onnx_parity(family: "TaskFamily", params: Any, checkpoint: Path, data_root: Path, onnx_path: Path,
                out: "EvalOutputs", device: torch.device, torch_metrics: dict[str, Any],
                tolerance: float) -> dict[str, Any]:
    """Export ``checkpoint``'s inference network to ``onnx_path`` and evaluate again with it.

    The family's own ``evaluate`` scores the ONNX outputs (its network swapped by
    :meth:`~visionflow.tasks.base.TaskFamily.with_inference_network`), writing its pictures
    into ``out`` (a scratch folder, not the stage's). Returns ``exporter``, ``max_abs_diff``
    (ONNX vs PyTorch over every input the evaluation ran), the primary metric from ONNX, its
    relative difference to ``torch_metrics``'s, ``tolerance`` and ``passed``; or
    ``{"error": "<one line>"}`` when the network does not export or the family cannot swap it.
    """
    key = family.primary_metric
    try:
        module = family.load_module(checkpoint)
        written = export_onnx(family.export(module, data_root), onnx_path)
        reference = family.inference_module(family.load_module(checkpoint)).to(device).eval()
        network = OnnxNetwork(written.path, reference=reference)
        swapped = family.with_inference_network(family.load_module(checkpoint), network)
        metrics = family.evaluate(family.parity_params(params), swapped, data_root, out, device)
    except Exception as exc:  # noqa: BLE001 - one line in the metrics instead of a failed stage
        return {"error": _first_line(exc)}
    if network.calls == 0:  # a swap that did not take would score PyTorch twice and pass
        return {"error": f"{family.name}'s evaluate never ran the ONNX network: with_inference_network "
                         f"did not replace the network it calls"}
    from_torch, from_onnx = _number(torch_metrics, key), _number(metrics, key)
    if from_torch is None or from_onnx is None:
        relative = math.nan
    else:
        relative = abs(from_onnx - from_torch) / max(abs(from_torch), 1e-12)
    block: dict[str, Any] = {"exporter": written.exporter, "dynamic_batch": written.dynamic_batch,
                             "max_abs_diff": None if math.isnan(network.max_abs_diff) else network.max_abs_diff,
                             key: from_onnx, f"{key}_relative_difference": None if math.isnan(relative) else relative,
                             "tolerance": tolerance, "passed": bool(relative <= tolerance)}
    if written.dynamo_error:
        block["dynamo_error"] = written.dynamo_error
    return block
