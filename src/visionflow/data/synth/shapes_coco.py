"""Write shapes scenes as a COCO dataset: ``<split>.json`` + ``images/<split>/*.png``.

Layout (the same one acquired COCO datasets use)::

    <out>/train.json  <out>/val.json  <out>/test.json
    <out>/images/train/000000.png ...

Annotations carry the visible (post-occlusion) mask as compressed RLE, its
tight ``bbox`` and ``area``. The output is byte-identical for equal params.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from visionflow.data.coco import dump_json, encode_mask
from visionflow.data.images import write_png
from visionflow.data.synth.parallel import map_scenes
from visionflow.data.synth.shapes import Scene, ShapesSceneSpec, render_scene, scene_rng


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels set in a bool (H, W) mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


def scene_annotations(scene: Scene, image_id: int, first_annotation_id: int) -> list[dict]:
    annotations = []
    for offset, instance in enumerate(i for i in scene.instances if i.mask.any()):
        annotations.append({
            "id": first_annotation_id + offset,
            "image_id": image_id,
            "category_id": instance.category_index + 1,
            "bbox": mask_bbox(instance.mask),
            "area": int(instance.mask.sum()),
            "iscrowd": 0,
            "segmentation": encode_mask(instance.mask),
        })
    return annotations


def write_coco_scenes(out_dir: str | Path, splits: Mapping[str, int], seed: int, image_size: int,
                      categories: list[dict], render: Callable[[np.random.Generator], Any],
                      annotate: Callable[[Any, int, int], list[dict]], progress: bool = True,
                      split_counts: Callable[[list[dict]], dict[str, int]] | None = None,
                      workers: int | None = None) -> dict[str, dict[str, int]]:
    """Render ``splits`` scenes into a COCO dataset in ``out_dir`` (replaced atomically).

    ``render(rng)`` draws one scene (with an ``image`` uint8 (S, S, 3)) from the scene's own
    seeded generator; ``annotate(scene, image_id, first_annotation_id)`` lists its COCO
    annotations. Scenes are rendered by ``workers`` processes (None: every core); the files
    are the same for any count. Returns images and annotations per split, plus
    ``split_counts(annotations)``.
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    def render_and_write(job: tuple[str, int]) -> list[dict]:
        split, index = job
        scene = render(scene_rng(seed, split, index))
        write_png(staging / f"images/{split}/{index:06d}.png", scene.image)
        return annotate(scene, index + 1, 1)  # ids renumbered across the split below

    jobs = [(split, index) for split, n_images in splits.items() for index in range(n_images)]
    per_scene = iter(map_scenes(render_and_write, jobs, workers, f"synthesize {out_dir.name}", progress))
    counts = {}
    for split, n_images in splits.items():
        images, annotations = [], []
        for index in range(n_images):
            images.append({"id": index + 1, "file_name": f"images/{split}/{index:06d}.png",
                           "width": image_size, "height": image_size})
            for annotation in next(per_scene):
                annotations.append({**annotation, "id": len(annotations) + 1})
        dump_json(staging / f"{split}.json",
                  {"images": images, "annotations": annotations, "categories": categories})
        counts[split] = {"images": len(images), "annotations": len(annotations),
                         **(split_counts(annotations) if split_counts else {})}
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return counts


def write_shapes_coco(out_dir: str | Path, spec: ShapesSceneSpec, splits: Mapping[str, int],
                      seed: int, progress: bool = True, workers: int | None = None) -> dict[str, dict[str, int]]:
    """Render every split into ``out_dir`` (replaced atomically); returns counts per split."""
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(spec.classes)]
    return write_coco_scenes(out_dir, splits, seed, spec.image_size, categories,
                             lambda rng: render_scene(rng, spec), scene_annotations, progress,
                             workers=workers)


def write_shapes_from_params(synth: Any, out_dir: str | Path, progress: bool = True,
                             workers: int | None = None) -> dict[str, dict[str, int]]:
    """The dataset a family's ``<task>.synth`` params (``config.ShapesSynthParams``) describe."""
    fields = synth.model_dump()
    seed, splits = fields.pop("seed"), fields.pop("splits")
    spec = ShapesSceneSpec(**{**fields, "classes": tuple(fields["classes"])})
    return write_shapes_coco(out_dir, spec, splits, seed, progress=progress, workers=workers)
