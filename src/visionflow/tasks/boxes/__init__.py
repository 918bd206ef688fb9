"""What the box families (detection, instance segmentation) share: COCO data with boxes (and
masks), box-aware augmentation, COCO evaluation, the exported detector and predict.

Each family subclasses :class:`BoxFamily` with its name, metric and Lightning module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from visionflow.tasks.base import EvalOutputs, ExportedModel, TaskFamily

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams
    from visionflow.tasks.detection.params import DetectionParams

# Geometry and interpolation may shave label boundaries; anything worse is a misaligned mask.
MIN_MASK_AGREEMENT = 0.98
BOX_TOLERANCE_PX = 1.5  # a transformed box may miss its mask's extent by rounding, no more
PREVIEW_SAMPLES = 8
# torch 2.14's dynamo exporter fails on the detectors with height and width dynamic (CenterNet:
# int() of a SymbolicTensor); the trace is correct at other sizes (docs/export.md).
BOX_DYNAMO_FAILS = "the dynamo exporter fails with height and width dynamic (int() of a SymbolicTensor)"


class BoxFamily(TaskFamily):
    """Not registered itself: subclasses set ``name``, ``primary_metric``, ``monitor``,
    ``with_masks`` and implement :meth:`_module_class` and :meth:`_serialization_format`."""

    with_masks: ClassVar[bool] = False

    def synthesize(self, params: "DetectionParams", out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict:
        from visionflow.data.synth.shapes_coco import write_shapes_from_params

        return write_shapes_from_params(params.synth, out_dir, progress=progress, workers=workers)

    def augment_preview(self, params: "DetectionParams", data_root: Path, preview_png: Path) -> dict:
        """Grid of (image with boxes | augmented image with boxes); checks that masks follow the
        image and that every kept box still encloses its (transformed) mask."""
        from visionflow.augment import geometric_mask_agreement
        from visionflow.data.coco import semantic_mask
        from visionflow.tasks.boxes.data import CocoDetectionDataset, build_box_transforms, load_split
        from visionflow.viz import draw_boxes, overlay_instances, palette, save_grid

        key = f"{self.name}.augment"
        pipeline = build_box_transforms(params.augment, key, seed=params.train.seed)
        coco = load_split(data_root, "train")
        # Box-only datasets (detection) get the preview without the mask checks.
        has_masks = self.with_masks or all("segmentation" in a for a in coco.annotations)
        dataset = CocoDetectionDataset(coco, pipeline, with_masks=has_masks)
        colours = palette(len(dataset.class_names) + 1)[1:]
        rows, agreements, worst_miss, kept, total = [], [], 0.0, 0, 0
        for index in range(min(PREVIEW_SAMPLES, len(dataset))):
            before = dataset.raw(index)
            after = dataset.transformed(index)
            views = []
            for sample in (before, after):
                boxes = sample["bboxes"].copy()
                boxes[:, 2:] += boxes[:, :2]
                picture = overlay_instances(sample["image"], sample["masks"], sample["labels"] - 1, colours) \
                    if self.with_masks else sample["image"]
                views.append(draw_boxes(picture, boxes, sample["labels"] - 1, colours))
                if has_masks:
                    worst_miss = max(worst_miss, box_misses_mask(boxes, sample["masks"]))
            rows.append(views)
            kept, total = kept + len(after["labels"]), total + len(before["labels"])
            if not has_masks:
                continue
            record = coco.images[index]
            labels = semantic_mask(coco.annotations_of(record["id"]), record["height"], record["width"],
                                   {cid: i + 1 for i, cid in enumerate(coco.category_ids)})
            agreements.append(geometric_mask_agreement(params.augment.transforms, before["image"], labels,
                                                       seed=index))
        if rows:
            save_grid(preview_png, rows, scale=max(1, 256 // max(rows[0][0].shape[:2])))
        worst = min(agreements) if agreements else 1.0
        if worst < MIN_MASK_AGREEMENT:
            raise ValueError(f"{key}: masks drift from their images through the transforms "
                             f"(agreement {worst:.3f} < {MIN_MASK_AGREEMENT}); see {preview_png}")
        if worst_miss > BOX_TOLERANCE_PX:
            raise ValueError(f"{key}: a transformed box misses its object's mask by {worst_miss:.1f} px "
                             f"(> {BOX_TOLERANCE_PX}); boxes do not follow the image; see {preview_png}")
        return {"samples": len(rows), "masks_checked": has_masks, "min_mask_agreement": worst,
                "max_box_miss_px": worst_miss, "boxes_before": total, "boxes_kept": kept}

    def datamodule(self, params: "DetectionParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.runtime import loader_settings
        from visionflow.tasks.boxes.data import DetectionData, build_box_transforms

        transform = build_box_transforms(params.augment, f"{self.name}.augment", seed=params.train.seed)
        return DetectionData(data_root, params.train.batch_size, transform, self.with_masks,
                             seed=params.train.seed, **loader_settings(trainer))

    def _module_class(self) -> Any:
        """The family's ``BoxTaskModule`` subclass (imported lazily: it pulls in Lightning)."""
        raise NotImplementedError

    def module(self, params: "DetectionParams", datamodule: Any):
        return self._module_class()(datamodule.class_names, params.model, params.train, datamodule.image_size,
                                    datamodule.val_ground_truth, category_ids=datamodule.category_ids)

    def load_module(self, checkpoint: Path):
        from visionflow.models.checkpoints import build_from_checkpoint

        return build_from_checkpoint(self._module_class(), checkpoint, self.name,
                                     ("class_names", "model", "image_size"))

    def evaluate(self, params: "DetectionParams", module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict:
        from visionflow.tasks.boxes.evaluate import evaluate_detection

        return evaluate_detection(module, data_root, out, device, params.evaluate)

    def export(self, module: Any, data_root: Path) -> ExportedModel:
        """Images ``(N, 3, H, W)`` in [0, 1] -> ``(N, max_detections, 6)`` x1, y1, x2, y2, score,
        class index (instance segmentation: ``6 + 28*28`` columns, the box-relative masks);
        rows past the detections found are -1. See ``visionflow.models.detector_outputs``."""
        import torch

        from visionflow.tasks.boxes.data import CocoDetectionDataset, load_split

        test = CocoDetectionDataset(load_split(data_root, "test"))
        example = torch.stack([test[i % len(test)][0] for i in range(2)]).numpy()
        # checkpoints from before category ids were saved take them from the test split
        detector = _named_detector(module, module.category_ids or test.coco.category_ids)
        with torch.no_grad():
            width = detector(torch.from_numpy(example)).shape[-1]
        return ExportedModel(detector, example, (-1, 3, -1, -1),
                             (-1, module.model_params.max_detections, width),
                             serialization_format=self._serialization_format(module),
                             dynamo_fails=BOX_DYNAMO_FAILS)

    def _serialization_format(self, module: Any) -> str:
        """``pt2`` (torch.export) or ``pickle`` for models with data-dependent shapes."""
        raise NotImplementedError

    def inference_module(self, module: Any) -> Any:
        """Images ``(N, 3, H, W)`` in [0, 1] -> ``(N, max_detections, 6 [+ 28*28])`` (see ``export``),
        carrying ``class_names`` and the dataset's ``category_ids``."""
        if module.category_ids is None:
            from visionflow.models.checkpoints import CheckpointError

            source = getattr(module, "source_checkpoint", f"this {self.name} checkpoint")
            raise CheckpointError(f"{source}: no category_ids in the checkpoint (written by an older "
                                  f"visionflow); retrain with `visionflow train --task {self.name}`")
        return _named_detector(module, module.category_ids)

    def with_inference_network(self, module: Any, network: Any) -> Any:
        from visionflow.tasks.base import reading_as

        return reading_as(module, "detector", network)  # a property: assigning would not hide it

    def predict(self, model: Any, inputs: list[Path], out_dir: Path, device: "torch.device") -> list[Path]:
        from visionflow.tasks.boxes.predict import predict_detections

        return predict_detections(model, inputs, out_dir, device, self.with_masks)

    def answer(self, model: Any, images: dict, device: "torch.device", **options: Any) -> dict:
        from visionflow.tasks.boxes.predict import answer_detections

        return answer_detections(model, images["image"], device, self.with_masks)


def _named_detector(module: Any, category_ids: list[int]) -> Any:
    detector = module.detector.eval()
    # What predict needs to name classes; kept by the pickled MLflow copy too.
    detector.class_names = list(module.class_names)
    detector.category_ids = list(category_ids)
    return detector


def box_misses_mask(boxes, masks) -> float:
    """Largest distance (px) by which a mask's pixels stick out of its box: boxes (M, 4) xyxy,
    masks (M, H, W), one per box."""
    import numpy as np

    worst = 0.0
    for box, mask in zip(boxes, masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        outside = [box[0] - xs.min(), box[1] - ys.min(), xs.max() + 1 - box[2], ys.max() + 1 - box[3]]
        worst = max(worst, float(max(outside)))
    return worst
