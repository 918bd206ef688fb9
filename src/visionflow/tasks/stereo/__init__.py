"""Stereo matching: layered synthetic scenes with exact disparity, a cost-volume network, SGBM baseline.

Data lives in the Middlebury layout (``<split>/<scene>/im0.png, im1.png, disp0.pfm,
mask0nocc.png``); acquired Middlebury- or KITTI-style datasets read through the same
reader (:mod:`visionflow.data.stereo`). The exported model takes ONE tensor
``(N, 6, H, W)``: left RGB then right RGB, float32 in ``[0, 1]``, any H and W; it
returns disparity ``(N, 1, H, W)`` in left-image px.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionflow.tasks import register_task
from visionflow.tasks.base import EvalOutputs, ExportedModel, Headline, TaskFamily
from visionflow.tasks.stereo.params import StereoParams

if TYPE_CHECKING:
    import torch

    from visionflow.config import TrainerParams

# Through the augmentation's geometry, the right image warped by the ground truth must
# reproduce the left (non-occluded pixels) as well as before it; a broken geometry
# (a horizontal flip, a shift of one view) at least doubles the error.
MAX_WARP_ERROR_RATIO = 1.5
# torch 2.14's dynamo exporter stops in onnx_ir's passes (AttributeError: 'NoneType' object has
# no attribute 'ndim') after about 36 s on 2 cores; the trace agrees with PyTorch (docs/export.md).
STEREO_DYNAMO_FAILS = "the dynamo exporter fails on the cost volume (onnx_ir: AttributeError)"


@register_task
class Stereo(TaskFamily):
    name = "stereo"
    params_model = StereoParams
    primary_metric = "epe"
    higher_is_better = False
    headlines = (Headline("epe", "EPE (px)", higher_is_better=False, baseline="sgbm_epe", baseline_label="SGBM"),
                 Headline("epe_ratio_to_sgbm", "EPE / SGBM's", target=0.75, higher_is_better=False),
                 Headline("d1", "D1 (%)", higher_is_better=False, baseline="sgbm_d1", baseline_label="SGBM"))
    monitor = "val/epe"
    monitor_mode = "min"

    def synthesize(self, params: "StereoParams", out_dir: Path, progress: bool = True,
                   workers: int | None = None) -> dict:
        from visionflow.data.synth.stereo import StereoSceneSpec, write_stereo_dataset

        synth = params.synth.model_dump()
        seed, splits = synth.pop("seed"), synth.pop("splits")
        return write_stereo_dataset(out_dir, StereoSceneSpec(**synth), splits, seed, progress=progress,
                                    workers=workers)

    def augment_preview(self, params: "StereoParams", data_root: Path, preview_png: Path) -> dict:
        from visionflow.tasks.stereo.augment_check import preview_and_check

        check = preview_and_check(params, data_root, preview_png)
        if check["max_warp_error_ratio"] > MAX_WARP_ERROR_RATIO:
            raise ValueError(f"stereo.augment: after the augmentation's geometry the right image warped by "
                             f"the disparity no longer matches the left (warp error x"
                             f"{check['max_warp_error_ratio']:.2f} > {MAX_WARP_ERROR_RATIO}); see {preview_png}")
        return check

    def datamodule(self, params: "StereoParams", data_root: Path, trainer: "TrainerParams"):
        from visionflow.runtime import loader_settings
        from visionflow.tasks.stereo.data import StereoDataModule

        return StereoDataModule(data_root, params, **loader_settings(trainer))

    def module(self, params: "StereoParams", datamodule: Any):
        from visionflow.tasks.stereo.module import StereoModule

        return StereoModule(params.model, params.train)

    def load_module(self, checkpoint: Path):
        from visionflow.models.checkpoints import build_from_checkpoint
        from visionflow.tasks.stereo.module import StereoModule

        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: checkpoint not found; run `visionflow train --task stereo`")
        return build_from_checkpoint(StereoModule, checkpoint, self.name, ("model",))

    def evaluate(self, params: "StereoParams", module: Any, data_root: Path, out: EvalOutputs,
                 device: "torch.device") -> dict:
        from visionflow.tasks.stereo.evaluate import evaluate_stereo

        return evaluate_stereo(module, params, data_root, out, device)

    def export(self, module: Any, data_root: Path) -> ExportedModel:
        import torch

        from visionflow.data.stereo import find_pairs, list_splits, read_pair
        from visionflow.tasks.stereo.evaluate import pair_tensor

        split = "test" if "test" in list_splits(data_root) else list_splits(data_root)[0]
        records = find_pairs(data_root, split)
        pairs = [read_pair(records[i % len(records)], with_labels=False) for i in range(2)]
        height = min(p.left.shape[0] for p in pairs)
        width = min(p.left.shape[1] for p in pairs)
        example = torch.cat([pair_tensor(p.left[:height, :width], p.right[:height, :width]) for p in pairs])
        return ExportedModel(self.inference_module(module), example.numpy(), (-1, 6, -1, -1),
                             (-1, 1, -1, -1), dynamo_fails=STEREO_DYNAMO_FAILS)

    def inference_module(self, module: Any) -> Any:
        """Pairs ``(N, 6, H, W)`` -> disparity ``(N, 1, H, W)``; carries its trained ``max_disparity``."""
        from visionflow.tasks.stereo.network import StereoInference

        return StereoInference(module.net).eval()

    def with_inference_network(self, module: Any, network: Any) -> Any:
        """``network`` maps pairs to disparity like :meth:`inference_module`'s whole wrapper."""
        module.inference_network = network
        return module

    def predict(self, model: Any, inputs: list[Path], out_dir: Path, device: "torch.device") -> list[Path]:
        from visionflow.tasks.stereo.predict import predict_disparity

        return predict_disparity(model, inputs, out_dir, device)

    request_images = ("left", "right")

    def answer(self, model: Any, images: dict, device: "torch.device", **options: Any) -> dict:
        from visionflow.tasks.stereo.predict import answer_disparity

        return answer_disparity(model, images["left"], images["right"], device)
