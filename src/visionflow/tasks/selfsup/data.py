"""Self-supervision data: unlabelled image folders, two augmented views, labelled probe folders.

The synthetic set (``write_selfsup_dataset``) is laid out as a user's own data would be::

    <root>/index.json                         what was written (counts, classes)
    <root>/unlabelled/000000.png ...          pretraining images (any image folder)
    <root>/probe/train/<class>/000000.png     labelled probe set: one subfolder per class
    <root>/probe/test/<class>/000000.png
    <root>/segmentation/{train,test}.json     COCO scenes for the label-efficiency report
    <root>/segmentation/images/{train,test}/000000.png

An acquired ``image_folder`` dataset can stand in for the unlabelled images
(``selfsup.data.source`` / ``extra_unlabelled``) or the probe set
(``selfsup.data.probe``); a probe folder either has ``train/`` and ``test/``
subfolders or is split in half per class (sorted file names, alternate files).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from visionflow.data.batching import image_to_tensor
from visionflow.data.coco import dump_json
from visionflow.data.images import list_images, read_rgb, write_png
from visionflow.data.synth.shapes import Scene, ShapesSceneSpec, render_scene, scene_rng
from visionflow.data.synth.shapes_coco import scene_annotations

INDEX_FILE = "index.json"


# --- writing the synthetic set ---------------------------------------------------------------


def plain_background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene's objects on a plain background: one random colour, a gentle gradient, noise.

    The shapes generator's striped and blotchy backgrounds tell scenes apart more
    easily than their objects do, so contrastive learning on them learns
    backgrounds. The objects (shape, colour, texture, position, size, occlusion)
    and their masks stay exactly as rendered. Returns uint8 (H, W, 3).
    """
    height, width = scene.image.shape[:2]
    foreground = np.zeros((height, width), bool)
    for instance in scene.instances:
        foreground |= instance.mask
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    gradient = rng.uniform(-30, 30) * (xx - 0.5) + rng.uniform(-30, 30) * (yy - 0.5)
    background = (rng.integers(0, 256, size=3).astype(np.float32) + gradient[..., None]
                  + rng.normal(0, rng.uniform(2, 8), size=(height, width, 3)))
    image = np.where(foreground[..., None], scene.image.astype(np.float32), background)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render(spec: ShapesSceneSpec, background: str, seed: int, split: str, index: int) -> Scene:
    """One seeded scene; ``background`` is ``scene`` (the generator's own) or ``plain``."""
    scene = render_scene(scene_rng(seed, split, index), spec)
    if background == "plain":
        # A stream of its own (not the scene's), keyed by the whole split name.
        scene.image = plain_background(scene, np.random.default_rng([seed, index, 0xBA5E, *split.encode()]))
    return scene


def write_selfsup_dataset(out_dir: str | Path, spec: ShapesSceneSpec, splits: dict[str, int], seed: int,
                          background: str = "plain", progress: bool = True) -> dict[str, Any]:
    """Render the unlabelled, probe and segmentation sets into ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    single = ShapesSceneSpec(**{**spec.__dict__, "min_objects": 1, "max_objects": 1, "empty_fraction": 0.0})
    counts: dict[str, Any] = {}
    with tqdm(total=sum(splits.values()), desc="synthesize selfsup", disable=not progress,
              unit="img") as bar:
        for index in range(splits.get("unlabelled", 0)):
            write_png(staging / "unlabelled" / f"{index:06d}.png",
                      render(spec, background, seed, "unlabelled", index).image)
            bar.update()
        counts["train"] = {"images": splits.get("unlabelled", 0)}  # pretraining: unlabelled images
        for split in ("train", "test"):
            per_class = dict.fromkeys(spec.classes, 0)
            for index in range(splits.get(f"probe_{split}", 0)):
                scene = render(single, background, seed, f"probe_{split}", index)
                if len(scene.instances) != 1:  # the renderer could not place the object
                    raise RuntimeError(f"probe scene {split}/{index}: expected one object, got "
                                       f"{len(scene.instances)}; widen the radius range")
                name = spec.classes[scene.instances[0].category_index]
                write_png(staging / "probe" / split / name / f"{index:06d}.png", scene.image)
                per_class[name] += 1
                bar.update()
            counts[f"probe_{split}"] = per_class
        categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                      for i, name in enumerate(spec.classes)]
        for split in ("train", "test"):
            images, annotations = [], []
            for index in range(splits.get(f"segmentation_{split}", 0)):
                scene = render(spec, background, seed, f"segmentation_{split}", index)
                file_name = f"images/{split}/{index:06d}.png"
                write_png(staging / "segmentation" / file_name, scene.image)
                images.append({"id": index + 1, "file_name": file_name,
                               "width": spec.image_size, "height": spec.image_size})
                annotations += scene_annotations(scene, index + 1, len(annotations) + 1)
                bar.update()
            dump_json(staging / "segmentation" / f"{split}.json",
                      {"images": images, "annotations": annotations, "categories": categories})
            counts[f"segmentation_{split}"] = {"images": len(images), "annotations": len(annotations)}
    dump_json(staging / INDEX_FILE, {"classes": list(spec.classes), "image_size": spec.image_size,
                                     "background": background, "seed": seed, "counts": counts})
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return counts


# --- reading -----------------------------------------------------------------------------------


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB: the file, resized (area interpolation) if it is another size."""
    image = read_rgb(path)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def unlabelled_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted); an error names an empty folder."""
    images = list_images(folder)
    if not images:
        raise FileNotFoundError(f"{folder}: no images found (png, jpg, ...) for self-supervision")
    return images


@dataclass(frozen=True)
class ProbeSet:
    """A labelled image folder split in two. ``labels`` index ``class_names``."""

    class_names: list[str]
    train_paths: list[Path]
    train_labels: list[int]
    test_paths: list[Path]
    test_labels: list[int]


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_probe_set(root: Path) -> ProbeSet:
    """One subfolder per class, either under ``train/`` and ``test/`` or split in half here."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: probe image folder not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = sorted({p.name for split in ("train", "test") for p in _class_folders(root / split)})
        split_files = {split: [(path, names.index(folder.name)) for folder in _class_folders(root / split)
                               for path in list_images(folder)] for split in ("train", "test")}
    else:
        folders = _class_folders(root)
        names = [f.name for f in folders]
        split_files = {"train": [], "test": []}
        for label, folder in enumerate(folders):
            files = list_images(folder)
            split_files["train"] += [(p, label) for p in files[0::2]]
            split_files["test"] += [(p, label) for p in files[1::2]]
    if len(names) < 2:
        raise ValueError(f"{root}: a probe set needs at least 2 class subfolders, found {names}")
    for split, files in split_files.items():
        if not files:
            raise ValueError(f"{root}: the probe's {split} split has no images")
    return ProbeSet(names, [p for p, _ in split_files["train"]], [y for _, y in split_files["train"]],
                    [p for p, _ in split_files["test"]], [y for _, y in split_files["test"]])


