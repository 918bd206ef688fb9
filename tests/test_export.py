"""ONNX export: onnxruntime agrees with PyTorch, at other batch and image sizes too, and the
evaluate stage scores the ONNX copy with the family's own metric (issue 31)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionflow.export import OnnxNetwork, export_onnx, onnx_parity
from visionflow.models.unet import UNet
from visionflow.tasks import get_task, task_names
from visionflow.tasks.base import EvalOutputs, ExportedModel


def tiny_unet_export() -> ExportedModel:
    torch.manual_seed(0)
    net = UNet(3, channels=(4, 8), dilations=(1,)).eval()
    example = torch.rand(2, 3, 32, 32).numpy()
    return ExportedModel(net, example, (-1, 3, -1, -1), (-1, 3, -1, -1))


def test_onnx_matches_torch_on_two_batch_sizes_and_another_image_size(tmp_path):
    exported = tiny_unet_export()
    written = export_onnx(exported, tmp_path / "unet.onnx")
    assert written.exporter in ("dynamo", "torchscript") and written.path.is_file()
    network = OnnxNetwork(written.path, reference=exported.module)
    for shape in [(1, 3, 32, 32), (3, 3, 32, 32), (2, 3, 48, 64)]:
        x = torch.rand(shape)
        got = network(x)
        with torch.no_grad():
            want = exported.module(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    assert network.calls == 3 and network.max_abs_diff < 1e-4


def test_the_onnx_file_holds_no_source_paths_so_any_checkout_writes_the_same_bytes(tmp_path):
    written = export_onnx(tiny_unet_export(), tmp_path / "unet.onnx")
    assert written.exporter == "dynamo"
    assert b"models/unet.py" not in written.path.read_bytes()


def test_a_module_the_family_marks_as_failing_dynamo_goes_to_the_tracer(tmp_path):
    import dataclasses

    exported = dataclasses.replace(tiny_unet_export(), dynamo_fails="the dynamo exporter fails on it")
    written = export_onnx(exported, tmp_path / "unet.onnx")
    assert written.exporter == "torchscript"
    assert written.dynamo_error == "not tried: the dynamo exporter fails on it"
    x = torch.rand(2, 3, 40, 24)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxNetwork(written.path)(x).numpy(), exported.module(x).numpy(), atol=1e-4)


def test_under_another_torch_release_the_family_note_is_not_trusted_and_dynamo_is_tried(tmp_path, monkeypatch):
    import dataclasses

    from visionflow import export

    monkeypatch.setattr(export, "DYNAMO_FAILS_SEEN_WITH", "1.0")
    exported = dataclasses.replace(tiny_unet_export(), dynamo_fails="the dynamo exporter fails on it")
    written = export_onnx(exported, tmp_path / "unet.onnx")
    assert written.exporter == "dynamo" and written.dynamo_error is None


def test_the_dynamo_notes_describe_the_torch_release_that_runs():
    from visionflow import export

    assert export._torch_release() == export.DYNAMO_FAILS_SEEN_WITH, (
        "torch changed: run each family's export without its dynamo_fails note, keep the notes that "
        "still hold and set DYNAMO_FAILS_SEEN_WITH")


class _CannotSwap:
    """A family whose network exports but that cannot evaluate an exported copy."""

    primary_metric = "mIoU"

    def load_module(self, checkpoint):
        return None

    def export(self, module, data_root):
        return tiny_unet_export()

    def with_inference_network(self, module, network):
        raise NotImplementedError("task family 'x' cannot evaluate an exported network")


def test_a_family_that_cannot_swap_says_why_in_one_line(tmp_path):
    out = EvalOutputs(tmp_path / "plots", tmp_path / "reports")
    family = _CannotSwap()
    family.inference_module = lambda module: tiny_unet_export().module
    block = onnx_parity(family, None, tmp_path / "best.ckpt", tmp_path, tmp_path / "m.onnx", out,
                        torch.device("cpu"), {"mIoU": 0.5}, 0.005)
    assert block == {"error": "NotImplementedError: task family 'x' cannot evaluate an exported network"}


@pytest.mark.slow
@pytest.mark.parametrize("task", task_names())
def test_evaluate_stage_checks_onnx_parity(task, tmp_path, project_env):
    """One tiny epoch, then the real evaluate stage: its ``onnx`` block, the file, and the
    PyTorch evaluation's pictures left alone by the ONNX one."""
    from test_predict_standalone import train_tiny

    from conftest import tiny_params_dict
    from visionflow.config import parse_params
    from visionflow.paths import TaskPaths
    from visionflow.stages import evaluate

    project = tmp_path / "project"
    train_tiny(task, project)
    params = parse_params(tiny_params_dict(tasks=[task]))
    metrics = evaluate.run(params, task, project)
    paths = TaskPaths(task, project)
    block = metrics["onnx"]
    assert "error" not in block, block
    assert block["passed"], block
    assert paths.onnx_model.is_file()
    assert json.loads(paths.metrics.read_text())["onnx"] == block
    # the ONNX evaluation's pictures go to scratch, not over the PyTorch evaluation's outs
    assert paths.onnx_scratch.is_dir() and any(paths.eval_reports.iterdir())
    assert get_task(task).primary_metric in block


def test_reading_as_hides_a_read_only_property():
    from visionflow.tasks.base import reading_as

    class WithDetector(torch.nn.Module):
        @property
        def detector(self) -> torch.nn.Module:
            return torch.nn.Identity()

    module, replacement = WithDetector(), torch.nn.ReLU()
    module.detector = replacement  # what a plain assignment does: the property still wins
    assert not isinstance(module.detector, torch.nn.ReLU)
    assert reading_as(module, "detector", replacement).detector is replacement
    assert isinstance(module, WithDetector) and not isinstance(WithDetector().detector, torch.nn.ReLU)


@pytest.mark.slow
def test_export_command_writes_onnx_of_a_checkpoint(tmp_path, project_env, capsys):
    from test_predict_standalone import train_tiny

    from conftest import tiny_params_dict, write_project_params
    from visionflow.cli import main

    project = tmp_path / "project"
    checkpoint = train_tiny("segmentation", project)
    write_project_params(project, tiny_params_dict(tasks=["segmentation"]))
    out = tmp_path / "segmentation.onnx"
    assert main(["--params", str(project / "params.yaml"), "export", "--task", "segmentation",
                 "--model", str(checkpoint), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["onnx"] == str(out)
    classes = len(get_task("segmentation").load_module(checkpoint).class_names)
    assert OnnxNetwork(out)(torch.rand(3, 3, 40, 56)).shape == (3, classes, 40, 56)
