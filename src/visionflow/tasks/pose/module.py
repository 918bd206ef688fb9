"""Lightning module for top-down keypoints: heatmap (MSE) or regression (L1 + BCE) training.

Batches are (crops float (N, 3, H, W) in [0, 1], keypoints float (N, K, 3) x, y in
crop pixels and COCO v, info float (N, 5) from ``data.CocoPoseDataset``).
Validation reports PCK (normalised by the longer side of the ground-truth box)
and the mean keypoint error in image pixels.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from visionflow.batch_augment import DeviceAugmentHooks
from visionflow.tasks.lightning_base import TaskModule, saved_section
from visionflow.tasks.pose.data import KeypointSchema
from visionflow.tasks.pose.heatmaps import encode_heatmaps
from visionflow.tasks.pose.network import KeypointPredictor, PoseNet
from visionflow.tasks.pose.params import PoseModelParams, PoseTrainParams

VAL_PCK_THRESHOLDS = (0.05, 0.1)


def heatmap_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error over maps with a target (weights (N, K)); maps without one count as 0.

    predicted, target: float (N, K, h, w). Scaled by 1000 to keep magnitudes near 1.
    """
    per_map = ((predicted - target) ** 2).mean(dim=(2, 3))  # (N, K)
    return 1000 * (per_map * weights).sum() / weights.numel()


def heatmap_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each map's spatial softmax against its target normalised to sum 1.

    logits, target: float (N, K, h, w); weights (N, K) select the maps with a target.
    """
    n, k = weights.shape
    log_probability = torch.log_softmax(logits.reshape(n, k, -1), dim=-1)
    distribution = target.reshape(n, k, -1)
    distribution = distribution / distribution.sum(-1, keepdim=True).clamp(min=1e-12)
    per_map = -(distribution * log_probability).sum(-1)  # (N, K)
    return (per_map * weights).sum() / weights.sum().clamp(min=1)


def regression_loss(output: torch.Tensor, keypoints: torch.Tensor, crop_size: tuple[int, int]
                    ) -> dict[str, torch.Tensor]:
    """L1 on x / W, y / H of labelled keypoints inside the crop; BCE on that flag for every keypoint.

    output: (N, K, 3) raw regression head output; keypoints: (N, K, 3) crop pixels and v.
    """
    height, width = crop_size
    labelled = keypoints[..., 2] > 0
    target = torch.stack([(keypoints[..., 0] + 0.5) / width, (keypoints[..., 1] + 0.5) / height], -1)
    l1 = (output[..., :2] - target).abs().sum(-1)
    coords = (l1 * labelled).sum() / labelled.sum().clamp(min=1)
    presence = F.binary_cross_entropy_with_logits(output[..., 2], labelled.float())
    return {"coords": coords, "presence": presence, "loss": coords + 0.1 * presence}


def upgrade_hyperparameters(saved: dict[str, Any]) -> dict[str, Any]:
    """A pose checkpoint's saved hyperparameters in today's shape (a copy; the one place older
    checkpoints are adapted).

    ``model.decoder`` and ``model.flip_test`` came after the first pose checkpoints, as options
    that were off: those were trained with the concat decoder and evaluated without flip test.
    """
    upgraded = copy.deepcopy(saved)
    if isinstance(upgraded.get("model"), dict):
        upgraded["model"].setdefault("decoder", "concat")
        upgraded["model"].setdefault("flip_test", False)
    return upgraded


class PoseModule(DeviceAugmentHooks, TaskModule):
    """``model_params``: the typed ``pose.model`` section; decoding reads it at every call (a
    benchmark may swap it for a copy with another ``decode``)."""

    task_name = "pose"
    optim: PoseTrainParams

    def __init__(self, schema: dict[str, Any], model: PoseModelParams, optim: PoseTrainParams):
        super().__init__(optim)
        self.save_hyperparameters({"schema": schema, "model": model.model_dump(mode="json"),
                                   "optim": optim.model_dump(mode="json")})
        self.schema = KeypointSchema.from_dict(schema)
        self.model_params = model
        self.crop_size = (model.crop_height, model.crop_width)
        self.net = PoseNet(self.schema.num_keypoints, self.crop_size, model.head, tuple(model.channels),
                           model.heatmap_stride, model.decoder)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "PoseModule":
        saved = upgrade_hyperparameters(saved)
        return cls(saved["schema"], saved_section(PoseModelParams, saved["model"], "model"),
                   saved_section(PoseTrainParams, saved["optim"], "optim"))

    @property
    def predictor(self) -> KeypointPredictor:
        """The net with its decoding: crops -> keypoints (N, K, 3) (what ``export`` hands over)."""
        model = self.model_params
        return KeypointPredictor(self.net, model.decode, model.sigma if model.modulate else None,
                                 list(self.schema.skeleton), list(self.schema.flip_index),
                                 model.heatmap_loss, model.sigma, model.flip_test)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        crops, keypoints, _ = batch
        output = self(crops)
        if self.net.head_kind == "regression":
            return output, regression_loss(output, keypoints, self.crop_size)
        target, weights = encode_heatmaps(keypoints, self.crop_size, self.net.heatmap_stride,
                                          self.model_params.sigma)
        if self.model_params.heatmap_loss == "cross_entropy":
            return output, {"loss": heatmap_cross_entropy(output, target, weights)}
        return output, {"loss": heatmap_loss(output, target, weights)}

    @torch.no_grad()
    def predict_keypoints(self, crops: torch.Tensor) -> torch.Tensor:
        """crops (N, 3, H, W) -> keypoints (N, K, 3): x, y crop pixels, score."""
        return self.predictor(crops)

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx: int) -> None:
        output, losses = self.model_step(batch)
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=len(batch[0]))
        predicted = self.predictor(batch[0])
        _, keypoints, info = batch
        scale, box_size = info[:, 2:3], info[:, 3:4]
        distance = (predicted[..., :2] - keypoints[..., :2]).norm(dim=-1) / scale  # image pixels
        labelled = keypoints[..., 2] > 0
        self._val.append((torch.where(labelled, distance, torch.nan), box_size.expand_as(distance)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        distance = torch.cat([d for d, _ in self._val])
        box_size = torch.cat([b for _, b in self._val])
        labelled = ~torch.isnan(distance)
        reduce = lambda t: self.trainer.strategy.reduce(t.double(), reduce_op="sum")  # noqa: E731
        count = reduce(labelled.sum()).clamp(min=1)
        for threshold in VAL_PCK_THRESHOLDS:
            within = (distance <= threshold * box_size) & labelled
            self.log(f"val/PCK@{threshold}", (reduce(within.sum()) / count).float())
        self.log("val/error_px", (reduce(torch.nan_to_num(distance).sum()) / count).float())
