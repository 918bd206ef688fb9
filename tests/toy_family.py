"""``toy``: a complete task family in one file, the example ``docs/adding-a-family.md`` points to.

Tiny images of one random colour plus noise, labelled ``dark`` or ``bright`` by their mean
brightness; a linear layer on the mean colour classifies them. Small enough to run every stage
in seconds, but real: it writes a dataset, trains through the generic Lightning stage, saves and
reloads a checkpoint weights-only, evaluates (also the ONNX copy), exports and answers requests.

A family inside ``src/visionflow/tasks/`` is a package (``params.py``, ``__init__.py`` with the
registered class, ``data.py``, ``module.py``, ``evaluate.py``, ``predict.py``); this one keeps
those parts in one module. Importing it registers nothing: tests call
``register_task(Toy)`` on a patched registry (``tests/test_toy_family.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from visionflow.config import DataParams, EvaluateParams, OptimParams, RegisterParams, Strict, TransformSpec
from visionflow.models.checkpoints import build_from_checkpoint
from visionflow.tasks.base import EvalOutputs, ExportedModel, Headline, TaskFamily, output_stems
from visionflow.tasks.lightning_base import TaskModule, saved_section

CLASS_NAMES = ("dark", "bright")
SPLITS = ("train", "val", "test")


# --- params.py: the family's section of params.yaml; every key required ---------------------------

class ToySynthParams(Strict):
    seed: int
    splits: dict[Literal["train", "val", "test"], int]
    image_size: int = Field(ge=2)
    margin: float = Field(ge=0, lt=0.5)  # no image's brightness lies within this of 0.5
    noise_std: float = Field(ge=0)  # per-pixel noise, in [0, 255] units


class ToyModelParams(Strict):
    hidden: int = Field(ge=0)  # 0: one linear layer on the mean colour


class ToyEvaluateParams(EvaluateParams):
    onnx_tolerance: float = Field(gt=0)  # the evaluate stage's ONNX parity check reads it


class ToyParams(Strict):
    synth: ToySynthParams
    data: DataParams
    augment: list[TransformSpec]
    model: ToyModelParams
    train: OptimParams
    evaluate: ToyEvaluateParams
    registry: RegisterParams = Field(alias="register")


# --- data.py -----------------------------------------------------------------------------------------

def read_split(data_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, S, S, 3) and int64 labels (N,) of a split that synthesize wrote."""
    from visionflow.data.images import read_rgb

    rows = json.loads((data_root / f"{split}.json").read_text())
    images = np.stack([read_rgb(data_root / row["file"]) for row in rows])
    return images, np.array([row["label"] for row in rows], dtype=np.int64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


class ToyData:
    """Train and val loaders (all Lightning calls); train images go through the augment transforms once."""

    def __init__(self, data_root: Path, params: ToyParams):
        from visionflow.augment import build_transforms

        self.batch_size, self.seed = params.train.batch_size, params.train.seed
        transform = build_transforms(params.augment, "toy.augment", seed=params.train.seed)
        images, self.train_labels = read_split(data_root, "train")
        self.train_images = np.stack([transform(image=image)["image"] for image in images])
        self.val_images, self.val_labels = read_split(data_root, "val")

    def _loader(self, images: np.ndarray, labels: np.ndarray, shuffle: bool) -> torch.utils.data.DataLoader:
        dataset = torch.utils.data.TensorDataset(to_tensor(images), torch.from_numpy(labels))
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_images, self.train_labels, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.val_images, self.val_labels, shuffle=False)


# --- module.py: the plain network and its Lightning wrapper -----------------------------------------

class ToyNet(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> logits (N, 2); carries ``class_names``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = nn.Linear(3, 2) if hidden == 0 else nn.Sequential(nn.Linear(3, hidden), nn.ReLU(),
                                                                      nn.Linear(hidden, 2))
        self.class_names = list(CLASS_NAMES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3)) - 0.5)


class ToyModule(TaskModule):
    task_name = "toy"

    def __init__(self, model: ToyModelParams, optim: OptimParams):
        super().__init__(optim)
        # Plain data only: checkpoints are read weights-only (models.checkpoints).
        self.save_hyperparameters({"class_names": list(CLASS_NAMES), "model": model.model_dump(mode="json"),
                                   "optim": optim.model_dump(mode="json")})
        self.class_names = list(CLASS_NAMES)
        self.net = ToyNet(model.hidden)

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "ToyModule":
        return cls(saved_section(ToyModelParams, saved["model"], "model"),
                   saved_section(OptimParams, saved["optim"], "optim"))

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch
        logits = self.net(images)
        return logits, {"loss": nn.functional.cross_entropy(logits, labels)}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits, losses = self.model_step(batch)
        accuracy = (logits.argmax(1) == batch[1]).float().mean()
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=len(batch[0]))
        self.log("val/accuracy", accuracy, on_epoch=True, batch_size=len(batch[0]))


# --- evaluate.py and predict.py ----------------------------------------------------------------------

