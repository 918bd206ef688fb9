"""Synthetic rectified stereo scenes with exact disparity, rendered by a z-buffer over planar layers.

A scene is a stack of textured planar surfaces seen by two rectified cameras.
For a plane, disparity is an affine function of left-image coordinates,
``d(x, y) = a x + b y + c`` (disparity is proportional to inverse depth, which
is affine in image coordinates for a plane), so everything is computed, not
estimated:

- the left view samples each layer at its own left coordinates;
- the right view at ``x_r`` samples each layer at the left coordinate that lands
  there, ``x_l = (x_r + b y + c) / (1 - a)`` (from ``x_r = x_l - d(x_l, y)``);
- in both views the layer with the largest disparity (the nearest) wins;
- ground truth at a left pixel centre is the winning layer's ``d``; the pixel is
  non-occluded when the right view's winner at ``(x - d, y)`` is the same layer
  and ``x - d`` falls inside the right image.

Images are rendered ``supersample`` x finer and area-averaged (anti-aliased
edges, partial coverage of thin structures, like a real sensor); ground truth is
evaluated exactly at pixel centres. Layers: a slanted background plane, an
optional ground plane, objects (convex polygons, smooth blobs, rings with
see-through holes), thin bars, and leaves: narrow, pointed, bent strips in front
of the background (the thin near structures a cost volume matches to what lies
behind). Textures are procedural and natural-image-like
(:mod:`visionflow.data.synth.textures`); shading is Lambertian (the same surface
point has the same colour in both views) except for optional specular highlights
that move differently from the surface; each camera has its own exposure,
gamma, colour balance, vignetting, blur and noise.

Written in the Middlebury layout (:mod:`visionflow.data.stereo`), so the real
datasets and the synthetic one go through the same reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from visionflow.data.disparity import write_pfm
from visionflow.data.images import write_png
from visionflow.data.stereo import NONOCC_OCCLUDED, NONOCC_VISIBLE
from visionflow.data.synth.parallel import map_scenes
from visionflow.data.synth.textures import make_texture

SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class StereoSceneSpec:
    height: int = 96
    width: int = 160
    max_disparity: float = 48.0  # no pixel's disparity exceeds this (px)
    min_objects: int = 2
    max_objects: int = 7
    max_thin: int = 3  # thin bars (1-3 px wide) per scene, at most
    max_leaves: int = 8  # narrow tapered, bent strips (3-12 px wide) in front, per scene, at most
    slant: float = 0.25  # max |dd/dx|, |dd/dy| of a plane (px of disparity per px)
    ground_probability: float = 0.4
    texture_weights: dict[str, float] = field(default_factory=lambda: {
        "dead_leaves": 0.35, "pink_noise": 0.25, "leaves_noise": 0.2, "grating": 0.1, "uniform": 0.1})
    noise_std: float = 4.0  # max per-view Gaussian noise (grey levels of 255)
    blur_probability: float = 0.3
    photometric_difference: float = 0.08  # max relative exposure/colour difference between views
    specular_probability: float = 0.2
    vignetting: float = 0.4  # max brightness fall-off at the corners (each camera its own)
    supersample: int = 2


@dataclass
class Layer:
    """A planar surface: ``d = a x + b y + c`` (left px), a shape mask and a texture, both in left coords."""

    a: float
    b: float
    c: float
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x_left, y) -> bool
    texture: np.ndarray  # float32 (Ht, Wt, 3)
    texture_scale: float  # texels per left px
    texture_origin: tuple[float, float]  # left coords of texel (0, 0)
    shading: tuple[float, float, float]  # s0, sx, sy: brightness = s0 + sx * x + sy * y (left px)

    def disparity(self, x_left: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.a * x_left + self.b * y + self.c

    def left_x(self, x: np.ndarray, y: np.ndarray, view: str) -> np.ndarray:
        """The left-image x of the surface point that ``view`` sees at ``(x, y)``."""
        if view == "left":
            return x
        return (x + self.b * y + self.c) / (1.0 - self.a)

    def colour(self, x_left: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float32 (..., 3) shaded texture at left coords (bilinear texture lookup)."""
        u = ((x_left - self.texture_origin[0]) * self.texture_scale).astype(np.float32)
        v = ((y - self.texture_origin[1]) * self.texture_scale).astype(np.float32)
        texel = cv2.remap(self.texture, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        s0, sx, sy = self.shading
        return texel * (s0 + sx * x_left + sy * y)[..., None].astype(np.float32)


# --- shapes (all vectorised over coordinate arrays, left-image px) ---------------------------------


def _convex_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float):
    count = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    points = np.stack([cx + radius * rng.uniform(0.6, 1.0, count) * np.cos(angles),
                       cy + radius * rng.uniform(0.6, 1.0, count) * np.sin(angles)], 1)
    hull = cv2.convexHull(points.astype(np.float32))[:, 0, :].astype(np.float64)
    if len(hull) < 3:
        hull = np.array([[cx - radius, cy - radius], [cx + radius, cy - radius], [cx, cy + radius]])
    edges = np.roll(hull, -1, axis=0) - hull
    signed_area = float(np.sum(hull[:, 0] * np.roll(hull[:, 1], -1) - np.roll(hull[:, 0], -1) * hull[:, 1]))
    orientation = 1.0 if signed_area >= 0 else -1.0

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.ones(np.broadcast(x, y).shape, bool)
        for (px, py), (ex, ey) in zip(hull, edges):
            result &= orientation * (ex * (y - py) - ey * (x - px)) >= 0
        return result

    return inside


