"""What a task family provides to the generic stages.

A family is the only place that knows its task: its data, its model, its
metrics. The stages (``visionflow.stages``) do the rest the same way for all:
files, MLflow runs, checkpoints, resume, registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import lightning as L
    import numpy as np
    import torch
    from pydantic import BaseModel

    from visionflow.config import TrainerParams


def output_stems(inputs: list[Path]) -> list[str]:
    """One distinct file-name stem per input, for predict's outputs.

    The input's stem where that is unique; where stems collide (``a/x.png``, ``b/x.png``),
    the path below the inputs' common folder joined with ``__`` (``a__x``, ``b__x``); a file
    given twice gets ``-2``, ``-3``.
    """
    import os

    stems = [Path(p).stem for p in inputs]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [Path(p).resolve() for p in inputs]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    clashing = {s for s in stems if stems.count(s) > 1}
    named = ["__".join(p.relative_to(common).with_suffix("").parts) if s in clashing else s
             for p, s in zip(resolved, stems)]
    seen: dict[str, int] = {}
    unique = []
    for name in named:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def reading_as(module: Any, name: str, value: Any) -> Any:
    """``module`` (changed in place) whose attribute ``name`` now reads ``value``, also where
    ``name`` is a read-only property (``detector``, ``predictor``) that assigning would not hide:
    the instance gets a subclass of its class with that property."""
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {name: property(lambda self: value),
                                                    "__module__": cls.__module__})
    return module


@dataclass(frozen=True)
class EvalOutputs:
    """Where ``evaluate`` writes besides the returned metrics."""

    plots_dir: Path  # CSV/JSON curves for ``dvc plots``
    reports_dir: Path  # PNG images for people
    project_root: Path = Path(".")  # for families that read another family's outputs (models/<task>/)


@dataclass(frozen=True)
class ExportedModel:
    """A plain ``nn.Module`` for the registry and an input that exercises it.

    ``example``: float32 array shaped like one batch of the module's input, with a
    batch of 2 or more (torch.export pins a dimension whose example size is 1);
    ``input_shape`` / ``output_shape``: the signature's shapes, -1 for free dims;
    ``serialization_format``: how MLflow stores it, ``"pt2"`` (torch.export) or ``"pickle"``
    for modules torch.export cannot trace (data-dependent shapes such as NMS);
    ``dynamo_fails``: why the dynamo ONNX exporter fails on this module, where the family knows
    it does (the ONNX export then goes to the TorchScript tracer directly: a failed dynamo
    attempt takes up to minutes on a CPU).
    """

    module: "torch.nn.Module"
    example: "np.ndarray"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    serialization_format: str = "pt2"
    dynamo_fails: str | None = None


@dataclass(frozen=True)
class Headline:
    """One number a family is judged by.

    ``key``/``baseline``: dotted paths into the family's ``metrics/<task>.json``
    (``"random_init.linear_probe_accuracy"``); ``target``: the floor (or ceiling when lower is
    better) the default pipeline must meet, None if the number is shown for context only.
    """

    key: str
    label: str
    target: float | None = None
    higher_is_better: bool = True
    baseline: str | None = None
    baseline_label: str = ""


class TaskFamily(ABC):
    """One task family. Subclasses register with ``@register_task``."""

    name: ClassVar[str]
    # The schema of the family's params.yaml section (``tasks/<family>/params.py``); every key required.
    params_model: ClassVar[type["BaseModel"]]
    primary_metric: ClassVar[str]  # key of evaluate()'s metrics that decides the champion
    higher_is_better: ClassVar[bool] = True
    monitor: ClassVar[str]  # logged validation metric that picks the best checkpoint
    monitor_mode: ClassVar[str] = "max"
    headlines: ClassVar[tuple[Headline, ...]] = ()  # what the report and `visionflow summary` show

    @abstractmethod
    def synthesize(self, params: Any, out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict[str, Any]:
        """Write the family's synthetic dataset into ``out_dir`` with ``workers`` render processes
        (None: every core; the files must not depend on it); return counts."""

    @abstractmethod
    def augment_preview(self, params: Any, data_root: Path, preview_png: Path) -> dict[str, Any]:
        """Write a before/after grid; check labels follow images; return the check's numbers."""

    @abstractmethod
    def datamodule(self, params: Any, data_root: Path, trainer: "TrainerParams") -> Any:
        """An object with ``train_dataloader()`` and ``val_dataloader()`` (Lightning calls
        nothing else on it; a plain class keeps Lightning out of the data stages)."""

    @abstractmethod
    def module(self, params: Any, datamodule: Any) -> "L.LightningModule":
        ...

    @abstractmethod
    def load_module(self, checkpoint: Path) -> Any:
        """The trained model for inference, as ``evaluate`` and ``export`` take it.

        Read through :mod:`visionflow.models.checkpoints` (``weights_only=True``, never
        Lightning's ``load_from_checkpoint``); a checkpoint of another family, a truncated
        one, or one without what the family needs is a ``CheckpointError`` naming the file.
        """

    @abstractmethod
    def inference_module(self, module: Any) -> "torch.nn.Module":
        """The plain ``nn.Module`` that ``predict`` runs and ``export`` registers, in eval mode.

        Built from ``module`` alone: everything it needs (class names, category ids, crop
        size, disparity range) is saved in the checkpoint, so predicting needs no dataset.
        """

    @abstractmethod
    def evaluate(self, params: Any, module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict[str, Any]:
        """Score the test split; write plots and reports; return metrics (with primary_metric)."""

    @abstractmethod
    def export(self, module: Any, data_root: Path) -> ExportedModel:
        ...

    def with_inference_network(self, module: Any, network: "torch.nn.Module") -> Any:
        """``module`` (from :meth:`load_module`) with ``network`` in place of
        :meth:`inference_module`'s network, so that :meth:`evaluate` scores ``network``'s
        outputs (an ONNX copy run by onnxruntime: :mod:`visionflow.export`). May change
        ``module`` in place: pass a freshly loaded one. Default: the family cannot.
        """
        raise NotImplementedError(f"task family {self.name!r} cannot evaluate an exported network")

    def parity_params(self, params: Any) -> Any:
        """``params`` for the export parity evaluation: families drop work there that does not
        run the exported network (a training run, another baseline). Default: unchanged."""
        return params

    def start_from_backbone(self, module: "L.LightningModule", backbone: Path) -> None:
        """Load a pretrained backbone file into ``module``'s encoder before training (in place).

        Must fail loudly (``models.backbones.BackboneMismatchError``) on weights that do
        not fit. Families whose model has no shared encoder keep this default.
        """
        raise NotImplementedError(f"task family {self.name!r} cannot start from a pretrained backbone; "
                                  f"remove pretrained.{self.name} from params.yaml")

    def upstream(self, params: Any) -> dict[str, list[str]]:
        """Inputs this family's stages read from other families, for ``params`` (its section).

        Stage (``"evaluate"``) -> paths relative to the project root that ``dvc.yaml`` adds to
        that stage's deps: another family's outputs (``models/<family>/best.ckpt``), or code the
        stage runs without importing it (a path under ``src/visionflow/``: that code and its
        imports). Default: none.
        """
        return {}

    def predict(self, model: "torch.nn.Module", inputs: list[Path], out_dir: Path,
                device: "torch.device") -> list[Path]:
        """Run an exported model (``export().module`` or its MLflow-logged copy) on user files.

        Writes results into ``out_dir`` and returns the written paths. ``visionflow predict``
        calls this with a checkpoint or a ``models:/name@alias`` URI resolved to that module.
        """
        raise NotImplementedError(f"task family {self.name!r} has no predict yet")

    # What ``answer`` reads from a request: one image, or named images (stereo: "left", "right").
    request_images: ClassVar[tuple[str, ...]] = ("image",)

    def answer(self, model: "torch.nn.Module", images: dict[str, "np.ndarray"], device: "torch.device",
               **options: Any) -> dict[str, Any]:
        """The served endpoint's answer (``visionflow serve``): ``model``'s output for one request, as JSON.

        ``images``: uint8 ``(H, W, 3)`` RGB under each name of ``request_images``. Computed by the
        same code as ``predict``; an input the family cannot take raises ``ImageReadError``.
        """
        raise NotImplementedError(f"task family {self.name!r} has no served endpoint")
