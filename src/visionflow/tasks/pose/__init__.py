"""Keypoint pose: articulated figures, top-down heatmap (or regression) keypoints, OKS AP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionflow.tasks import register_task
from visionflow.tasks.base import EvalOutputs, ExportedModel, Headline, TaskFamily
from visionflow.tasks.pose.params import PoseParams

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams

# Interpolation moves a probe blob's peak by a fraction of a pixel; more is a misaligned keypoint.
MAX_KEYPOINT_DRIFT_PX = 1.0
PREVIEW_SAMPLES = 8


def _geometry(model: Any):
    from visionflow.tasks.pose.data import CropGeometry

    return CropGeometry(model.crop_height, model.crop_width, model.box_margin)


@register_task
class Pose(TaskFamily):
    name = "pose"
    params_model = PoseParams
    primary_metric = "AP"  # OKS AP over OKS 0.50:0.95 (COCO keypoints)
    headlines = (Headline("AP", "OKS AP", target=0.70), Headline("PCK@0.1", "PCK@0.1"))
    monitor = "val/PCK@0.05"

    def synthesize(self, params: "PoseParams", out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict:
        from visionflow.data.synth.figures import FigureSceneSpec
        from visionflow.data.synth.figures_coco import write_figures_coco

        synth = params.synth.model_dump()
        seed, splits = synth.pop("seed"), synth.pop("splits")
        spec = FigureSceneSpec(**{**synth, "occluder_radius": tuple(synth["occluder_radius"])})
        return write_figures_coco(out_dir, spec, splits, seed, progress=progress, workers=workers)

    def augment_preview(self, params: "PoseParams", data_root: Path, preview_png: Path) -> dict:
        from visionflow.tasks.pose.data import CocoPoseDataset, keypoint_schema, load_split
        from visionflow.viz import draw_keypoints, save_grid

        coco = load_split(data_root, "train")
        schema = keypoint_schema(coco, params.data.flip_pairs)
        dataset = CocoPoseDataset(coco, schema, _geometry(params.model))
        before = [dataset.raw(index)[:2] for index in range(min(PREVIEW_SAMPLES, len(dataset)))]
        draw_augmented = _device_draws if params.augment_on == "device" else _loader_draws
        after, worst = draw_augmented(params, schema, before) if before else ([], 0.0)
        draw = dict(skeleton=schema.skeleton, flip_index=schema.flip_index, scale=4, visibility=True)
        rows = [[draw_keypoints(crop, keypoints, **draw), draw_keypoints(image, moved, **draw)]
                for (crop, keypoints), (image, moved, _) in zip(before, after)]
        if rows:  # pairs of columns: before | after; first of each mirror pair green, partner magenta
            save_grid(preview_png, [rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i]
                                    for i in range(0, len(rows), 2)])
        if worst > MAX_KEYPOINT_DRIFT_PX:
            raise ValueError(f"pose.augment: keypoints drift from their pixels through the transforms "
                             f"({worst:.2f} px > {MAX_KEYPOINT_DRIFT_PX}); see {preview_png}")
        return {"samples": len(rows), "augment_on": params.augment_on, "max_keypoint_drift_px": round(worst, 4),
                "mirrored_samples": sum(int(m) for _, _, m in after), "flip_pairs_from": schema.flip_source}

    def datamodule(self, params: "PoseParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.runtime import loader_settings
        from visionflow.tasks.pose.data import KeypointAugment, PoseDataModule, keypoint_schema, load_split

        schema = keypoint_schema(load_split(data_root, "train"), params.data.flip_pairs)
        augment = None if params.augment_on == "device" else \
            KeypointAugment(params.augment, "pose.augment", schema.flip_index, seed=params.train.seed)
        return PoseDataModule(data_root, schema, _geometry(params.model), params.train.batch_size, augment,
                              seed=params.train.seed, **loader_settings(trainer))

    def module(self, params: "PoseParams", datamodule: Any):
        from visionflow.tasks.pose.module import PoseModule

        module = PoseModule(datamodule.schema.as_dict(), params.model, params.train)
        if params.augment_on == "device":
            module.batch_augment = batched_augment(params, datamodule.schema.flip_index)
        return module

    def load_module(self, checkpoint: Path):
        from visionflow.models.checkpoints import build_from_checkpoint
        from visionflow.tasks.pose.module import PoseModule

        return build_from_checkpoint(PoseModule, checkpoint, self.name, ("schema", "model"))

    def evaluate(self, params: "PoseParams", module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict:
        from visionflow.tasks.pose.evaluate import evaluate_pose

        return evaluate_pose(module, data_root, out, device, params.evaluate)

    def export(self, module: Any, data_root: Path) -> ExportedModel:
        """Crops float (N, 3, H, W) in [0, 1] -> keypoints float (N, K, 3): x, y in crop pixels, score.

        H, W are the model's crop size (``pose.model.crop_height/width``), fixed.
        """
        import numpy as np

        from visionflow.tasks.pose.data import CocoPoseDataset, load_split

        test = CocoPoseDataset(load_split(data_root, "test"), module.schema, _crop_geometry(module))
        if len(test):
            example = np.stack([test[i % len(test)][0].numpy() for i in range(2)])
        else:
            example = np.zeros((2, 3, *module.crop_size), np.float32)
        return ExportedModel(self.inference_module(module), example, (-1, 3, *module.crop_size),
                             (-1, module.schema.num_keypoints, 3))

    def inference_module(self, module: Any) -> Any:
        """Crops ``(N, 3, H, W)`` in [0, 1] -> keypoints ``(N, K, 3)``; carries its crop size,
        skeleton and flip pairs as buffers."""
        return module.predictor.eval()

    def with_inference_network(self, module: Any, network: Any) -> Any:
        from visionflow.tasks.base import reading_as

        return reading_as(module, "predictor", network)  # a property: assigning would not hide it

    def upstream(self, params: Any) -> dict[str, list[str]]:
        """With ``evaluate.boxes: detection``, evaluate crops the boxes that the detection family's
        best checkpoint finds, run through that family's code (looked up by name, not imported).
        ``predict`` reads the same checkpoint, but it is no pipeline stage."""
        if params.evaluate.boxes != "detection":
            return {}
        from visionflow.paths import TaskPaths

        return {"evaluate": [TaskPaths("detection").best_checkpoint.as_posix(), "src/visionflow/tasks/detection"]}

    def predict(self, model: Any, inputs: list[Path], out_dir: Path, device: "torch.device",
                detector: Any = "project") -> list[Path]:
        """``detector``: an exported detection model whose boxes are cropped, None (each image is
        one box), or "project": the project's ``models/detection/best.ckpt`` if there is one."""
        from visionflow.tasks.pose.predict import predict_keypoints, project_detector

        if detector == "project":
            detector = project_detector(device)
        return predict_keypoints(model, inputs, out_dir, device, detector)

    def answer(self, model: Any, images: dict, device: "torch.device", detector: Any = "project",
               **options: Any) -> dict:
        from visionflow.tasks.pose.predict import answer_keypoints

        return answer_keypoints(model, images["image"], device, detector)


