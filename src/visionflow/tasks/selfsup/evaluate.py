"""Score a pretrained backbone: probes against baselines, an embedding plot, label efficiency.

Probes (kNN and a linear classifier) run on the frozen encoder's pooled
embeddings of a labelled probe set, and the same probes on a randomly
initialised encoder of the same architecture and on raw pixels, so the gain
from pretraining is measured against both. The label-efficiency report trains
segmentation on fractions of the labels from scratch and from the backbone.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visionflow.tasks.selfsup.params import SelfsupParams
from visionflow.data.batching import image_to_tensor
from visionflow.data.coco import load_coco, semantic_mask
from visionflow.data.images import read_rgb
from visionflow.losses import cross_entropy_loss
from visionflow.metrics.segmentation import confusion_matrix, mean_iou
from visionflow.models.unet import UNet, UNetEncoder
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.selfsup.contrastive import EncoderEmbedding
from visionflow.tasks.selfsup.data import ProbeSet, load_image, load_probe_set, probe_root
from visionflow.tasks.selfsup.probes import knn_accuracy, linear_probe_accuracy, pca_2d

REPRESENTATIONS = ("pretrained", "random_init", "raw_pixels")


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """float32 (N, 3, size, size) in [0, 1]."""
    return torch.stack([image_to_tensor(load_image(p, size)) for p in paths])


@torch.no_grad()
def embed_all(embedding: torch.nn.Module, images: torch.Tensor, device: torch.device,
              batch_size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, D) on the CPU, in eval mode."""
    embedding = embedding.to(device).eval()
    chunks = [embedding(images[i:i + batch_size].to(device).contiguous(memory_format=torch.channels_last))
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).cpu()