def _blob_radius(rng: np.random.Generator, radius: float):
    harmonics = np.arange(2, 7)
    amplitudes = rng.uniform(0, 0.35, len(harmonics)) / harmonics ** 0.7
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))

    def radius_at(theta: np.ndarray) -> np.ndarray:
        wobble = np.tensordot(amplitudes, np.cos(harmonics[:, None] * theta.reshape(1, -1)
                                                 + phases[:, None]), 1).reshape(theta.shape)
        return radius * (1 + wobble)

    return radius_at


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, hole: bool):
    outer = _blob_radius(rng, radius)
    hole_ratio = rng.uniform(0.35, 0.7)

    reach = radius * 1.6  # the wobble adds at most ~55 % to the radius

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - cx, y - cy
        distance = np.hypot(dx, dy)
        result = np.zeros(distance.shape, bool)
        near = distance <= reach
        r = outer(np.arctan2(dy[near], dx[near]))
        hit = distance[near] <= r
        if hole:
            hit &= distance[near] >= hole_ratio * r
        result[near] = hit
        return result

    return inside


def _strip(x0: float, y0: float, angle: float, length: float, half_width: float, taper: float = 0.0,
           bend: float = 0.0):
    """A strip along a (bent) chord through ``(x0, y0)``: half-width ``half_width * (1 - (2 t)^2)^taper``
    at ``t`` in [-1/2, 1/2] along it (taper 0: straight sides), the chord bent by ``bend * along^2``."""
    ux, uy = np.cos(angle), np.sin(angle)

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        along = (x - x0) * ux + (y - y0) * uy
        across = -(x - x0) * uy + (y - y0) * ux - bend * along ** 2
        t = np.clip(2 * along / length, -1.0, 1.0)
        return (np.abs(along) <= length / 2) & (np.abs(across) <= half_width * (1 - t ** 2) ** taper)

    return inside


def _bar(rng: np.random.Generator, width: int, height: int):
    """A straight thin bar, 1-3 px wide."""
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.3, 1.0) * max(width, height)
    return _strip(x0, y0, angle, length, half_width=rng.uniform(0.35, 1.5))


def _leaf(rng: np.random.Generator, width: int, height: int):
    """A narrow strip, pointed at both ends and bent: a leaf, stem, spoke or cable.

    Up to 12 px wide and 20-90 % of the frame long: narrower than a few 1/4-resolution cells,
    which is where a cost volume tends to match the background seen around it. Returns the
    shape and ``(x0, y0, reach)``: its centre and how far it extends from it.
    """
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.2, 0.9) * max(width, height)
    half_width = np.exp(rng.uniform(np.log(1.5), np.log(6.0)))
    taper = rng.uniform(0.3, 1.0)
    bend = rng.uniform(-0.6, 0.6) / length  # the tips leave the chord by up to 15 % of the length
    return _strip(x0, y0, angle, length, half_width, taper, bend), (x0, y0, length / 2)


