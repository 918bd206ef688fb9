"""Write shapes scenes as a COCO dataset: ``<split>.json`` + ``images/<split>/*.png``.

Layout (the same one acquired COCO datasets use)::

    <out>/train.json  <out>/val.json  <out>/test.json
    <out>/images/train/000000.png ...

Annotations carry the visible (post-occlusion) mask as compressed RLE, its
tight ``bbox`` and ``area``. The output is byte-identical for equal params.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from visionflow.data.coco import dump_json, encode_mask
from visionflow.data.images import write_png
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


def write_shapes_coco(out_dir: str | Path, spec: ShapesSceneSpec, splits: Mapping[str, int],
                      seed: int, progress: bool = True) -> dict[str, dict[str, int]]:
    """Render every split into ``out_dir`` (replaced atomically); returns counts per split."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(spec.classes)]
    counts = {}
    total = sum(splits.values())
    with tqdm(total=total, desc=f"synthesize {out_dir.name}", disable=not progress,
              unit="img") as bar:
        for split, n_images in splits.items():
            images, annotations = [], []
            for index in range(n_images):
                scene = render_scene(scene_rng(seed, split, index), spec)
                file_name = f"images/{split}/{index:06d}.png"
                write_png(staging / file_name, scene.image)
                images.append({"id": index + 1, "file_name": file_name,
                               "width": spec.image_size, "height": spec.image_size})
                annotations += scene_annotations(scene, index + 1, len(annotations) + 1)
                bar.update()
            dump_json(staging / f"{split}.json",
                      {"images": images, "annotations": annotations, "categories": categories})
            counts[split] = {"images": len(images), "annotations": len(annotations)}
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return counts
