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
        from visionflow.tasks.pose.data import CocoPoseDataset, KeypointAugment, keypoint_drift, \
            keypoint_schema, load_split
        from visionflow.viz import draw_keypoints, save_grid

        coco = load_split(data_root, "train")
        schema = keypoint_schema(coco, params.data.flip_pairs)
        dataset = CocoPoseDataset(coco, schema, _geometry(params.model))
        augment = KeypointAugment(params.augment, "pose.augment", schema.flip_index, seed=params.train.seed,
                                  replay=True)
        rows, drifts, mirrored = [], [], 0
        for index in range(min(PREVIEW_SAMPLES, len(dataset))):
            crop, keypoints, _ = dataset.raw(index)
            out = augment.apply(crop, keypoints)
            mirrored += int(out["mirrored"])
            draw = dict(skeleton=schema.skeleton, flip_index=schema.flip_index, scale=4, visibility=True)
            rows.append([draw_keypoints(crop, keypoints, **draw), draw_keypoints(out["image"], out["keypoints"],
                                                                                 **draw)])
            drifts.append(keypoint_drift(augment, crop, keypoints))
        if rows:  # pairs of columns: before | after; first of each mirror pair green, partner magenta
            save_grid(preview_png, [rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i]
                                    for i in range(0, len(rows), 2)])
        worst = max(drifts) if drifts else 0.0
        if worst > MAX_KEYPOINT_DRIFT_PX:
            raise ValueError(f"pose.augment: keypoints drift from their pixels through the transforms "
                             f"({worst:.2f} px > {MAX_KEYPOINT_DRIFT_PX}); see {preview_png}")
        return {"samples": len(drifts), "max_keypoint_drift_px": round(worst, 4), "mirrored_samples": mirrored,
                "flip_pairs_from": schema.flip_source}

    def datamodule(self, params: "PoseParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.runtime import loader_settings
        from visionflow.tasks.pose.data import KeypointAugment, PoseDataModule, keypoint_schema, load_split

        schema = keypoint_schema(load_split(data_root, "train"), params.data.flip_pairs)
        augment = KeypointAugment(params.augment, "pose.augment", schema.flip_index, seed=params.train.seed)
        return PoseDataModule(data_root, schema, _geometry(params.model), params.train.batch_size, augment,
                              seed=params.train.seed, **loader_settings(trainer))

    def module(self, params: "PoseParams", datamodule: Any):
        from visionflow.tasks.pose.module import PoseModule

        return PoseModule(datamodule.schema.as_dict(), params.model, params.train)

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


def _crop_geometry(module: Any):
    from visionflow.tasks.pose.data import CropGeometry

    model = module.model_params
    return CropGeometry(model.crop_height, model.crop_width, model.box_margin)
