"""Model files are read as tensors only, through one helper; bad ones are one clear line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_params_dict
from visionflow.cli import main
from visionflow.config import parse_params
from visionflow.models.checkpoints import TASK_KEY, CheckpointError, load_weights
from visionflow.tasks import get_task, task_names

HELPER = Path("models/checkpoints.py")


def _loads(tree: ast.AST) -> list[ast.Call]:
    """``torch.load(...)``, ``<anything>.load_from_checkpoint(...)`` and Lightning's
    ``fit(..., ckpt_path=...)`` (a resume) without ``weights_only=True``."""
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "load_from_checkpoint":
            calls.append(node)
        elif any(k.arg == "ckpt_path" for k in node.keywords) and not any(
                k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords):
            calls.append(node)
        elif isinstance(func, ast.Attribute) and func.attr == "load" and \
                isinstance(func.value, ast.Name) and func.value.id == "torch":
            calls.append(node)
    return calls


def test_every_model_file_is_read_through_the_one_helper():
    package = REPO / "src" / "visionflow"
    found = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        calls = _loads(ast.parse(path.read_text()))
        if relative == HELPER:
            continue
        if calls:
            found[str(relative)] = [call.lineno for call in calls]
    assert found == {}, f"load model files with visionflow.models.checkpoints, not: {found}"


class RunsCode:
    """Unpickled, it creates ``marker``: what a crafted checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("task", task_names())
def test_a_crafted_checkpoint_runs_no_code_even_when_torch_is_told_to(task, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"model": RunsCode(marker)}}, checkpoint)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        get_task(task).load_module(checkpoint)
    assert not marker.exists()


def _module_checkpoint(task: str, path: Path, drop: tuple[str, ...] = (), marker: bool = True) -> Path:
    """A checkpoint as ``Trainer.fit`` writes it, of an untrained tiny ``task`` module."""
    from types import SimpleNamespace

    params = parse_params(tiny_params_dict())
    section = params.task(task)
    family = get_task(task)
    if task in ("detection", "instance_segmentation"):
        data = SimpleNamespace(class_names=["circle", "square"], image_size=64, val_ground_truth=None,
                               category_ids=[3, 7])
    else:
        data = SimpleNamespace(class_names=["background", "circle", "square"])
    if task == "pose":
        from visionflow.tasks.pose.data import KeypointSchema

        data.schema = KeypointSchema(1, "figure", ("a", "b"), ((0, 1),), (1, 0), "names")
    module = family.module(section, data)
    hparams = {k: v for k, v in dict(module.hparams).items() if k not in drop}
    payload = {"state_dict": module.state_dict(), "hyper_parameters": hparams}
    if marker:
        payload[TASK_KEY] = task
    torch.save(payload, path)
    return path


def _predict(tmp_path: Path, monkeypatch, capsys, task: str, checkpoint: Path) -> tuple[int, list[str]]:
    from visionflow.data.images import write_png
    import numpy as np

    monkeypatch.chdir(tmp_path)  # an empty folder: no params.yaml, no data
    write_png(tmp_path / "x.png", np.zeros((64, 64, 3), np.uint8))
    code = main(["predict", "--task", task, "--model", str(checkpoint), "x.png"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def test_detection_predicts_with_the_category_ids_it_was_trained_on(tmp_path, monkeypatch, capsys):
    checkpoint = _module_checkpoint("detection", tmp_path / "det.ckpt")
    detector = get_task("detection").inference_module(get_task("detection").load_module(checkpoint))
    assert detector.category_ids == [3, 7] and detector.class_names == ["circle", "square"]
    code, lines = _predict(tmp_path, monkeypatch, capsys, "detection", checkpoint)
    assert code == 0, lines


@pytest.mark.parametrize("case", ["other-family", "other-family-unmarked", "truncated", "not-a-checkpoint",
                                  "old-without-category-ids"])
def test_an_unusable_checkpoint_is_one_line_naming_it(case, tmp_path, monkeypatch, capsys):
    path = tmp_path / "model.ckpt"
    if case == "other-family":
        _module_checkpoint("segmentation", path)
        expected = "a segmentation checkpoint, not detection"
    elif case == "other-family-unmarked":
        _module_checkpoint("segmentation", path, marker=False)
        expected = "detection"
    elif case == "truncated":
        data = _module_checkpoint("detection", path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected = "not a readable checkpoint"
    elif case == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)
        expected = "no 'state_dict'"
    else:
        _module_checkpoint("detection", path, drop=("category_ids",), marker=False)
        expected = "retrain with `visionflow train --task detection`"
    code, lines = _predict(tmp_path, monkeypatch, capsys, "detection", path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("visionflow: error: ") and str(path) in lines[0], lines[0]
    assert expected in lines[0], lines[0]


def test_load_weights_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt: checkpoint not found"):
        load_weights(tmp_path / "nothing.pt")
