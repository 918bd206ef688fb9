"""Seeded scenes of articulated figures with a declared skeleton and truthful visibility.

A figure is a kinematic tree (:class:`FigureModel`): joints placed by bone lengths
and random joint angles, then scaled, rotated and moved into the image. Its body
(torso polygon, thick limbs, a disk for the head) is painted back to front with
other figures and occluding shapes, and an owner map records which layer painted
each pixel last. Each keypoint's COCO visibility is read from that map:

- ``v = 0``: outside the image (not labelled; x = y = 0 in the file, as COCO does),
- ``v = 1``: inside the image but covered by another figure or an occluding shape,
- ``v = 2``: visible (its pixel belongs to its own figure; a figure's own limbs
  crossing its body do not hide it, since the point is still seen on the body).

Keypoint coordinates are pixels with pixel centres at integers (OpenCV's and
albumentations' convention): a joint drawn at (x, y) lies on pixel
``(round(y), round(x))``. The same (seed, split, index) gives the same scene.

Only numpy and OpenCV here; COCO writing is in ``figures_coco.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from visionflow.data.synth.shapes import ShapesSceneSpec, _background, _fill, _shape_mask

SUBPIXEL_BITS = 4  # cv2 drawing in 1/16 px fixed point
_FIXED = 1 << SUBPIXEL_BITS


@dataclass(frozen=True)
class Bone:
    """A joint placed from its parent: ``length`` (figure heights) in direction ``angle`` degrees.

    Directions are angles from "down" (+y) towards +x in the figure frame, which is
    the figure's own left (the image right) for a figure facing the viewer. The
    angle is added to the direction of the ``reference`` joint's bone (None: the
    figure frame), plus a uniform draw from ``angle_range``. ``side``: +1 left,
    -1 right, 0 midline; right-side bones mirror the angle, so one declaration
    serves both sides and a figure with equal draws is mirror-symmetric.
    """

    joint: str
    parent: str
    length: float
    angle: float
    angle_range: tuple[float, float] = (0.0, 0.0)
    reference: str | None = None
    side: int = 0


@dataclass(frozen=True)
class FigureModel:
    """A declared skeleton and how to pose and paint it.

    ``keypoints``: names in annotation order; ``skeleton``: limbs as name pairs;
    ``flip_pairs``: left/right name pairs swapped by a mirror image; ``bones``:
    the kinematic tree from the root joint ``root`` (not a keypoint unless named
    there); ``parts``: painted pieces as (kind, joints, thickness in figure
    heights, colour group) with kind ``limb`` (a thick polyline), ``polygon`` or
    ``disk`` (centre joint, radius), painted in order.
    """

    name: str
    keypoints: tuple[str, ...]
    skeleton: tuple[tuple[str, str], ...]
    flip_pairs: tuple[tuple[str, str], ...]
    root: str
    bones: tuple[Bone, ...]
    parts: tuple[tuple[str, tuple[str, ...], float, int], ...]
    colour_groups: int = 3

    def skeleton_indices(self) -> list[tuple[int, int]]:
        """0-based keypoint index pairs of the limbs."""
        index = {name: i for i, name in enumerate(self.keypoints)}
        return [(index[a], index[b]) for a, b in self.skeleton]


def _sided(name: str, side: str) -> str:
    return name if name in ("neck", "pelvis", "head") else f"{side}_{name}"


def _limb_pair(joint: str, parent: str, length: float, angle: float, angle_range: tuple[float, float],
               reference: str | None) -> tuple[Bone, Bone]:
    """A left bone and its mirrored right twin (joint names without the side prefix)."""
    return tuple(Bone(_sided(joint, side), _sided(parent, side), length, angle, angle_range,
                      _sided(reference, side) if reference else None, sign)
                 for side, sign in (("left", 1), ("right", -1)))


def _person() -> FigureModel:
    """A front-facing person: 14 keypoints, the figure's left on the image right when upright."""
    bones = (
        Bone("neck", "pelvis", 0.30, 180.0, (-15.0, 15.0)),  # the spine, leaning a little
        Bone("head", "neck", 0.12, 0.0, (-25.0, 25.0), reference="neck"),
        # Shoulders and hips square to the spine; arms and thighs measured from the spine's down.
        *_limb_pair("shoulder", "neck", 0.115, -100.0, (-8.0, 8.0), "neck"),
        *_limb_pair("elbow", "shoulder", 0.16, -170.0, (-25.0, 150.0), "neck"),
        *_limb_pair("wrist", "elbow", 0.14, 0.0, (-110.0, 110.0), "elbow"),
        *_limb_pair("hip", "pelvis", 0.075, -90.0, (-5.0, 5.0), "neck"),
        *_limb_pair("knee", "hip", 0.24, -180.0, (-10.0, 45.0), "neck"),
        *_limb_pair("ankle", "knee", 0.23, 0.0, (-45.0, 30.0), "knee"),
    )
    names = ("head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
             "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
             "left_ankle", "right_ankle")
    skeleton = (("head", "neck"), ("neck", "left_shoulder"), ("neck", "right_shoulder"),
                ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
                ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
                ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
                ("left_hip", "right_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
                ("right_hip", "right_knee"), ("right_knee", "right_ankle"))
    flip_pairs = tuple((f"left_{n}", f"right_{n}") for n in
                       ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))
    # Arms have their own colour (sleeves): an arm across the torso stays visible, as its
    # wrist's v = 2 says; in the shirt's colour it would vanish into the torso.
    shirt, trousers, skin, sleeves = 0, 1, 2, 3
    parts = (
        ("limb", ("left_hip", "left_knee", "left_ankle"), 0.075, trousers),
        ("limb", ("right_hip", "right_knee", "right_ankle"), 0.075, trousers),
        ("polygon", ("left_shoulder", "right_shoulder", "right_hip", "left_hip"), 0.0, shirt),
        ("limb", ("neck", "head"), 0.05, skin),
        ("disk", ("head",), 0.07, skin),
        ("limb", ("left_shoulder", "left_elbow", "left_wrist"), 0.055, sleeves),
        ("limb", ("right_shoulder", "right_elbow", "right_wrist"), 0.055, sleeves),
    )
    return FigureModel("person", names, skeleton, flip_pairs, "pelvis", bones, parts, colour_groups=4)


