"""Seeded shapes scenes with exact instance masks.

A scene is a textured background with a few filled shapes painted back to front,
so later shapes occlude earlier ones. Every pixel an instance owns in its mask
is painted with that instance's fill and no other pixel is: the masks are the
ground truth by construction, not an estimate. The same (seed, index) gives the
same scene on every machine, which is what lets DVC's cache hit.

Only numpy and OpenCV here: no torch, no file formats (see ``data/coco.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Shape kinds the renderer knows; a class in params names one of these.
SHAPE_KINDS = ("circle", "square", "triangle", "star", "hexagon", "ellipse", "cross")


@dataclass(frozen=True)
class ShapesSceneSpec:
    """What a scene may contain; built from params (``<task>.data.synth``)."""

    image_size: int = 64
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    min_objects: int = 1
    max_objects: int = 4
    min_radius: float = 7.0
    max_radius: float = 18.0
    min_visible_fraction: float = 0.4  # an occluded shape keeps at least this much of itself
    empty_fraction: float = 0.0  # share of scenes with no objects at all
    noise_std: float = 8.0  # upper end of per-scene Gaussian noise, in 8-bit levels
    texture_probability: float = 0.5  # chance that a shape is striped instead of flat
    blur_probability: float = 0.2
    crowding: float = 0.0  # chance that a shape is placed next to an earlier one (touching, occluding)


@dataclass
class Instance:
    """One painted shape. ``mask`` is what stays visible after occlusion.

    mask: bool[H, W]; vertices: float32[V, 2] polygon corners (x, y) in pixels,
    before occlusion (empty for round shapes).
    """

    category_index: int
    mask: np.ndarray
    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))


@dataclass
class Scene:
    image: np.ndarray  # uint8[H, W, 3], RGB
    instances: list[Instance]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An independent, reproducible stream per scene (order and workers do not matter)."""
    split_key = int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, split_key, index])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32[H, W] pattern in [0, 1]: stripes of random angle, period and sharpness."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 12.0)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
    wave = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    return np.clip((wave - 0.5) * rng.uniform(1.0, 4.0) + 0.5, 0.0, 1.0)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32[H, W] smooth random field in [0, 1] (upsampled coarse noise)."""
    cells = int(rng.integers(2, 7))
    coarse = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[H, W, 3]: two colours mixed by a stripe or blob pattern, plus a gradient."""
    pattern = _stripes(rng, size) if rng.random() < 0.5 else _blobs(rng, size)
    low, high = _random_colour(rng), _random_colour(rng)
    if rng.random() < 0.4:  # a plain-ish background now and then
        high = low + rng.normal(0, 20, size=3)
    image = low + pattern[..., None] * (high - low)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gradient = rng.uniform(-40, 40) * (xx - 0.5) + rng.uniform(-40, 40) * (yy - 0.5)
    return image + gradient[..., None]


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float,
             aspect: float) -> np.ndarray:
    """Corners (x, y) of a polygonal shape kind, float32[V, 2]."""
    if kind == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        r = np.full(4, radius)
    elif kind == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        r = np.full(3, radius * 1.15)
    elif kind == "hexagon":
        t = angle + np.arange(6) * np.pi / 3
        r = np.full(6, radius)
    elif kind == "star":
        t = angle + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius * 1.15, radius * 0.5)
    elif kind == "cross":
        arm = radius * 0.38
        base = np.array([[-arm, -radius], [arm, -radius], [arm, -arm], [radius, -arm],
                         [radius, arm], [arm, arm], [arm, radius], [-arm, radius],
                         [-arm, arm], [-radius, arm], [-radius, -arm], [-arm, -arm]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = base @ rot.T + [cx, cy]
        return pts.astype(np.float32)
    else:
        raise ValueError(f"not a polygonal shape kind: {kind!r}")
    x = cx + r * np.cos(t) * (aspect if kind == "square" else 1.0)
    y = cy + r * np.sin(t)
    return np.stack([x, y], axis=1).astype(np.float32)


def _shape_mask(kind: str, size: int, rng: np.random.Generator, spec: ShapesSceneSpec,
                near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random placement of ``kind``: (bool[H, W] full mask, float32[V, 2] corners, centre (x, y)).

    ``near``: a centre (x, y) to crowd around; the new centre lands about one radius from it.
    """
    radius = rng.uniform(spec.min_radius, spec.max_radius)
    margin = radius * 0.5  # shapes may be cut by the border, but mostly inside
    if near is None:
        cx, cy = rng.uniform(margin, size - margin, size=2)
    else:
        cx, cy = np.clip(near + rng.normal(0.0, radius, size=2), margin, size - margin)
    angle = rng.uniform(0, 2 * np.pi)
    canvas = np.zeros((size, size), np.uint8)
    if kind in ("circle", "ellipse"):
        axes = (radius, radius) if kind == "circle" else (radius, radius * rng.uniform(0.45, 0.7))
        # cv2 wants integer geometry; draw at 16x fixed point for sub-pixel placement.
        cv2.ellipse(canvas, (int(cx * 16), int(cy * 16)),
                    (int(axes[0] * 16), int(axes[1] * 16)), float(np.degrees(angle)),
                    0, 360, 1, thickness=-1, lineType=cv2.LINE_8, shift=4)
        vertices = np.zeros((0, 2), np.float32)
    else:
        vertices = _polygon(kind, cx, cy, radius, angle, aspect=1.0)
        cv2.fillPoly(canvas, [np.round(vertices * 16).astype(np.int32)], 1,
                     lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool), vertices, np.array([cx, cy])


def _fill(rng: np.random.Generator, size: int, spec: ShapesSceneSpec) -> np.ndarray:
    """float32[H, W, 3] paint for one shape: flat colour, or two-colour stripes."""
    colour = _random_colour(rng)
    if rng.random() < spec.texture_probability:
        other = _random_colour(rng)
        return colour + _stripes(rng, size)[..., None] * (other - colour)
    shade = rng.normal(0, 6, size=(size, size, 1)).astype(np.float32)
    return np.broadcast_to(colour, (size, size, 3)) + shade


def render_scene(rng: np.random.Generator, spec: ShapesSceneSpec) -> Scene:
    size = spec.image_size
    image = _background(rng, size)
    n_objects = 0 if rng.random() < spec.empty_fraction else int(
        rng.integers(spec.min_objects, spec.max_objects + 1))

    placed: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (class, full, vertices, fill)
    centres: list[np.ndarray] = []
    for _ in range(n_objects):
        category_index = int(rng.integers(len(spec.classes)))
        # Draws only when crowding is on, so scenes without it stay as they were.
        near = (centres[int(rng.integers(len(centres)))]
                if spec.crowding > 0 and centres and rng.random() < spec.crowding else None)
        for _attempt in range(10):
            full, vertices, centre = _shape_mask(spec.classes[category_index], size, rng, spec, near)
            if full.sum() < 0.5 * np.pi * spec.min_radius**2 * spec.min_visible_fraction:
                continue  # mostly outside the image
            # The new shape goes on top; every shape below must stay visible enough.
            covered = full.copy()
            ok = True
            for _, other_full, _, _ in reversed(placed):
                visible = other_full & ~covered
                if visible.sum() < spec.min_visible_fraction * other_full.sum():
                    ok = False
                    break
                covered |= other_full
            if ok:
                placed.append((category_index, full, vertices, _fill(rng, size, spec)))
                centres.append(centre)
                break

    for _, full, _, fill in placed:
        image[full] = fill[full]

    instances = []
    covered = np.zeros((size, size), bool)
    for category_index, full, vertices, _ in reversed(placed):
        instances.append(Instance(category_index, full & ~covered, vertices))
        covered |= full
    instances.reverse()  # back to painting order

    # Global lighting, blur and sensor noise: the masks stay exact.
    image = image * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)
    if rng.random() < spec.blur_probability:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.3, 0.7))
    image = image + rng.normal(0, rng.uniform(0, spec.noise_std), size=image.shape)
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), instances)
