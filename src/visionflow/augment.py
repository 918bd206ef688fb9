"""Albumentations pipelines built from params, and a check that labels stay aligned.

A family's ``augment:`` section is a list of transforms by albumentations class
name with their keyword arguments::

    augment:
      - {name: HorizontalFlip, p: 0.5}
      - {name: Affine, p: 0.7, kwargs: {scale: [0.8, 1.2], rotate: [-20, 20]}}

so anything albumentations offers is one line of params away.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np

from visionflow.config import ConfigError, TransformSpec


def build_transforms(specs: Sequence[TransformSpec], key_path: str, seed: int | None = None,
                     **compose_kwargs: Any):
    """An ``A.Compose`` of ``specs``; a bad name or argument raises ConfigError naming its key."""
    import albumentations as A

    return A.Compose(_transforms(specs, key_path), seed=seed, **compose_kwargs)


def _transforms(specs: Sequence[TransformSpec], key_path: str) -> list:
    import albumentations as A

    transforms = []
    for index, spec in enumerate(specs):
        where = f"{key_path}[{index}]"
        cls = getattr(A, spec.name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            names = [n for n in dir(A) if isinstance(getattr(A, n), type)
                     and issubclass(getattr(A, n), A.BasicTransform)]
            close = difflib.get_close_matches(spec.name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.name: unknown albumentations transform {spec.name!r}{hint}")
        try:
            transforms.append(cls(p=spec.p, **spec.kwargs))
        except Exception as exc:  # albumentations validates its arguments with pydantic
            raise ConfigError(f"{where}.kwargs: invalid arguments for {spec.name}: {exc}") from None
    return transforms


def geometric_mask_agreement(specs: Sequence[TransformSpec], image: np.ndarray, mask: np.ndarray,
                             trials: int = 8, seed: int = 0) -> float:
    """How well masks follow their images through the pipeline's geometry, in [0, 1].

    The mask is painted into a probe image (one grey level per label) and both go
    through the same draws of the pipeline's transforms, with pixel-level (colour)
    transforms switched off for the probe only. Where labels and images stay
    aligned, the probe read back agrees with the transformed mask everywhere but
    at boundaries, where image and mask interpolations legitimately differ.
    Returns the worst agreement over ``trials`` draws, measured on pixels away
    from label boundaries.

    image: uint8 (H, W, 3); mask: uint8 (H, W) labels.
    """
    import albumentations as A
    import cv2

    labels = np.unique(mask)
    level_of = {int(label): int(i * 255 / max(len(labels) - 1, 1)) for i, label in enumerate(labels)}
    probe = np.zeros_like(image)
    for label, level in level_of.items():
        probe[mask == label] = level
    levels = np.array(sorted(level_of.values()))
    label_at_level = {v: k for k, v in level_of.items()}

    replay = A.ReplayCompose(_transforms(specs, "augment"))
    replay.set_random_seed(seed)
    worst = 1.0
    for _ in range(trials):
        out = replay(image=image, mask=mask)
        record = out["replay"]
        for t in record["transforms"]:
            if not _is_dual(t["__class_fullname__"]):
                t["applied"] = False
        probe_out = A.ReplayCompose.replay(record, image=probe, mask=mask)["image"][..., 0]
        nearest = levels[np.abs(probe_out[..., None].astype(int) - levels).argmin(-1)]
        decoded = np.vectorize(label_at_level.get)(nearest)
        # Skip a one-pixel band around every label boundary of the transformed mask.
        edges = cv2.morphologyEx(out["mask"].astype(np.uint8), cv2.MORPH_GRADIENT,
                                 np.ones((3, 3), np.uint8)) > 0
        inner = ~edges
        if inner.any():
            worst = min(worst, float((decoded[inner] == out["mask"][inner]).mean()))
    return worst


def _is_dual(class_fullname: str) -> bool:
    import albumentations as A

    cls = getattr(A, class_fullname.rsplit(".", 1)[-1], None)
    return isinstance(cls, type) and issubclass(cls, A.DualTransform)
