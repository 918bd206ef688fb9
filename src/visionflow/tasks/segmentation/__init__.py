"""Semantic segmentation: shapes scenes, a U-Net, per-class IoU and mIoU."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionflow.tasks import register_task
from visionflow.tasks.base import EvalOutputs, ExportedModel, Headline, TaskFamily
from visionflow.tasks.segmentation.params import SegmentationParams

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams

# Geometry and interpolation may shave label boundaries; anything worse is a misaligned mask.
MIN_MASK_AGREEMENT = 0.98


@register_task
class Segmentation(TaskFamily):
    name = "segmentation"
    params_model = SegmentationParams
    primary_metric = "mIoU"
    headlines = (Headline("mIoU", "mIoU", target=0.90),
                 Headline("pixel_accuracy", "pixel accuracy"))
    monitor = "val/mIoU"

    def synthesize(self, params: "SegmentationParams", out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict:
        from visionflow.data.synth.shapes_coco import write_shapes_from_params

        return write_shapes_from_params(params.synth, out_dir, progress=progress, workers=workers)

    def augment_preview(self, params: "SegmentationParams", data_root: Path, preview_png: Path) -> dict:
        from visionflow.augment import build_transforms, geometric_mask_agreement
        from visionflow.tasks.segmentation.data import CocoSemanticDataset, load_split
        from visionflow.viz import overlay_labels, palette, save_grid

        pipeline = build_transforms(params.augment, "segmentation.augment", seed=params.train.seed)
        dataset = CocoSemanticDataset(load_split(data_root, "train"))
        colours = palette(len(dataset.class_names))
        rows, agreements = [], []
        for index in range(min(8, len(dataset))):
            image, labels = dataset.raw(index)
            out = pipeline(image=image, mask=labels)
            rows.append([image, overlay_labels(image, labels, colours), out["image"],
                         overlay_labels(out["image"], out["mask"], colours)])
            agreements.append(geometric_mask_agreement(params.augment, image, labels, seed=index))
        save_grid(preview_png, rows, scale=max(1, 256 // max(rows[0][0].shape[:2])) if rows else 1)
        worst = min(agreements) if agreements else 1.0
        if worst < MIN_MASK_AGREEMENT:
            raise ValueError(f"segmentation.augment: masks drift from their images through the "
                             f"transforms (agreement {worst:.3f} < {MIN_MASK_AGREEMENT}); see {preview_png}")
        return {"samples": len(agreements), "min_mask_agreement": worst}

    def datamodule(self, params: "SegmentationParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.augment import build_transforms
        from visionflow.runtime import loader_settings
        from visionflow.tasks.segmentation.data import SegmentationData

        transform = build_transforms(params.augment, "segmentation.augment", seed=params.train.seed)
        return SegmentationData(data_root, params.train.batch_size, transform, seed=params.train.seed,
                                **loader_settings(trainer))

    def module(self, params: "SegmentationParams", datamodule: Any):
        from visionflow.tasks.segmentation.module import SegmentationModule

        return SegmentationModule(datamodule.class_names, params.model, params.train)

    def load_module(self, checkpoint: Path):
        from visionflow.tasks.segmentation.predict import SegmentationModel

        return SegmentationModel.from_checkpoint(checkpoint)

    def start_from_backbone(self, module: Any, backbone: Path) -> None:
        from visionflow.models.backbones import load_backbone

        load_backbone(module.net.encoder, backbone)

    def evaluate(self, params: "SegmentationParams", module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict:
        from visionflow.tasks.segmentation.evaluate import evaluate_segmentation

        return evaluate_segmentation(module, data_root, out, device, params.evaluate)

    def export(self, module: Any, data_root: Path) -> ExportedModel:
        from visionflow.tasks.segmentation.data import CocoSemanticDataset, load_split

        import torch

        test = CocoSemanticDataset(load_split(data_root, "test"))
        example = torch.stack([test[i % len(test)][0] for i in range(2)]).numpy()
        return ExportedModel(self.inference_module(module), example, (-1, 3, -1, -1),
                             (-1, len(module.class_names), -1, -1))

    def inference_module(self, module: Any) -> Any:
        """Images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C, H, W)``, C = classes + background;
        carries ``class_names`` (a plain attribute: predict's and serve's answers name classes)."""
        net = module.net.eval()
        net.class_names = list(module.class_names)
        return net

    def with_inference_network(self, module: Any, network: Any) -> Any:
        module.net = network
        return module

    def predict(self, model: Any, inputs: list[Path], out_dir: Path, device: "torch.device") -> list[Path]:
        from visionflow.tasks.segmentation.predict import predict_masks

        return predict_masks(model, inputs, out_dir, device)

    def answer(self, model: Any, images: dict, device: "torch.device", **options: Any) -> dict:
        from visionflow.tasks.segmentation.predict import answer_labels

        return answer_labels(model, images["image"], device)
