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

from collections.abc import Mapping
from pathlib import Path

from visionflow.data.coco import encode_mask
from visionflow.data.synth.figures import FIGURES, FigureModel, FigureScene, FigureSceneSpec, render_figure_scene
from visionflow.data.synth.shapes_coco import mask_bbox, write_coco_scenes

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
                       progress: bool = True, workers: int | None = None) -> dict[str, dict[str, int]]:
    """Render every split into ``out_dir`` (replaced atomically); returns counts per split."""
    return write_coco_scenes(out_dir, splits, seed, spec.image_size, [keypoint_category(FIGURES[spec.figure])],
                             lambda rng: render_figure_scene(rng, spec), figure_annotations, progress,
                             lambda annotations: {"labelled_keypoints": sum(a["num_keypoints"]
                                                                            for a in annotations)},
                             workers=workers)
