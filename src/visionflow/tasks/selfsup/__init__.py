"""Self-supervised pretraining: SimCLR on unlabelled images, probes, label-efficiency transfer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionflow.tasks import register_task
from visionflow.tasks.base import EvalOutputs, ExportedModel, Headline, TaskFamily
from visionflow.tasks.selfsup.params import SelfsupParams

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams

# Two views that differ by less than this (mean absolute difference, 8-bit levels) are
# effectively one view: NT-Xent then learns nothing.
MIN_VIEW_DIFFERENCE = 1.0


def project_dirs(data_root: Path) -> tuple[Path, Path]:
    """(synthetic root, raw datasets folder) of the project ``data_root`` belongs to.

    ``data_root`` is ``<project>/data/synthetic/selfsup`` or ``<project>/data/raw/<name>``
    (``TaskPaths.data_root``); the probe set and the label-efficiency scenes live in
    the synthetic root whichever source the unlabelled images come from.
    """
    from visionflow.paths import RAW_DIR, TaskPaths

    root = Path(data_root).parents[2]
    return TaskPaths("selfsup", root).synthetic, root / RAW_DIR


def batch_views(params: "SelfsupParams") -> Any:
    """``TwoViews`` of ``selfsup.augment`` run on whole batches (kornia)."""
    from visionflow.batch_augment import TwoViews, build_batch_augment

    return TwoViews(build_batch_augment(params.augment, "selfsup.augment"))


def preview_views(params: "SelfsupParams", images: list) -> list:
    """Two views of each uint8 (S, S, 3) image, drawn as training draws them, from
    ``train.seed``: a list of (view_1, view_2), uint8 (s, s, 3)."""
    if params.augment_on == "device":
        import torch

        from visionflow.data.batching import image_to_tensor

        batch = torch.stack([image_to_tensor(image) for image in images])
        first, second = batch_views(params).seeded(batch, params.train.seed)
        as_uint8 = [(view * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy() for view in (first, second)]
        return list(zip(*as_uint8))
    from visionflow.augment import build_transforms
    from visionflow.tasks.selfsup.data import two_views

    pipeline = build_transforms(params.augment, "selfsup.augment", seed=params.train.seed)
    return [two_views(pipeline, image) for image in images]


@register_task
class Selfsup(TaskFamily):
    name = "selfsup"
    params_model = SelfsupParams
    primary_metric = "linear_probe_accuracy"
    headlines = (Headline("linear_probe_accuracy", "linear probe", baseline="random_init.linear_probe_accuracy",
                          baseline_label="random init"),
                 Headline("linear_probe_gain_over_random_init", "gain over random init", target=0.10),
                 Headline("linear_probe_accuracy", "linear probe", baseline="raw_pixels.linear_probe_accuracy",
                          baseline_label="raw pixels"))
    monitor = "val/loss"
    monitor_mode = "min"

    def synthesize(self, params: "SelfsupParams", out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict:
        from visionflow.data.synth.selfsup import write_selfsup_dataset
        from visionflow.data.synth.shapes import ShapesSceneSpec

        synth = params.synth.model_dump()
        seed, splits, background = synth.pop("seed"), synth.pop("splits"), synth.pop("background")
        spec = ShapesSceneSpec(**{**synth, "classes": tuple(synth["classes"])})
        return write_selfsup_dataset(out_dir, spec, splits, seed, background, progress=progress,
                                     workers=workers)

    def augment_preview(self, params: "SelfsupParams", data_root: Path, preview_png: Path) -> dict:
        import numpy as np

        from visionflow.config import ConfigError
        from visionflow.tasks.selfsup.data import load_image, resolve_sources, unlabelled_images
        from visionflow.viz import save_grid

        synthetic, raw = project_dirs(data_root)
        folders = resolve_sources(synthetic, raw, params.data.source, params.data.extra_unlabelled)
        paths = unlabelled_images(folders[0])[:8]
        images = [load_image(path, params.data.image_size) for path in paths]
        pairs, again = preview_views(params, images), preview_views(params, images)
        reproducible = all(np.array_equal(a, b) for pair, other in zip(pairs, again) for a, b in zip(pair, other))
        rows, differences = [], []
        for path, image, views in zip(paths, images, pairs):
            if views[0].shape != views[1].shape:
                raise ConfigError(f"selfsup.augment: views of {path} come out in different sizes "
                                  f"{views[0].shape} and {views[1].shape}; end with a fixed-size crop")
            differences.append(float(np.abs(views[0].astype(np.float32) - views[1]).mean()))
            rows.append([image, *views])
        save_grid(preview_png, rows, scale=max(1, 128 // params.data.image_size))
        mean_difference = float(np.mean(differences))
        if mean_difference < MIN_VIEW_DIFFERENCE:
            raise ConfigError(f"selfsup.augment: the two views of an image are (nearly) identical "
                              f"(mean difference {mean_difference:.2f} levels); contrastive learning "
                              f"needs random transforms (crops, colour jitter); see {preview_png}")
        return {"samples": len(rows), "mean_view_difference": mean_difference,
                "reproducible_with_seed": float(reproducible)}

    def datamodule(self, params: "SelfsupParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.augment import build_transforms
        from visionflow.runtime import loader_settings
        from visionflow.tasks.selfsup.data import SelfsupDataModule, resolve_sources

        synthetic, raw = project_dirs(data_root)
        folders = resolve_sources(synthetic, raw, params.data.source, params.data.extra_unlabelled)
        seed = params.train.seed
        if params.augment_on == "device":
            return SelfsupDataModule(folders, params.data.image_size, params.data.val_fraction,
                                     params.train.batch_size, None, None, seed=seed,
                                     batch_views=batch_views(params), **loader_settings(trainer))
        return SelfsupDataModule(
            folders, params.data.image_size, params.data.val_fraction, params.train.batch_size,
            build_transforms(params.augment, "selfsup.augment", seed=seed),
            build_transforms(params.augment, "selfsup.augment", seed=seed + 1),
            seed=seed, **loader_settings(trainer))

    def module(self, params: "SelfsupParams", datamodule: Any):
        from visionflow.tasks.selfsup.module import SelfsupModule

        module = SelfsupModule(params.model, params.train)
        if params.augment_on == "device":
            module.batch_augment = batch_views(params)
        return module

    def load_module(self, checkpoint: Path):
        from visionflow.models.checkpoints import build_from_checkpoint
        from visionflow.tasks.selfsup.module import SelfsupModule

        return build_from_checkpoint(SelfsupModule, checkpoint, self.name, ("model",))

    def start_from_backbone(self, module: Any, backbone: Path) -> None:
        """Continue pretraining from an earlier backbone (the projection head starts afresh)."""
        from visionflow.models.backbones import load_backbone

        load_backbone(module.net.encoder, backbone)

    def evaluate(self, params: "SelfsupParams", module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict:
        from visionflow.tasks.selfsup.evaluate import evaluate_selfsup

        synthetic, raw = project_dirs(data_root)
        return evaluate_selfsup(module, synthetic, raw, out, device, params)

    def export(self, module: Any, data_root: Path) -> ExportedModel:
        import torch

        from visionflow.data.batching import image_to_tensor
        from visionflow.data.images import read_rgb
        from visionflow.tasks.selfsup.data import load_probe_set, probe_root

        synthetic, raw = project_dirs(data_root)
        probe = load_probe_set(probe_root(synthetic, raw, "synthetic"))
        paths = (probe.test_paths * 2)[:2]  # a batch of 2: torch.export pins a batch of 1
        example = torch.stack([image_to_tensor(read_rgb(p)) for p in paths]).numpy()
        embedding = self.inference_module(module)
        return ExportedModel(embedding, example, (-1, 3, -1, -1), (-1, embedding.dim))

    def inference_module(self, module: Any) -> Any:
        """Images ``(N, 3, H, W)`` in [0, 1] -> pooled encoder embeddings ``(N, D)``."""
        return module.net.embedding.eval()

    def with_inference_network(self, module: Any, network: Any) -> Any:
        module.net.embedding = network
        return module

    def parity_params(self, params: Any) -> Any:
        """Without the label-efficiency runs: they train from the encoder's weights, not the export."""
        evaluate = params.evaluate.model_copy(update={"label_fractions": []})
        return params.model_copy(update={"evaluate": evaluate})

    def predict(self, model: Any, inputs: list[Path], out_dir: Path, device: "torch.device") -> list[Path]:
        from visionflow.tasks.selfsup.predict import predict_embeddings

        return predict_embeddings(model, inputs, out_dir, device)

    def answer(self, model: Any, images: dict, device: "torch.device", **options: Any) -> dict:
        from visionflow.tasks.selfsup.predict import answer_embedding

        return answer_embedding(model, images["image"], device)