FIGURES: dict[str, FigureModel] = {"person": _person()}


@dataclass(frozen=True)
class FigureSceneSpec:
    """What a scene may contain; built from params (``pose.synth``)."""

    figure: str = "person"
    image_size: int = 128
    min_figures: int = 1
    max_figures: int = 3
    min_height: float = 48.0  # figure height (root to head top, upright) in pixels
    max_height: float = 100.0
    max_rotation: float = 30.0  # degrees, uniform in [-max, max]
    width_jitter: float = 0.15  # body width scales by a factor in [1 - j, 1 + j]
    truncation_probability: float = 0.15  # chance that a figure may stick out of the image
    min_keypoints_inside: int = 7  # a truncated figure keeps at least this many keypoints inside
    min_visible_fraction: float = 0.5  # of a figure's in-image body left after occlusion
    max_occluders: int = 2  # shapes painted over the figures
    occluder_probability: float = 0.5  # chance of each occluder slot being used
    max_distractors: int = 2  # shapes painted behind the figures
    occluder_radius: tuple[float, float] = (6.0, 16.0)
    noise_std: float = 6.0
    texture_probability: float = 0.4
    blur_probability: float = 0.2


@dataclass
class PosedFigure:
    """One figure in a scene.

    keypoints: float32 (K, 3) x, y, v in pixels (v as in the module docstring; x = y = 0
    where v = 0); mask: bool (H, W) pixels it shows after occlusion.
    """

    keypoints: np.ndarray
    mask: np.ndarray


@dataclass
class FigureScene:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    figures: list[PosedFigure] = field(default_factory=list)


def _direction(degrees: float) -> np.ndarray:
    """Unit vector for an angle measured from "down" (+y in the figure frame) towards +x."""
    t = np.radians(degrees)
    return np.array([np.sin(t), np.cos(t)])


def pose_figure(model: FigureModel, rng: np.random.Generator, width_scale: float = 1.0
                ) -> dict[str, np.ndarray]:
    """Joint positions float (2,) in figure units (height 1), root at the origin, +y down.

    ``width_scale`` widens the bones that end in a shoulder or hip.
    """
    joints = {model.root: np.zeros(2)}
    angles = {model.root: 0.0}
    for bone in model.bones:
        mirror = -1.0 if bone.side < 0 else 1.0
        base = angles[bone.reference] if bone.reference else 0.0
        angle = base + mirror * (bone.angle + rng.uniform(*bone.angle_range))
        length = bone.length * (width_scale if bone.joint.endswith(("shoulder", "hip")) else 1.0)
        joints[bone.joint] = joints[bone.parent] + length * _direction(angle)
        angles[bone.joint] = angle
    return joints


def _to_fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _FIXED).astype(np.int32)