def resolve_sources(data_root: Path, raw_dir: Path, source: str, extra: list[str]) -> list[Path]:
    """Folders of unlabelled images: the synthetic ``unlabelled/`` or acquired datasets by name."""
    folders = []
    for index, name in enumerate([source, *extra]):
        key = "selfsup.data.source" if index == 0 else f"selfsup.data.extra_unlabelled[{index - 1}]"
        folder = data_root / "unlabelled" if name == "synthetic" else raw_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}: {folder} not found; declare {name!r} under acquire.datasets "
                                    f"with format: image_folder and run `visionflow acquire`")
        folders.append(folder)
    return folders


def probe_root(data_root: Path, raw_dir: Path, probe: str) -> Path:
    return data_root / "probe" if probe == "synthetic" else raw_dir / probe


# --- two views ----------------------------------------------------------------------------------


def two_views(transform: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent draws of ``transform`` (an albumentations pipeline) on one image.

    The pipeline's own seeded generator advances between the calls, so the views
    differ; a pipeline built with the same seed replays the same pairs.
    """
    return transform(image=image)["image"], transform(image=image)["image"]


class TwoViewDataset(Dataset):
    """Items are (view_1, view_2): float32 (3, S, S) in [0, 1], two augmentations of one image."""

    def __init__(self, paths: list[Path], size: int, transform: Any):
        self.paths, self.size, self.transform = list(paths), size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = two_views(self.transform, load_image(self.paths[index], self.size))
        for view in (first, second):
            if view.shape[:2] != (self.size, self.size):
                raise ValueError(f"selfsup.augment: views must stay {self.size}x{self.size} "
                                 f"(selfsup.data.image_size), got {view.shape[1]}x{view.shape[0]} "
                                 f"for {self.paths[index]}")
        return image_to_tensor(first), image_to_tensor(second)


def reseed_worker_transform(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream.

    Every worker starts from a copy of the same seeded pipeline, which would draw
    the same augmentations in every worker (and, without persistent workers,
    every epoch). torch seeds each worker from the loader's generator, so this
    stays reproducible.
    """
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class FixedPairs(Dataset):
    """Pairs drawn once (seeded) and kept: a validation loss that means the same every epoch."""

    def __init__(self, source: TwoViewDataset):
        self.pairs = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pairs[index]


def split_train_val(paths: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Every k-th image (k = round(1 / val_fraction)) is held out; at least 2 on each side."""
    step = max(2, round(1 / val_fraction))
    val = paths[::step]
    train = [p for i, p in enumerate(paths) if i % step != 0]
    if len(val) < 2 or len(train) < 2:
        raise ValueError(f"selfsup.data: {len(paths)} unlabelled images are too few to hold out a "
                         f"validation share of {val_fraction}")
    return train, val


class SelfsupDataModule:
    def __init__(self, folders: list[Path], size: int, val_fraction: float, batch_size: int,
                 train_transform: Any, val_transform: Any, num_workers: int = 0, seed: int = 0):
        paths = [p for folder in folders for p in unlabelled_images(folder)]
        train_paths, val_paths = split_train_val(paths, val_fraction)
        if len(train_paths) < batch_size:
            raise ValueError(f"selfsup.train.batch_size {batch_size} is larger than the "
                             f"{len(train_paths)} unlabelled training images")
        self.size, self.batch_size = size, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train = TwoViewDataset(train_paths, size, train_transform)
        self.val = FixedPairs(TwoViewDataset(val_paths, size, val_transform))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, generator=generator,
                          worker_init_fn=reseed_worker_transform,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        # NT-Xent needs >= 2 rows: never leave a last batch of one.
        batch = max(2, min(2 * self.batch_size, len(self.val)))
        return DataLoader(self.val, batch_size=batch, shuffle=False, drop_last=len(self.val) % batch == 1)


def index_of(data_root: Path) -> dict[str, Any]:
    path = data_root / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `visionflow synthesize --task selfsup`")
    return json.loads(path.read_text())
