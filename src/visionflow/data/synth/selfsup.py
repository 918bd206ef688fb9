"""The self-supervision family's synthetic set: unlabelled scenes, a labelled probe set (one
folder per class) and COCO scenes for the label-efficiency report, all from the shapes
generator; the layout is described in :mod:`visionflow.tasks.selfsup.data`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from visionflow.data.coco import dump_json
from visionflow.data.images import write_png
from visionflow.data.synth.parallel import map_scenes
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
                          background: str = "plain", progress: bool = True,
                          workers: int | None = None) -> dict[str, Any]:
    """Render the unlabelled, probe and segmentation sets into ``out_dir`` (replaced atomically),
    by ``workers`` processes (None: every core; the files are the same for any count)."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    single = ShapesSceneSpec(**{**spec.__dict__, "min_objects": 1, "max_objects": 1, "empty_fraction": 0.0})

    def render_and_write(job: tuple[str, int]) -> Any:
        """unlabelled: None; probe_<split>: the object's class; segmentation_<split>: annotations."""
        split, index = job
        if split == "unlabelled":
            write_png(staging / "unlabelled" / f"{index:06d}.png", render(spec, background, seed, split, index).image)
            return None
        if split.startswith("probe_"):
            scene = render(single, background, seed, split, index)
            if len(scene.instances) != 1:  # the renderer could not place the object
                raise RuntimeError(f"probe scene {split.removeprefix('probe_')}/{index}: expected one object, "
                                   f"got {len(scene.instances)}; widen the radius range")
            name = spec.classes[scene.instances[0].category_index]
            write_png(staging / "probe" / split.removeprefix("probe_") / name / f"{index:06d}.png", scene.image)
            return name
        scene = render(spec, background, seed, split, index)
        write_png(staging / "segmentation" / f"images/{split.removeprefix('segmentation_')}/{index:06d}.png",
                  scene.image)
        return scene_annotations(scene, index + 1, 1)  # ids renumbered across the split below

    order = ["unlabelled", "probe_train", "probe_test", "segmentation_train", "segmentation_test"]
    jobs = [(split, index) for split in order for index in range(splits.get(split, 0))]
    per_scene = iter(map_scenes(render_and_write, jobs, workers, "synthesize selfsup", progress))
    counts: dict[str, Any] = {}
    for _ in range(splits.get("unlabelled", 0)):
        next(per_scene)
    counts["train"] = {"images": splits.get("unlabelled", 0)}  # pretraining: unlabelled images
    for split in ("train", "test"):
        per_class = dict.fromkeys(spec.classes, 0)
        for _ in range(splits.get(f"probe_{split}", 0)):
            per_class[next(per_scene)] += 1
        counts[f"probe_{split}"] = per_class
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(spec.classes)]
    for split in ("train", "test"):
        images, annotations = [], []
        for index in range(splits.get(f"segmentation_{split}", 0)):
            images.append({"id": index + 1, "file_name": f"images/{split}/{index:06d}.png",
                           "width": spec.image_size, "height": spec.image_size})
            for annotation in next(per_scene):
                annotations.append({**annotation, "id": len(annotations) + 1})
        dump_json(staging / "segmentation" / f"{split}.json",
                  {"images": images, "annotations": annotations, "categories": categories})
        counts[f"segmentation_{split}"] = {"images": len(images), "annotations": len(annotations)}
    dump_json(staging / INDEX_FILE, {"classes": list(spec.classes), "image_size": spec.image_size,
                                     "background": background, "seed": seed, "counts": counts})
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return counts
