"""Write figure scenes as a COCO keypoints dataset: ``<split>.json`` + ``images/<split>/*.png``.

One keypoint category (the figure model) carries ``keypoints`` (names),
``skeleton`` (1-based index pairs, as COCO has it) and ``flip_pairs`` (name
pairs; not a COCO field, read by the pose family when params name none).
Annotations carry ``keypoints`` [x, y, v] * K (x = y = 0 where v = 0),
``num_keypoints`` (labelled, v > 0), the visible mask as compressed RLE and its
tight ``bbox`` and ``area``, like COCO person annotations. Byte-identical for
equal params.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from visionflow.data.coco import dump_json, encode_mask
from visionflow.data.images import write_png
from visionflow.data.synth.figures import FIGURES, FigureModel, FigureScene, FigureSceneSpec, render_figure_scene
from visionflow.data.synth.shapes import scene_rng
from visionflow.data.synth.shapes_coco import mask_bbox

KEYPOINT_DECIMALS = 3  # sub-pixel positions, compact files


def keypoint_category(model: FigureModel, category_id: int = 1) -> dict:
    index = {name: i + 1 for i, name in enumerate(model.keypoints)}
    return {"id": category_id, "name": model.name, "supercategory": "figure",
            "keypoints": list(model.keypoints),
            "skeleton": [[index[a], index[b]] for a, b in model.skeleton],
            "flip_pairs": [list(pair) for pair in model.flip_pairs]}


def figure_annotations(scene: FigureScene, image_id: int, first_annotation_id: int,
                       category_id: int = 1) -> list[dict]:
    annotations = []
    for figure in scene.figures:
        if not figure.mask.any():
            continue
        keypoints = []
        for x, y, v in figure.keypoints.tolist():
            keypoints += [round(x, KEYPOINT_DECIMALS), round(y, KEYPOINT_DECIMALS), int(v)]
        annotations.append({
            "id": first_annotation_id + len(annotations),
            "image_id": image_id,
            "category_id": category_id,
            "bbox": mask_bbox(figure.mask),
            "area": int(figure.mask.sum()),
            "iscrowd": 0,
            "keypoints": keypoints,
            "num_keypoints": int((figure.keypoints[:, 2] > 0).sum()),
            "segmentation": encode_mask(figure.mask),
        })
    return annotations


def write_figures_coco(out_dir: str | Path, spec: FigureSceneSpec, splits: Mapping[str, int], seed: int,
                       progress: bool = True) -> dict[str, dict[str, int]]:
    """Render every split into ``out_dir`` (replaced atomically); returns counts per split."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    categories = [keypoint_category(FIGURES[spec.figure])]
    counts = {}
    with tqdm(total=sum(splits.values()), desc=f"synthesize {out_dir.name}", disable=not progress,
              unit="img") as bar:
        for split, n_images in splits.items():
            images, annotations = [], []
            for index in range(n_images):
                scene = render_figure_scene(scene_rng(seed, split, index), spec)
                file_name = f"images/{split}/{index:06d}.png"
                write_png(staging / file_name, scene.image)
                images.append({"id": index + 1, "file_name": file_name,
                               "width": spec.image_size, "height": spec.image_size})
                annotations += figure_annotations(scene, index + 1, len(annotations) + 1)
                bar.update()
            dump_json(staging / f"{split}.json",
                      {"images": images, "annotations": annotations, "categories": categories})
            counts[split] = {"images": len(images), "annotations": len(annotations),
                             "labelled_keypoints": sum(a["num_keypoints"] for a in annotations)}
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return counts
