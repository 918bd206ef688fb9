"""The self-supervision family's synthetic set: unlabelled scenes, a labelled probe set (one
folder per class) and COCO scenes for the label-efficiency report, all from the shapes
generator; the layout is described in :mod:`visionflow.tasks.selfsup.data`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visionflow.data.coco import dump_json
from visionflow.data.images import write_png
from visionflow.data.synth.shapes import Scene, ShapesSceneSpec, render_scene, scene_rng
from visionflow.data.synth.shapes_coco import scene_annotations

INDEX_FILE = "index.json"


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
