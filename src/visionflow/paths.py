"""Where every stage reads and writes, relative to the project root.

The one place paths are spelled: ``visionflow dag`` (:mod:`visionflow.dag`) writes
them into ``dvc.yaml`` as the stages' outs and deps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import overload

RAW_DIR = Path("data/raw")
RAW_MANIFEST = RAW_DIR / "manifest.json"
MLFLOW_DB = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlartifacts")
SCRATCH_DIR = Path(".cache")


class _ProjectPath:
    """A :class:`TaskPaths` attribute: ``template``, a path relative to the project root in which
    ``{task}`` stands for the family's name, resolved under the instance's ``root``.
    ``folder / "name"`` is the template of a file in the folder."""

    def __init__(self, template: str, doc: str = ""):
        self.template = template
        self.__doc__ = doc or f"``<root>/{template}``"

    def __truediv__(self, name: str) -> _ProjectPath:
        return _ProjectPath(f"{self.template}/{name}")

    def files(self, *names: str) -> tuple[_ProjectPath, ...]:
        """``folder / name`` for each name: a folder's files declared in one line."""
        return tuple(self / name for name in names)

    @overload
    def __get__(self, paths: None, owner: type) -> _ProjectPath: ...
    @overload
    def __get__(self, paths: TaskPaths, owner: type) -> Path: ...

    def __get__(self, paths: TaskPaths | None, owner: type) -> Path | _ProjectPath:
        return self if paths is None else paths.root / self.template.format(task=paths.task)


@dataclass(frozen=True)
class TaskPaths:
    """One task family's files. All paths are relative to ``root`` once resolved."""

    task: str
    root: Path = Path(".")

    # Each folder once, then the files the stages write in it.
    synthetic = _ProjectPath("data/synthetic/{task}")
    synthetic_manifest = _ProjectPath(
        "data/synthetic/{task}.json",
        """File count and content digest of :attr:`synthetic`, written by synthesize. The stages
        after it depend on this small file instead of the folder, so that DVC walks the folder's
        thousands of files once per ``dvc repro`` (as synthesize's output), not once per stage.""")
    metrics = _ProjectPath("metrics/{task}.json")
    models = _ProjectPath("models/{task}")
    best_checkpoint, last_checkpoint, train_summary, registered = models.files(
        "best.ckpt", "last.ckpt", "train.json", "registered.json")
    onnx_dir = _ProjectPath(
        "models/{task}/onnx",
        """Evaluate's ONNX export (metrics' ``onnx`` holds its parity check): ``model.onnx``, or
        ``error.txt`` saying why the network did not export (a folder, so the out always exists).""")
    onnx_model, onnx_error = onnx_dir.files("model.onnx", "error.txt")
    plots = _ProjectPath("plots/{task}")
    train_curves_csv, eval_plots = plots.files("train.csv", "eval")
    reports = _ProjectPath("reports/{task}")
    augment_preview, augment_check, train_curves_png, eval_reports = reports.files(
        "augment.png", "augment.json", "curves.png", "eval")
    pretrained_dir = _ProjectPath(
        "pretrained/{task}",
        """What this family's training starts from: a folder in git (so DVC can always depend on
        it) that the ``pretrained-<task>`` stage fills when params.yaml's ``pretrained`` names one.""")
    pretrained_backbone = pretrained_dir / "backbone.pt"
    onnx_scratch = _ProjectPath(
        f"{SCRATCH_DIR.as_posix()}/onnx/{{task}}",
        "Pictures of the ONNX parity evaluation: kept apart from the PyTorch evaluation's outs.")
    train_scratch = _ProjectPath(
        f"{SCRATCH_DIR.as_posix()}/train/{{task}}",
        "Resumable checkpoints of unfinished runs, keyed by a hash of what they depend on.")

    def data_root(self, source: str) -> Path:
        """The COCO-layout dataset a family reads: its synthetic set or an acquired one."""
        return self.synthetic if source == "synthetic" else self.root / RAW_DIR / source

    def dataset_manifest(self, source: str) -> Path:
        """The small file DVC tracks for :meth:`data_root`'s content: its digest names the data."""
        return self.synthetic_manifest if source == "synthetic" else self.root / RAW_MANIFEST


def read_stage_json(path: Path, produced_by: str) -> dict:
    """A JSON file an earlier stage wrote; missing: an error naming the command that writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `visionflow {produced_by}` first")
    return json.loads(path.read_text())
