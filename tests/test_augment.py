"""Augmentation pipelines from params and the label-alignment check."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from visionflow.augment import build_transforms, geometric_mask_agreement
from visionflow.config import ConfigError, TransformSpec
from visionflow.data.synth.shapes import ShapesSceneSpec, render_scene, scene_rng


def scene_and_labels():
    scene = render_scene(scene_rng(0, "train", 2), ShapesSceneSpec(image_size=48, min_objects=3))
    labels = np.zeros(scene.image.shape[:2], np.uint8)
    for instance in scene.instances:
        labels[instance.mask] = instance.category_index + 1
    return scene.image, labels


GEOMETRY = [TransformSpec(name="HorizontalFlip", p=0.5),
            TransformSpec(name="Affine", p=1.0, kwargs={"rotate": [-30, 30], "scale": [0.8, 1.2]}),
            TransformSpec(name="ColorJitter", p=1.0)]


def test_builds_from_names_and_is_seeded():
    image, labels = scene_and_labels()
    first = build_transforms(GEOMETRY, "x.augment", seed=1)(image=image, mask=labels)
    second = build_transforms(GEOMETRY, "x.augment", seed=1)(image=image, mask=labels)
    assert np.array_equal(first["image"], second["image"]) and np.array_equal(first["mask"], second["mask"])


def test_unknown_transform_and_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match=r"x.augment\[1\].name: unknown albumentations transform "
                                          r"'HorizntalFlip' \(did you mean 'HorizontalFlip'\?\)"):
        build_transforms([TransformSpec(name="VerticalFlip"), TransformSpec(name="HorizntalFlip")], "x.augment")
    with pytest.raises(ConfigError, match=r"x.augment\[0\].kwargs: invalid arguments for Affine"):
        build_transforms([TransformSpec(name="Affine", kwargs={"scale": "big"})], "x.augment")


def test_aligned_pipeline_passes_the_check():
    image, labels = scene_and_labels()
    assert geometric_mask_agreement(GEOMETRY, image, labels, trials=4) > 0.99


class ShiftImageOnly(A.DualTransform):
    """A broken geometric transform: moves the image, forgets the mask."""

    def apply(self, img, **params):
        return np.roll(img, 6, axis=1)

    def apply_to_mask(self, mask, **params):
        return mask

    def get_transform_init_args_names(self):
        return ()


def test_misaligned_pipeline_fails_the_check(monkeypatch):
    monkeypatch.setattr(A, "ShiftImageOnly", ShiftImageOnly, raising=False)
    image, labels = scene_and_labels()
    agreement = geometric_mask_agreement([TransformSpec(name="ShiftImageOnly")], image, labels, trials=2)
    assert agreement < 0.95
