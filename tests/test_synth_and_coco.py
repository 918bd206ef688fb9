"""Shapes synthesizer (determinism, exact masks) and COCO reading with errors that name things."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tree_hashes
from visionflow.constants import IGNORE_INDEX
from visionflow.data.coco import CocoFormatError, annotation_mask, encode_mask, load_coco, semantic_mask
from visionflow.data.images import ImageReadError
from visionflow.data.synth.shapes import ShapesSceneSpec, render_scene, scene_rng
from visionflow.data.synth.shapes_coco import write_shapes_coco

SPEC = ShapesSceneSpec(image_size=32, min_radius=4, max_radius=9)
SPLITS = {"train": 6, "test": 3}


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "shapes"
    write_shapes_coco(out, SPEC, SPLITS, seed=3, progress=False)
    return out


def test_same_seed_gives_byte_identical_files(shapes_dataset, tmp_path):
    again = tmp_path / "again"
    write_shapes_coco(again, SPEC, SPLITS, seed=3, progress=False)
    assert tree_hashes(again) == tree_hashes(shapes_dataset)
    other = tmp_path / "other"
    write_shapes_coco(other, SPEC, SPLITS, seed=4, progress=False)
    assert tree_hashes(other) != tree_hashes(shapes_dataset)


def test_masks_are_exact_disjoint_and_match_boxes(shapes_dataset):
    coco = load_coco(shapes_dataset / "train.json")
    assert [c["name"] for c in coco.categories] == list(SPEC.classes)
    for image in coco.images:
        union = np.zeros((image["height"], image["width"]), int)
        for annotation in coco.annotations_of(image["id"]):
            mask = annotation_mask(annotation, image["height"], image["width"])
            union += mask
            ys, xs = np.nonzero(mask)
            assert annotation["area"] == mask.sum()
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert union.max() <= 1  # visible parts never overlap


def test_scene_pixels_follow_the_masks():
    # Without noise, blur and texture every object is one flat colour: its mask is exactly its pixels.
    spec = ShapesSceneSpec(image_size=48, noise_std=0, blur_probability=0, texture_probability=0)
    scene = render_scene(scene_rng(0, "train", 1), spec)
    for instance in scene.instances:
        colours = scene.image[instance.mask].astype(int)
        assert np.ptp(colours, axis=0).max() <= 40  # flat fill + mild shading


def test_semantic_mask_paints_classes_and_ignores_crowds():
    mask_a = np.zeros((4, 4), bool)
    mask_a[:2] = True
    mask_b = np.zeros((4, 4), bool)
    mask_b[1:3, :2] = True
    annotations = [
        {"id": 1, "category_id": 7, "segmentation": encode_mask(mask_a)},
        {"id": 2, "category_id": 9, "segmentation": encode_mask(mask_b), "iscrowd": 1},
    ]
    labels = semantic_mask(annotations, 4, 4, {7: 1, 9: 2})
    assert labels[0].tolist() == [1, 1, 1, 1]
    assert labels[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 1, 1]
    assert labels[3].tolist() == [0, 0, 0, 0]


VALID = {
    "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
    "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9,
                     "iscrowd": 0}],
    "categories": [{"id": 1, "name": "thing"}],
}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(bbox=[1, 1, -3, 3]), "annotation id 5: field 'bbox' has negative width"),
    (lambda d: d["annotations"][0].update(bbox=[8, 1, 5, 3]), "annotation id 5: field 'bbox' [8, 1, 5, 3] lies outside"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 3]), "annotation id 5: field 'bbox' holds a non-finite"),
    (lambda d: d["annotations"][0].update(category_id=3), "annotation id 5: field 'category_id' refers to unknown category 3"),
    (lambda d: d["annotations"][0].update(image_id=2), "annotation id 5: field 'image_id' refers to unknown image 2"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id 5: missing field 'bbox'"),
    (lambda d: d["images"][0].pop("width"), "image 1: missing field 'width'"),
    (lambda d: d["images"][0].update(file_name="../x.png"), "image 1: field 'file_name' must be relative"),
    (lambda d: d.pop("categories"), "missing field 'categories'"),
])
def test_bad_coco_names_file_record_and_field(tmp_path, change, message):
    data = copy.deepcopy(VALID)
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError) as caught:
        load_coco(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_bad_image_names_the_file(tmp_path, shapes_dataset):
    from visionflow.tasks.segmentation.data import CocoSemanticDataset

    coco = load_coco(shapes_dataset / "test.json")
    broken = tmp_path / coco.images[0]["file_name"]
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    coco.root = tmp_path
    with pytest.raises(ImageReadError, match=f"{broken}: cannot decode image"):
        CocoSemanticDataset(coco)[0]
    coco.root = shapes_dataset
    coco.images[0]["width"] = 33
    with pytest.raises(ImageReadError, match="width 33"):
        CocoSemanticDataset(coco)[0]


def test_rle_string_counts_reads_what_pycocotools_writes():
    from pycocotools import mask as mask_utils

    from visionflow.data.coco import rle_string_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((height, width)) < rng.random()
        runs = rle_string_counts(encode_mask(mask)["counts"])
        assert sum(runs) == height * width
        assert mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)["counts"] == \
            encode_mask(mask)["counts"].encode()
    assert rle_string_counts("0d0") == [0, 20]  # a 4x5 mask of ones: no zeros, then 20 ones


@pytest.mark.parametrize("counts, message", [
    ("11", "runs sum to 2 pixels"),  # valid characters, wrong total: pycocotools fails later, naming nothing
    ("", "runs sum to 0"),  # pycocotools crashes the interpreter on this one
    ("0d", "ends inside a number"),
    ("0d0~", "character '~'"),
    ("zz", "character 'z'"),
    ([20, 61], "runs sum to 81"),
    ([-1, 81], "negative runs: 1"),
])
def test_corrupt_rle_counts_stop_loading_naming_file_and_annotation(tmp_path, counts, message):
    data = copy.deepcopy(VALID)
    data["annotations"][0]["segmentation"] = {"size": [8, 10], "counts": counts}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match="annotation id 5: field 'segmentation' RLE counts are corrupt") as caught:
        load_coco(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("key, record, message", [
    ("categories", "thing", "category ? (entry 0): must be an object, not str"),
    ("images", [1], "image ? (entry 0): must be an object, not list"),
    ("annotations", 5, "annotation id ? (entry 0): must be an object, not int"),
])
def test_a_record_that_is_not_an_object_is_named(tmp_path, key, record, message):
    data = copy.deepcopy(VALID)
    data[key] = [record]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        load_coco(path)


def test_train_and_val_categories_must_agree(tmp_path):
    from visionflow.data.coco import check_same_categories

    (tmp_path / "train.json").write_text(json.dumps(VALID))
    other = {**VALID, "categories": [{"id": 1, "name": "other"}]}
    (tmp_path / "val.json").write_text(json.dumps(other))
    check_same_categories(load_coco(tmp_path / "train.json"), load_coco(tmp_path / "train.json"))
    with pytest.raises(CocoFormatError, match=r"val.json: categories \[\(1, 'other'\)\] differ from .*train.json"):
        check_same_categories(load_coco(tmp_path / "train.json"), load_coco(tmp_path / "val.json"))


def test_a_split_without_annotations_warns(tmp_path, caplog):
    path = tmp_path / "test.json"
    path.write_text(json.dumps({**VALID, "annotations": []}))
    load_coco(path)
    assert f"{path}: 1 images but no annotations" in caplog.text