def _paint_parts(model: FigureModel, joints: dict[str, np.ndarray], height: float, size: int
                 ) -> list[np.ndarray]:
    """bool (H, W) mask per colour group of one figure placed in the image."""
    masks = [np.zeros((size, size), np.uint8) for _ in range(model.colour_groups)]
    for kind, names, thickness, group in model.parts:
        canvas = masks[group]
        points = np.stack([joints[n] for n in names])
        if kind == "limb":
            width = max(1, int(round(thickness * height)))
            cv2.polylines(canvas, [_to_fixed(points)], False, 1, thickness=width, lineType=cv2.LINE_8,
                          shift=SUBPIXEL_BITS)
            for point in points:  # round joints
                cv2.circle(canvas, tuple(int(v) for v in _to_fixed(point)), int(width / 2 * _FIXED), 1,
                           thickness=-1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        elif kind == "polygon":
            cv2.fillPoly(canvas, [_to_fixed(points)], 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        elif kind == "disk":
            cv2.circle(canvas, tuple(int(v) for v in _to_fixed(points[0])),
                       int(round(thickness * height * _FIXED)), 1, thickness=-1, lineType=cv2.LINE_8,
                       shift=SUBPIXEL_BITS)
        else:
            raise ValueError(f"figure {model.name!r}: unknown part kind {kind!r}")
    return [m.astype(bool) for m in masks]


def _place(model: FigureModel, rng: np.random.Generator, spec: FigureSceneSpec
           ) -> tuple[np.ndarray, float]:
    """Image-space keypoints float (K, 2) of a random figure and its height in pixels."""
    size = spec.image_size
    joints = pose_figure(model, rng, rng.uniform(1 - spec.width_jitter, 1 + spec.width_jitter))
    height = rng.uniform(spec.min_height, spec.max_height)
    angle = np.radians(rng.uniform(-spec.max_rotation, spec.max_rotation))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    names = list(joints)
    points = np.stack([joints[n] for n in names]) @ rotation.T * height  # root at 0
    low, high = points.min(0), points.max(0)
    pad = 0.08 * height  # head and limb thickness beyond the joints
    if rng.random() < spec.truncation_probability:
        offset = rng.uniform(0, size, size=2)
    else:
        lo, hi = pad - low, size - 1 - pad - high
        offset = np.where(lo <= hi, rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi)), (lo + hi) / 2)
    placed = {n: p + offset for n, p in zip(names, points)}
    return placed, height


def _colours(rng: np.random.Generator, size: int, spec: FigureSceneSpec, groups: int) -> list[np.ndarray]:
    shapes = ShapesSceneSpec(image_size=size, texture_probability=spec.texture_probability)
    return [_fill(rng, size, shapes) for _ in range(groups)]


def render_figure_scene(rng: np.random.Generator, spec: FigureSceneSpec) -> FigureScene:
    """A scene with ``min_figures..max_figures`` figures; see the module docstring for ``v``."""
    model = FIGURES[spec.figure]
    size = spec.image_size
    shapes = ShapesSceneSpec(image_size=size, min_radius=spec.occluder_radius[0],
                             max_radius=spec.occluder_radius[1], texture_probability=spec.texture_probability)
    image = _background(rng, size)
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):  # behind everything
        kind = ("circle", "square", "triangle", "hexagon", "ellipse")[int(rng.integers(5))]
        full = _shape_mask(kind, size, rng, shapes)[0]
        image[full] = _fill(rng, size, shapes)[full]

    # Layers back to front: ("figure", keypoints, part masks) or ("occluder", mask). A new layer is
    # kept only if every figure below keeps enough of its body.
    layers: list[tuple[str, np.ndarray | None, list[np.ndarray]]] = []

    def acceptable(new_full: np.ndarray) -> bool:
        covered = new_full.copy()
        for kind, _, masks in reversed(layers):
            full = np.logical_or.reduce(masks)
            if kind == "figure" and (full & ~covered).sum() < spec.min_visible_fraction * full.sum():
                return False
            covered |= full
        return True

    n_figures = int(rng.integers(spec.min_figures, spec.max_figures + 1))
    for _ in range(n_figures):
        for _attempt in range(10):
            joints, height = _place(model, rng, spec)
            points = np.stack([joints[n] for n in model.keypoints])
            inside = ((points >= -0.5) & (points < size - 0.5)).all(1)
            if inside.sum() < min(spec.min_keypoints_inside, len(points)):
                continue
            masks = _paint_parts(model, joints, height, size)
            full = np.logical_or.reduce(masks)
            if full.sum() < 0.02 * height**2 or not acceptable(full):
                continue
            layers.append(("figure", points, masks))
            break
    for _ in range(spec.max_occluders):
        if rng.random() >= spec.occluder_probability:
            continue
        for _attempt in range(5):
            kind = ("circle", "square", "triangle", "hexagon", "star", "ellipse")[int(rng.integers(6))]
            full = _shape_mask(kind, size, rng, shapes)[0]
            if acceptable(full):
                layers.append(("occluder", None, [full]))
                break

    owner = np.full((size, size), -1, np.int32)  # which layer painted each pixel last
    for index, (kind, _, masks) in enumerate(layers):
        fills = _colours(rng, size, spec, len(masks))
        for mask, fill in zip(masks, fills):
            image[mask] = fill[mask]
            owner[mask] = index

    figures = []
    for index, (kind, points, masks) in enumerate(layers):
        if kind != "figure":
            continue
        keypoints = np.zeros((len(points), 3), np.float32)
        for k, (x, y) in enumerate(points):
            col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if not (0 <= col < size and 0 <= row < size):
                continue  # v = 0, x = y = 0
            keypoints[k] = (x, y, 2 if owner[row, col] == index else 1)
        figures.append(PosedFigure(keypoints, owner == index))

    # Global lighting, blur and sensor noise, as in the shapes scenes: labels stay exact.
    image = image * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)
    if rng.random() < spec.blur_probability:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.3, 0.7))
    image = image + rng.normal(0, rng.uniform(0, spec.noise_std), size=image.shape)
    return FigureScene(np.clip(np.round(image), 0, 255).astype(np.uint8), figures)