def _everywhere(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.ones(np.broadcast(x, y).shape, bool)


# --- planes -------------------------------------------------------------------------------------


def _fit_plane(rng: np.random.Generator, centre_disparity: float, cx: float, cy: float, extent: float,
               slant: float, low: float, high: float) -> tuple[float, float, float]:
    """Random slopes, shrunk so that d stays within [low, high] over a box of half-size ``extent``."""
    centre_disparity = float(np.clip(centre_disparity, low, high))
    a, b = rng.uniform(-slant, slant, 2) * (rng.uniform() < 0.75)  # a quarter are fronto-parallel
    reach = (abs(a) + abs(b)) * extent
    room = min(centre_disparity - low, high - centre_disparity)
    if reach > room:
        scale = room / reach if reach > 0 else 0.0
        a, b = a * scale, b * scale
    return float(a), float(b), float(centre_disparity - a * cx - b * cy)


@dataclass
class StereoScene:
    """Arrays of one rendered scene (see :func:`render_scene`)."""

    left: np.ndarray  # uint8 (H, W, 3)
    right: np.ndarray  # uint8 (H, W, 3)
    disparity: np.ndarray  # float32 (H, W), exact, left px
    nonoccluded: np.ndarray  # bool (H, W): visible in the right image
    layer_ids: np.ndarray  # int16 (H, W): which layer each left pixel shows (0 = background)


def build_layers(spec: StereoSceneSpec, rng: np.random.Generator) -> list[Layer]:
    height, width = spec.height, spec.width
    scene_max = spec.max_disparity * rng.uniform(0.3, 1.0)
    scene_min = scene_max * rng.uniform(0.0, 0.4)
    kinds = list(spec.texture_weights)
    weights = np.array([spec.texture_weights[k] for k in kinds], np.float64)
    weights /= weights.sum()
    ss = spec.supersample

    def texture_for(extent_w: float, extent_h: float) -> tuple[np.ndarray, float, tuple[float, float]]:
        # Texels per left px: up to one per supersampled px (finer would alias), coarser at
        # random so surfaces differ in texture scale. The right view sees up to max_disparity
        # past the left frame's right edge; beyond the texture, lookups reflect it.
        scale = ss * rng.uniform(0.5, 1.0)
        tex_w = int(np.ceil((extent_w + 4 + spec.max_disparity / 2) * scale))
        tex_h = int(np.ceil((extent_h + 4) * scale))
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        return make_texture(kind, tex_h, tex_w, rng), scale, (-2.0, -2.0)

    def shading() -> tuple[float, float, float]:
        s0 = rng.uniform(0.55, 1.15)
        return s0, rng.uniform(-0.3, 0.3) / width, rng.uniform(-0.3, 0.3) / height

    layers = []
    # Background: a (possibly slanted) plane behind everything.
    a, b, c = _fit_plane(rng, rng.uniform(scene_min, scene_min + 0.3 * (scene_max - scene_min)),
                         width / 2, height / 2, max(width, height) / 2, spec.slant * 0.5, 0.0, scene_max)
    tex, scale, origin = texture_for(width, height)
    layers.append(Layer(a, b, c, _everywhere, tex, scale, origin, shading()))
    background_at = layers[0].disparity

    if rng.uniform() < spec.ground_probability:  # a ground plane rising toward the camera
        horizon = rng.uniform(0.3, 0.7) * height
        tilt = rng.uniform(-0.15, 0.15)
        d_horizon = float(background_at(np.float64(width / 2), np.float64(horizon)))
        a_ground = rng.uniform(-0.03, 0.03)
        d_bottom = rng.uniform(d_horizon, max(d_horizon, scene_max - abs(a_ground) * width / 2))
        b_ground = (d_bottom - d_horizon) / max(height - horizon, 1.0)
        c_ground = d_horizon - b_ground * horizon - a_ground * width / 2
        tex, scale, origin = texture_for(width, height)

        def ground(x, y, horizon=horizon, tilt=tilt):
            return y >= horizon + tilt * (x - width / 2)

        layers.append(Layer(a_ground, b_ground, c_ground, ground, tex, scale, origin, shading()))

    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        # Log-uniform sizes: many small objects, a few large ones, as in cluttered real scenes.
        radius = np.exp(rng.uniform(np.log(0.05), np.log(0.45))) * min(width, height)
        cx = rng.uniform(-0.1, 1.1) * width
        cy = rng.uniform(-0.1, 1.1) * height
        # The background's value here (it may pass scene_max outside the frame).
        behind = min(float(background_at(np.float64(cx), np.float64(cy))), scene_max)
        kind = rng.uniform()
        if kind < 0.4:
            inside = _convex_polygon(rng, cx, cy, radius)
        else:
            inside = _blob(rng, cx, cy, radius, hole=kind > 0.85)
        a, b, c = _fit_plane(rng, rng.uniform(behind, scene_max), cx, cy, radius * 1.6, spec.slant,
                             0.0, spec.max_disparity)  # 1.6: a blob's wobble reaches ~1.55 radii
        tex, scale, origin = texture_for(width, height)
        layers.append(Layer(a, b, c, inside, tex, scale, origin, shading()))

    for _ in range(int(rng.integers(0, spec.max_thin + 1))):
        d = rng.uniform(scene_min, scene_max)
        tex, scale, origin = texture_for(width, height)
        a, b, c = _fit_plane(rng, d, width / 2, height / 2, max(width, height) / 2, spec.slant * 0.3,
                             0.0, spec.max_disparity)
        layers.append(Layer(a, b, c, _bar(rng, width, height), tex, scale, origin, shading()))

    for _ in range(int(rng.integers(0, spec.max_leaves + 1))):
        inside, (cx, cy, reach) = _leaf(rng, width, height)
        behind = min(float(background_at(np.float64(cx), np.float64(cy))), scene_max)
        a, b, c = _fit_plane(rng, rng.uniform(behind, scene_max), cx, cy, reach, spec.slant, 0.0,
                             spec.max_disparity)
        tex, scale, origin = texture_for(width, height)
        layers.append(Layer(a, b, c, inside, tex, scale, origin, shading()))
    return layers


def frontmost(layers: list[Layer], x: np.ndarray, y: np.ndarray, view: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer at points ``(x, y)`` of ``view``: (layer id int16, disparity, left x) of the nearest layer."""
    best = np.full(x.shape, -np.inf)
    ids = np.zeros(x.shape, np.int16)
    x_left = np.zeros(x.shape)
    for index, layer in enumerate(layers):
        xl = layer.left_x(x, y, view)
        d = layer.disparity(xl, y)
        wins = layer.inside(xl, y) & (d > best)
        best = np.where(wins, d, best)
        ids[wins] = index
        x_left = np.where(wins, xl, x_left)
    return ids, best, x_left


def _render_view(layers: list[Layer], spec: StereoSceneSpec, view: str,
                 specular: tuple | None) -> np.ndarray:
    """float32 (H, W, 3) linear image of ``view`` (supersampled, then area-averaged)."""
    ss = spec.supersample
    ys, xs = np.mgrid[0: spec.height * ss, 0: spec.width * ss].astype(np.float64)
    xs, ys = (xs + 0.5) / ss - 0.5, (ys + 0.5) / ss - 0.5
    ids, disparity, x_left = frontmost(layers, xs, ys, view)
    image = np.zeros((*xs.shape, 3), np.float32)
    for index in np.unique(ids):
        where = ids == index
        image[where] = layers[index].colour(x_left, ys)[where]
    if specular is not None:  # a highlight that moves with the viewpoint, not with the surface
        layer_index, cx, cy, sigma, amplitude, shift = specular
        cx = cx - shift if view == "right" else cx
        glow = amplitude * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        image += (glow * (ids == layer_index))[..., None].astype(np.float32)
    if ss > 1:
        image = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return image


def _camera(image: np.ndarray, rng: np.random.Generator, spec: StereoSceneSpec, shared: dict) -> np.ndarray:
    """Exposure, gamma, colour balance, vignetting, blur and noise of one camera -> uint8."""
    diff = spec.photometric_difference
    gain = shared["gain"] * (1 + rng.uniform(-diff, diff))
    balance = shared["balance"] * (1 + rng.uniform(-diff / 2, diff / 2, 3)).astype(np.float32)
    gamma = shared["gamma"] * (1 + rng.uniform(-diff, diff))
    out = np.clip(image * gain * balance + rng.uniform(-diff, diff) * 0.1, 0, 1) ** gamma
    if shared["vignetting"] > 0:
        h, w = out.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        strength = shared["vignetting"] * (1 + rng.uniform(-0.3, 0.3))
        out = out * (1 - strength * r2 / 2)[..., None]
    if shared["blur"] > 0:
        sigma = shared["blur"] * (1 + rng.uniform(-0.25, 0.25))
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), sigma)
    out = out * 255 + rng.normal(0, rng.uniform(0, spec.noise_std), out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_scene(spec: StereoSceneSpec, rng: np.random.Generator) -> StereoScene:
    return render_layers(build_layers(spec, rng), spec, rng)


def render_layers(layers: list[Layer], spec: StereoSceneSpec, rng: np.random.Generator) -> StereoScene:
    """Ground truth, occlusion and both camera images of ``layers`` (``layers[0]`` must cover all)."""
    height, width = spec.height, spec.width
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ids, disparity, _ = frontmost(layers, xs, ys, "left")
    x_right = xs - disparity
    right_ids, _, _ = frontmost(layers, x_right, ys, "right")
    nonoccluded = (right_ids == ids) & (x_right >= 0) & (x_right <= width - 1)

    specular = None
    if rng.uniform() < spec.specular_probability:
        layer_index = int(rng.integers(0, len(layers)))
        specular = (layer_index, rng.uniform(0, width), rng.uniform(0, height),
                    rng.uniform(3, 12), rng.uniform(0.2, 0.6),
                    float(disparity.mean()) + rng.uniform(-6, 6))  # not the surface's disparity
    shared = {
        "gain": rng.uniform(0.7, 1.3),
        "balance": (1 + rng.uniform(-0.15, 0.15, 3)).astype(np.float32),
        "gamma": rng.uniform(0.8, 1.25),
        "vignetting": rng.uniform(0, spec.vignetting) * (rng.uniform() < 0.5),
        "blur": rng.uniform(0.4, 1.2) if rng.uniform() < spec.blur_probability else 0.0,
    }
    left = _camera(_render_view(layers, spec, "left", specular), rng, spec, shared)
    right = _camera(_render_view(layers, spec, "right", specular), rng, spec, shared)
    return StereoScene(left, right, disparity.astype(np.float32), nonoccluded, ids)


def write_calib(path: Path, width: int, height: int, ndisp: int, vmin: float, vmax: float) -> None:
    """A Middlebury-style ``calib.txt`` (no camera matrices: the scenes have none)."""
    path.write_text(f"width={width}\nheight={height}\nndisp={ndisp}\nisint=0\n"
                    f"vmin={vmin:.3f}\nvmax={vmax:.3f}\n")


def write_scene(folder: Path, scene: StereoScene, spec: StereoSceneSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "im0.png", scene.left)
    write_png(folder / "im1.png", scene.right)
    write_pfm(folder / "disp0.pfm", scene.disparity)
    mask = np.where(scene.nonoccluded, NONOCC_VISIBLE, NONOCC_OCCLUDED).astype(np.uint8)
    write_png(folder / "mask0nocc.png", mask)
    write_calib(folder / "calib.txt", spec.width, spec.height, int(np.ceil(spec.max_disparity)),
                float(scene.disparity.min()), float(scene.disparity.max()))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per scene: the same scene whatever else is generated."""
    return np.random.default_rng([seed, SPLIT_ORDER.index(split) if split in SPLIT_ORDER else 99, index])


def _render_and_write(job: tuple) -> tuple[str, float, float]:
    out_dir, split, index, seed, spec = job
    scene = render_scene(spec, scene_rng(seed, split, index))
    name = f"{index:06d}"
    write_scene(Path(out_dir) / split / name, scene, spec)
    return name, float(scene.nonoccluded.mean()), float(scene.disparity.max())


def write_stereo_dataset(out_dir: Path, spec: StereoSceneSpec, splits: dict[str, int], seed: int,
                         progress: bool = True, workers: int | None = None) -> dict[str, dict]:
    """Render every split into ``out_dir/<split>/<scene>/``; write ``index.json``; return counts.

    The output is byte-identical for the same spec and seed, whatever ``workers`` (render
    processes; None: every core) is.
    """
    import shutil

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    jobs = [(str(out_dir), split, i, seed, spec) for split in splits for i in range(splits[split])]
    results = map_scenes(_render_and_write, jobs, workers, "synthesize stereo", progress)
    counts: dict[str, dict] = {}
    index: dict[str, list[str]] = {}
    offset = 0
    for split, count in splits.items():
        chunk = results[offset: offset + count]
        offset += count
        index[split] = [name for name, _, _ in chunk]
        counts[split] = {
            "images": count,
            "nonoccluded_fraction": round(float(np.mean([f for _, f, _ in chunk])), 4) if chunk else 0.0,
            "max_disparity": round(max((d for _, _, d in chunk), default=0.0), 3),
        }
    (out_dir / "index.json").write_text(json.dumps(
        {"generator": "visionflow.data.synth.stereo", "seed": seed, "spec": asdict(spec),
         "splits": index}, indent=1, sort_keys=True) + "\n")
    return counts
