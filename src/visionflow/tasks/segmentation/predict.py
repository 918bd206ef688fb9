"""Inference: the trained network without Lightning, and segmentation of user images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from visionflow.data.batching import image_to_tensor
from visionflow.data.images import read_rgb, write_png
from visionflow.models.unet import UNet
from visionflow.tasks.base import output_stems
from visionflow.models.checkpoints import CheckpointError, read_lightning_checkpoint, require_hparams, sub_state_dict
from visionflow.viz import overlay_labels, palette


class SegmentationModel(nn.Module):
    """A trained U-Net and its class names (index 0 is background)."""

    def __init__(self, net: UNet, class_names: list[str]):
        super().__init__()
        self.net = net
        self.class_names = list(class_names)

    @classmethod
    def from_checkpoint(cls, path: Path) -> "SegmentationModel":
        state_dict, hparams = read_lightning_checkpoint(path, "segmentation")
        require_hparams(hparams, ("class_names", "model"), path, "segmentation")
        try:
            model = hparams["model"]
            net = UNet(len(hparams["class_names"]), tuple(model["channels"]), tuple(model["dilations"]))
            net.load_state_dict(sub_state_dict(state_dict, "net"))
        except (TypeError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: does not fit a segmentation model ({str(exc).splitlines()[0]}); "
                                  f"retrain with `visionflow train --task segmentation`") from None
        return cls(net, hparams["class_names"]).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1] -> logits (N, C, H, W)."""
        return self.net(images.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def predict_labels(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> int64 (N, H, W) class indices."""
        return self(images).argmax(1)


@torch.no_grad()
def segment_image(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> tuple[np.ndarray, int]:
    """uint8 RGB (H, W, 3) -> uint8 class index per pixel (H, W) and the number of classes C."""
    logits = model(image_to_tensor(image)[None].to(device))
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8), int(logits.shape[1])


def answer_labels(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> dict:
    """The served answer: per class present, its pixel count and mask as COCO RLE (``size`` is [H, W]).

    Class names come from the model's ``class_names`` when it carries them, else ``class_<i>``.
    """
    from visionflow.data.coco import encode_mask

    labels, num_classes = segment_image(model, image, device)
    names = list(getattr(model, "class_names", None) or [f"class_{i}" for i in range(num_classes)])
    present, counts = np.unique(labels, return_counts=True)
    return {"height": int(labels.shape[0]), "width": int(labels.shape[1]), "class_names": names,
            "classes": [{"index": int(c), "name": names[c], "pixels": int(n), "rle": encode_mask(labels == c)}
                        for c, n in zip(present, counts)]}


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: list[Path], out_dir: Path,
                  device: torch.device) -> list[Path]:
    """For each image: ``<stem>_labels.png`` (class index per pixel) and ``<stem>_overlay.png``
    (stems made distinct by :func:`~visionflow.tasks.base.output_stems`).

    ``model`` maps images (1, 3, H, W) in [0, 1] to logits (1, C, H, W): the exported network.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    written = []
    for path, stem in zip(images, output_stems(images)):
        image = read_rgb(path)
        labels, num_classes = segment_image(model, image, device)
        colours = palette(num_classes)
        for suffix, picture in (("labels", labels), ("overlay", overlay_labels(image, labels, colours))):
            target = out_dir / f"{stem}_{suffix}.png"
            write_png(target, picture)
            written.append(target)
    return written