def raw_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3 * size * size): the images, area-resized, flattened."""
    return F.interpolate(images, size=(size, size), mode="area").flatten(1)


def random_init_embedding(model: dict[str, Any], seed: int) -> EncoderEmbedding:
    torch.manual_seed(seed)
    return EncoderEmbedding(UNetEncoder(tuple(model["channels"]), tuple(model["dilations"])))


def run_probes(features: dict[str, tuple[torch.Tensor, torch.Tensor]], probe: ProbeSet,
               params: SelfsupParams) -> dict[str, dict[str, float]]:
    train_y = torch.tensor(probe.train_labels)
    test_y = torch.tensor(probe.test_labels)
    scores = {}
    for name, (train_x, test_x) in features.items():
        scores[name] = {
            "linear_probe_accuracy": linear_probe_accuracy(
                train_x, train_y, test_x, test_y, params.evaluate.linear_probe_weight_decay,
                params.evaluate.linear_probe_max_iter),
            "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, params.evaluate.knn_k),
        }
    return scores


def evaluate_selfsup(module: Any, data_root: Path, raw_dir: Path, out: EvalOutputs, device: torch.device,
                     params: SelfsupParams) -> dict[str, Any]:
    started = time.perf_counter()
    size, batch = params.data.image_size, params.evaluate.batch_size
    probe = load_probe_set(probe_root(data_root, raw_dir, params.data.probe))
    train_images, test_images = load_images(probe.train_paths, size), load_images(probe.test_paths, size)
    # The architecture and seed the checkpoint was trained with (evaluate does not read
    # selfsup.model or selfsup.train: a new checkpoint reruns it).
    model, seed = dict(module.hparams["model"]), int(module.hparams["optim"]["seed"])
    pretrained = module.net.embedding
    random_init = random_init_embedding(model, seed)
    features = {
        "pretrained": (embed_all(pretrained, train_images, device, batch),
                       embed_all(pretrained, test_images, device, batch)),
        "random_init": (embed_all(random_init, train_images, device, batch),
                        embed_all(random_init, test_images, device, batch)),
        "raw_pixels": (raw_pixels(train_images, params.evaluate.raw_pixels_size),
                       raw_pixels(test_images, params.evaluate.raw_pixels_size)),
    }
    scores = run_probes(features, probe, params)
    probe_seconds = time.perf_counter() - started

    best = scores["pretrained"]
    metrics: dict[str, Any] = {
        "linear_probe_accuracy": best["linear_probe_accuracy"],
        "knn_accuracy": best["knn_accuracy"],
        "random_init": scores["random_init"],
        "raw_pixels": scores["raw_pixels"],
        "linear_probe_gain_over_random_init": best["linear_probe_accuracy"]
        - scores["random_init"]["linear_probe_accuracy"],
        "linear_probe_gain_over_raw_pixels": best["linear_probe_accuracy"]
        - scores["raw_pixels"]["linear_probe_accuracy"],
        "probe": {"source": params.data.probe, "classes": probe.class_names,
                  "train_images": len(probe.train_paths), "test_images": len(probe.test_paths),
                  "chance_accuracy": float(np.bincount(probe.test_labels).max() / len(probe.test_labels))},
    }

    out.reports_dir.mkdir(parents=True, exist_ok=True)
    out.plots_dir.mkdir(parents=True, exist_ok=True)
    save_embedding_plot(out.reports_dir / "embeddings.png",
                        {"pretrained": features["pretrained"][1], "random init": features["random_init"][1]},
                        probe.test_labels, probe.class_names)
    with open(out.plots_dir / "probes.csv", "w", newline="") as f:  # a bar chart in `dvc plots`
        writer = csv.writer(f)
        writer.writerow(["representation", "linear_probe_accuracy", "knn_accuracy"])
        for name in REPRESENTATIONS:
            writer.writerow([name, f"{scores[name]['linear_probe_accuracy']:.6f}",
                             f"{scores[name]['knn_accuracy']:.6f}"])

    seconds = {"probes": round(probe_seconds, 1)}
    fractions = params.evaluate.label_fractions
    if fractions:
        started = time.perf_counter()
        encoder_state = {k: v.detach().cpu() for k, v in module.net.encoder.state_dict().items()}
        rows = label_efficiency(data_root / "segmentation", encoder_state, model, fractions,
                                params.evaluate.transfer_steps, params.evaluate.transfer_batch_size,
                                params.evaluate.transfer_lr, seed, device)
        metrics["label_efficiency"] = {f"{row['fraction']:g}": {
            k: v for k, v in row.items() if k != "fraction"} for row in rows}
        smallest = rows[0]
        metrics["smallest_fraction_mIoU_gain"] = smallest["pretrained_mIoU"] - smallest["scratch_mIoU"]
        with open(out.plots_dir / "label_efficiency.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["fraction", "labelled_images", "scratch_mIoU", "pretrained_mIoU"])
            for row in rows:
                writer.writerow([f"{row['fraction']:g}", row["labelled_images"],
                                 f"{row['scratch_mIoU']:.6f}", f"{row['pretrained_mIoU']:.6f}"])
        save_label_efficiency_plot(out.reports_dir / "label_efficiency.png", rows)
        seconds["label_efficiency"] = round(time.perf_counter() - started, 1)
    metrics["seconds"] = seconds
    return metrics


# --- label efficiency: segmentation from scratch vs from the backbone ---------------------------
#
# Both runs of a fraction see the same images in the same order, start from the same
# decoder initialisation and train for the same number of steps; the only difference
# is whether the encoder starts random or from the pretrained weights. A short, fixed
# schedule keeps this affordable on a CPU.
def load_semantic_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A COCO split as ``images (N, 3, H, W)`` float32 in [0, 1], ``labels (N, H, W)`` int64
    (0 background, class i + 1 for the file's i-th category) and the class count with background.

    The label-efficiency scenes are small and same-sized, so they are held in memory.
    """
    path = root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' not found; run `visionflow synthesize --task selfsup`")
    coco = load_coco(path, root=root)
    label_of = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}
    images, labels = [], []
    for record in coco.images:
        images.append(image_to_tensor(read_rgb(coco.image_path(record))))
        labels.append(torch.from_numpy(semantic_mask(coco.annotations_of(record["id"]), record["height"],
                                                     record["width"], label_of)).long())
    return torch.stack(images), torch.stack(labels), len(label_of) + 1