@torch.no_grad()
def evaluate_toy(net: nn.Module, data_root: Path, out: EvalOutputs, device: torch.device,
                 params: ToyEvaluateParams) -> dict[str, Any]:
    from visionflow.viz import save_grid

    images, labels = read_split(data_root, "test")
    tensors = to_tensor(images)
    predicted = torch.cat([net(tensors[i:i + params.batch_size].to(device)).argmax(1).cpu()
                           for i in range(0, len(tensors), params.batch_size)]).numpy()
    confusion = np.zeros((2, 2), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    out.plots_dir.mkdir(parents=True, exist_ok=True)
    out.reports_dir.mkdir(parents=True, exist_ok=True)
    (out.plots_dir / "confusion.json").write_text(json.dumps(confusion.tolist()) + "\n")
    # Each overlay: the image beside a tile of the predicted class's colour (dark: black, bright: white).
    shown = range(min(params.overlays, len(images)))
    save_grid(out.reports_dir / "overlays.png",
              [[images[i], np.full_like(images[i], 255 * int(predicted[i]))] for i in shown] or
              [[np.zeros((2, 2, 3), np.uint8)]], scale=8)
    per_class = {name: float(confusion[c, c] / max(confusion[c].sum(), 1)) for c, name in enumerate(CLASS_NAMES)}
    return {"accuracy": float((predicted == labels).mean()), "per_class_recall": per_class,
            "test_images": int(len(labels))}


@torch.no_grad()
def answer_image(model: nn.Module, image: np.ndarray, device: torch.device) -> dict[str, Any]:
    probabilities = model(to_tensor(image[None]).to(device)).softmax(1)[0].cpu()
    names = list(getattr(model, "class_names", CLASS_NAMES))
    return {"label": names[int(probabilities.argmax())],
            "probabilities": {name: float(p) for name, p in zip(names, probabilities)}}


# --- __init__.py: the registered family --------------------------------------------------------------

class Toy(TaskFamily):
    name = "toy"
    params_model = ToyParams
    primary_metric = "accuracy"
    monitor = "val/accuracy"
    headlines = (Headline("accuracy", "bright/dark accuracy", target=0.9),)

    def synthesize(self, params: ToyParams, out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict[str, Any]:
        from visionflow.data.images import write_png

        synth, counts = params.synth, {}
        for index, split in enumerate(SPLITS):
            rng = np.random.default_rng([synth.seed, index])  # the files do not depend on `workers`
            rows = []
            for i in range(synth.splits[split]):
                label = int(rng.integers(2))
                brightness = rng.uniform(0.5 + synth.margin, 1.0) if label else rng.uniform(0.0, 0.5 - synth.margin)
                colour = np.clip(brightness + rng.uniform(-0.1, 0.1, 3), 0, 1) * 255
                noise = rng.normal(0, synth.noise_std, (synth.image_size, synth.image_size, 3))
                file = f"images/{split}/{i:06d}.png"
                write_png(out_dir / file, np.clip(colour + noise, 0, 255).round().astype(np.uint8))
                rows.append({"file": file, "label": label})
            (out_dir / f"{split}.json").write_text(json.dumps(rows) + "\n")
            counts[split] = {"images": len(rows), "bright": sum(r["label"] for r in rows)}
        return counts

    def augment_preview(self, params: ToyParams, data_root: Path, preview_png: Path) -> dict[str, Any]:
        """The labels are brightness classes: a transform must keep each image's mean on its side of 0.5."""
        from visionflow.augment import build_transforms
        from visionflow.viz import save_grid

        transform = build_transforms(params.augment, "toy.augment", seed=params.train.seed)
        images, labels = read_split(data_root, "train")
        shown = images[:8]
        augmented = [transform(image=image)["image"] for image in shown]
        kept = [int(a.mean() > 127.5) == int(label) for a, label in zip(augmented, labels)]
        preview_png.parent.mkdir(parents=True, exist_ok=True)
        save_grid(preview_png, [[a, b] for a, b in zip(shown, augmented)], scale=8)
        if not all(kept):
            raise ValueError(f"toy.augment: a transform moves an image across the brightness line; see {preview_png}")
        return {"samples": len(kept), "labels_kept": float(np.mean(kept))}

    def datamodule(self, params: ToyParams, data_root: Path, trainer: Any) -> ToyData:
        return ToyData(data_root, params)

    def module(self, params: ToyParams, datamodule: Any) -> ToyModule:
        return ToyModule(params.model, params.train)

    def load_module(self, checkpoint: Path) -> ToyModule:
        return build_from_checkpoint(ToyModule, checkpoint, self.name, required=("class_names", "model", "optim"))

    def inference_module(self, module: ToyModule) -> nn.Module:
        return module.net.eval()

    def with_inference_network(self, module: ToyModule, network: nn.Module) -> ToyModule:
        module.net = network  # evaluate calls module.net: now the ONNX copy
        return module

    def evaluate(self, params: ToyParams, module: ToyModule, data_root: Path, out: EvalOutputs,
                 device: torch.device) -> dict[str, Any]:
        return evaluate_toy(module.net.to(device).eval(), data_root, out, device, params.evaluate)

    def export(self, module: ToyModule, data_root: Path) -> ExportedModel:
        images, _ = read_split(data_root, "test")
        return ExportedModel(self.inference_module(module), to_tensor(images[:2]).numpy(), (-1, 3, -1, -1), (-1, 2))

    def predict(self, model: nn.Module, inputs: list[Path], out_dir: Path, device: torch.device) -> list[Path]:
        from visionflow.data.images import read_rgb

        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path, stem in zip(inputs, output_stems(inputs)):
            target = out_dir / f"{stem}_class.json"
            target.write_text(json.dumps(answer_image(model, read_rgb(path), device)) + "\n")
            written.append(target)
        return written

    def answer(self, model: nn.Module, images: dict[str, np.ndarray], device: torch.device,
               **options: Any) -> dict[str, Any]:
        return answer_image(model, images["image"], device)
