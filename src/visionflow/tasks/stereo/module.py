"""Lightning module for stereo: supervised smooth L1 on synthetic pairs, optional self-supervision.

The supervised loss is smooth L1 at every level plus (``loss.distribution_weight``) a
cross-entropy pulling the 1/4 cost volume's distribution to one peak at the truth.

Batches are :class:`~visionflow.tasks.stereo.data.StereoBatch`. Self-supervision
(``train.self_supervised``) is a second phase of the same fit: from its
``start_epoch`` on, the photometric / smoothness / left-right loss on real
unlabelled pairs joins the synthetic supervised loss.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from visionflow.tasks.lightning_base import TaskModule, saved_section
from visionflow.tasks.stereo.data import StereoBatch
from visionflow.tasks.stereo.losses import (self_supervised_losses, supervised_disparity_loss,
                                            valid_disparity_mask, volume_distribution_loss)
from visionflow.tasks.stereo.network import StereoNet
from visionflow.tasks.stereo.params import StereoModelParams, StereoTrainParams


def upgrade_hyperparameters(saved: dict[str, Any]) -> dict[str, Any]:
    """A stereo checkpoint's saved hyperparameters in today's shape (a copy; the one place
    older checkpoints are adapted).

    Keys added to ``stereo.model`` / ``stereo.train`` after the first stereo checkpoints were
    written, filled with the behaviour those checkpoints were trained and evaluated with:

    - ``model.argmin_radius``: None, refinement started from the soft-argmin over every candidate;
    - ``optim.loss.beta``: 1.0, smooth L1's quadratic zone before it became a key;
    - ``optim.loss.distribution_weight``: 0.0, no cost-volume distribution loss; with it
      ``distribution_spread`` 0.5 (its value when added; unused at weight 0).
    """
    upgraded = copy.deepcopy(saved)
    model, optim = upgraded.get("model"), upgraded.get("optim")
    if isinstance(model, dict):
        model.setdefault("argmin_radius", None)
    loss = optim.get("loss") if isinstance(optim, dict) else None
    if isinstance(loss, dict):
        loss.setdefault("beta", 1.0)
        loss.setdefault("distribution_weight", 0.0)
        loss.setdefault("distribution_spread", 0.5)
    return upgraded


def pad_to_stride(images: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad ``(N, C, H, W)`` at the bottom/right to multiples of ``stride``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
    return images, h, w


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Store ``module``'s conv weights channels-last (2D) / channels-last-3d (3D), in place.

    oneDNN then runs the convolutions in that layout (activations follow the weights):
    on the 2-core CPU a training step takes about a fifth less time. Loading a state
    dict copies into these tensors and keeps their layout.
    """
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for parameter in module.parameters():
        if parameter.dim() in formats:
            parameter.data = parameter.data.contiguous(memory_format=formats[parameter.dim()])
    return module


class StereoModule(TaskModule):
    task_name = "stereo"

    optim: StereoTrainParams

    def __init__(self, model: StereoModelParams, optim: StereoTrainParams):
        super().__init__(optim)
        self.save_hyperparameters({"model": model.model_dump(mode="json"), "optim": optim.model_dump(mode="json")})
        self.net = StereoNet(max_disparity=model.max_disparity, channels=tuple(model.channels),
                             groups=model.groups, aggregation_channels=model.aggregation_channels,
                             refine_channels=tuple(model.refine_channels), refine_radius=model.refine_radius,
                             upsample=model.upsample, argmin_radius=model.argmin_radius)
        to_channels_last(self.net)
        self.max_disparity = float(model.max_disparity)
        self.register_buffer("val_sums", torch.zeros(3, dtype=torch.float64), persistent=False)

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "StereoModule":
        saved = upgrade_hyperparameters(saved)
        return cls(saved_section(StereoModelParams, saved["model"], "model"),
                   saved_section(StereoTrainParams, saved["optim"], "optim"))

    def forward(self, left: torch.Tensor, right: torch.Tensor, with_cost: bool = False
                ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """left, right ``(N, 3, H, W)`` in [0, 1], any size -> disparities ``(N, 1, H, W)``, coarse first.

        ``with_cost``: also the 1/4 volume's cost of the padded pair (:class:`StereoNet`).
        """
        both, h, w = pad_to_stride(torch.cat([left, right], 1), self.net.stride)
        disparities, cost = self.net(both[:, :3], both[:, 3:], with_cost=True)
        disparities = [d[..., :h, :w] for d in disparities]
        return (disparities, cost) if with_cost else disparities

    def _self_supervised_active(self) -> bool:
        selfsup = self.optim.self_supervised
        return selfsup.source is not None and self.current_epoch >= selfsup.start_epoch

    def model_step(self, batch: StereoBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        predictions, cost = self(batch.left, batch.right, with_cost=True)
        loss = self.optim.loss
        supervised = supervised_disparity_loss(predictions, batch.disparity, loss.scale_weights,
                                               self.max_disparity, loss.beta)
        losses = {"supervised": supervised}
        if loss.distribution_weight:
            losses["distribution"] = volume_distribution_loss(cost, batch.disparity, self.max_disparity,
                                                              loss.distribution_spread)
            supervised = supervised + loss.distribution_weight * losses["distribution"]
        if self.training and self._self_supervised_active() and batch.real_left.numel():
            selfsup = self.optim.self_supervised
            terms = self.self_supervised_step(batch.real_left, batch.real_right, selfsup.ssim_weight)
            unsupervised = (terms["photometric"] + selfsup.smoothness * terms["smoothness"]
                            + selfsup.left_right * terms["left_right"])
            losses.update(terms)
            losses["loss"] = selfsup.supervised_weight * supervised + selfsup.weight * unsupervised
        else:
            losses["loss"] = supervised
        return predictions[-1], losses

    def self_supervised_step(self, left: torch.Tensor, right: torch.Tensor, ssim_weight: float
                             ) -> dict[str, torch.Tensor]:
        """Both views' disparities in one pass (the right one from the mirrored, swapped pair)."""
        n = len(left)
        disparity = self(torch.cat([left, right.flip(-1)]), torch.cat([right, left.flip(-1)]))[-1]
        disparity_left, disparity_right = disparity[:n], disparity[n:].flip(-1)
        return self_supervised_losses(disparity_left, disparity_right, left, right, ssim_weight,
                                      self.max_disparity)

    def on_validation_epoch_start(self) -> None:
        self.val_sums.zero_()

    def validation_step(self, batch: StereoBatch, batch_idx: int) -> None:
        prediction, losses = self.model_step(batch)
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=len(batch.left))
        valid = valid_disparity_mask(batch.disparity, float("inf"))
        error = (prediction - batch.disparity)[valid].abs().double()
        self.val_sums += torch.stack([error.sum(), (error > 1).sum().double(),
                                      torch.tensor(float(error.numel()), dtype=torch.float64,
                                                   device=error.device)])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self.val_sums, reduce_op="sum")
        pixels = sums[2].clamp_min(1)
        self.log("val/epe", (sums[0] / pixels).float())
        self.log("val/bad1", (100 * sums[1] / pixels).float())