def train_segmentation(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       model: dict[str, Any], encoder_state: dict[str, torch.Tensor] | None,
                       steps: int, batch_size: int, lr: float, seed: int,
                       device: torch.device) -> UNet:
    """A U-Net fitted for ``steps`` AdamW/one-cycle steps on ``images (N, 3, H, W)``, ``labels (N, H, W)``.

    Batches are drawn with replacement (seeded) and flipped at random, so tiny
    label sets still fill every batch.
    """
    torch.manual_seed(seed)
    net = UNet(num_classes, tuple(model["channels"]), tuple(model["dilations"]))
    if encoder_state is not None:
        net.encoder.load_state_dict(encoder_state, strict=True)
    net = net.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = images[pick], labels[pick]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
        loss = cross_entropy_loss(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"label-efficiency training: non-finite loss {float(loss)}; "
                                     f"lower selfsup.evaluate.transfer_lr ({lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def segmentation_miou(net: UNet, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      device: torch.device, batch_size: int = 64) -> float:
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        prediction = net(x).argmax(1).cpu()
        confusion += confusion_matrix(prediction, labels[start:start + batch_size], num_classes)
    return mean_iou(confusion)


def label_efficiency(segmentation_root: Path, encoder_state: dict[str, torch.Tensor], model: dict[str, Any],
                     fractions: list[float], steps: int, batch_size: int, lr: float, seed: int,
                     device: torch.device) -> list[dict[str, Any]]:
    """One row per fraction: labelled image count and test mIoU from scratch and pretrained.

    Subsets are nested (the 5 % images are among the 25 % ones), drawn by a seeded
    permutation of the training split.
    """
    train_images, train_labels, num_classes = load_semantic_split(segmentation_root, "train")
    test_images, test_labels, _ = load_semantic_split(segmentation_root, "test")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_images)))
    rows = []
    for fraction in fractions:
        count = max(1, math.ceil(fraction * len(train_images)))
        images, labels = train_images[order[:count]], train_labels[order[:count]]
        row: dict[str, Any] = {"fraction": fraction, "labelled_images": count}
        for name, state in (("scratch", None), ("pretrained", encoder_state)):
            started = time.perf_counter()
            net = train_segmentation(images, labels, num_classes, model, state, steps, batch_size, lr,
                                     seed, device)
            row[f"{name}_mIoU"] = segmentation_miou(net, test_images, test_labels, num_classes, device)
            row[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return rows


def save_embedding_plot(path: Path, test_features: dict[str, torch.Tensor], labels: list[int],
                        class_names: list[str]) -> None:
    """One PCA scatter per representation, points coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels_array = np.asarray(labels)
    fig, axes = plt.subplots(1, len(test_features), figsize=(5 * len(test_features), 4.5))
    for ax, (name, features) in zip(np.atleast_1d(axes), test_features.items()):
        points = pca_2d(features).numpy()
        for label, class_name in enumerate(class_names):
            chosen = labels_array == label
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, label=class_name)
        ax.set(title=f"{name} encoder: probe test set, PCA", xlabel="PC 1", ylabel="PC 2")
        ax.legend(markerscale=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_label_efficiency_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    fractions = [100 * row["fraction"] for row in rows]
    for name, marker in (("scratch", "o"), ("pretrained", "s")):
        ax.plot(fractions, [row[f"{name}_mIoU"] for row in rows], marker=marker, label=f"from {name}")
    ax.set(xscale="log", xlabel="labelled training images (%)", ylabel="test mIoU",
           title="segmentation: label efficiency")
    ax.set_xticks(fractions, [f"{f:g}%\n({row['labelled_images']})" for f, row in zip(fractions, rows)])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