def batched_augment(params: "PoseParams", flip_index: Any) -> Any:
    """``pose.augment`` as a ``KeypointBatchAugment`` (whole batches of crops on the device)."""
    from visionflow.batch_augment import PointAugment, build_batch_augment
    from visionflow.tasks.pose.device_augment import KeypointBatchAugment

    return KeypointBatchAugment(PointAugment(build_batch_augment(params.augment, "pose.augment")), flip_index)


def _loader_draws(params: "PoseParams", schema: Any, samples: list) -> tuple[list, float]:
    """Each (crop, keypoints) through the loader's albumentations pipeline seeded with
    ``train.seed``: ([(crop, keypoints, mirrored)], worst keypoint drift px)."""
    from visionflow.tasks.pose.data import KeypointAugment, keypoint_drift

    augment = KeypointAugment(params.augment, "pose.augment", schema.flip_index, seed=params.train.seed,
                              replay=True)
    after, drifts = [], []
    for crop, keypoints in samples:
        out = augment.apply(crop, keypoints)
        after.append((out["image"], out["keypoints"], out["mirrored"]))
        drifts.append(keypoint_drift(augment, crop, keypoints))
    return after, max(drifts)


def _device_draws(params: "PoseParams", schema: Any, samples: list) -> tuple[list, float]:
    """The crops as one batch through the device pipeline, one draw from ``train.seed``: as
    ``_loader_draws``."""
    import numpy as np
    import torch

    from visionflow.data.batching import image_to_tensor
    from visionflow.tasks.pose.device_augment import keypoint_drift

    augment = batched_augment(params, schema.flip_index)
    crops = torch.stack([image_to_tensor(crop) for crop, _ in samples])
    keypoints = torch.stack([torch.from_numpy(np.asarray(k, np.float32)) for _, k in samples])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.train.seed)
        out, moved, flipped = augment.draw(crops, keypoints)
        worst = keypoint_drift(augment, crops, keypoints, moved, flipped)
    images = (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [(image, k.numpy(), bool(f)) for image, k, f in zip(images, moved, flipped)], worst


def _crop_geometry(module: Any):
    from visionflow.tasks.pose.data import CropGeometry

    model = module.model_params
    return CropGeometry(model.crop_height, model.crop_width, model.box_margin)
