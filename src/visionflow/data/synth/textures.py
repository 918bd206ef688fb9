"""Procedural, natural-image-like textures (numpy + OpenCV), seeded by the caller's generator.

Natural images have a power spectrum close to ``1/f^2``, edges at every scale and
occlusion between objects; the "dead leaves" model (random shapes with power-law
sizes painted over each other) and ``1/f`` noise reproduce those statistics, so a
matcher trained on them meets familiar texture on real photographs. Repetitive
gratings and nearly uniform surfaces are the hard cases of real scenes (fences,
walls) and are mixed in on purpose.

Photographs are the real thing (FlyingThings3D textures its objects with photos):
the ``photo`` kind maps random crops of the sample photographs that ship with
scikit-image (astronaut, brick, coffee, grass, ...; never its Motorcycle stereo
pair, which ``bench/stereo.py`` scores on), rescaled, rotated and recoloured.

Every function returns float32 ``(H, W, 3)`` in roughly ``[0, 1]``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

TEXTURE_KINDS = ("dead_leaves", "pink_noise", "leaves_noise", "grating", "uniform", "photo")
# scikit-image's bundled photographs (no download). Not motorcycle_*: that is a test pair.
PHOTO_FILES = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png",
               "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
               "retina.jpg", "rocket.jpg", "text.png", "cell.png", "color.png")


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A float32 RGB colour: mostly muted, sometimes saturated, like surfaces in photographs."""
    grey = rng.uniform(0.1, 0.9)
    saturation = rng.uniform(0.0, 0.6) ** 1.5
    tint = rng.normal(0, 1, 3)
    tint /= np.linalg.norm(tint) + 1e-6
    return np.clip(grey + saturation * tint * 0.6, 0.02, 0.98).astype(np.float32)


def pink_noise(height: int, width: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """float32 ``(H, W)`` zero-mean, unit-std noise with amplitude spectrum ``1 / f^exponent``."""
    white = rng.standard_normal((height, width))
    spectrum = np.fft.rfft2(white)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum /= np.maximum(radius, 1.0 / max(height, width)) ** exponent
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=(height, width))
    return (noise / (noise.std() + 1e-8)).astype(np.float32)


def coloured_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    exponent = rng.uniform(0.7, 1.6)
    luminance = pink_noise(height, width, rng, exponent)
    chroma = pink_noise(height, width, rng, exponent + 0.3)
    base, tint = random_colour(rng), rng.normal(0, 1, 3).astype(np.float32)
    contrast = rng.uniform(0.08, 0.25)
    return base + contrast * luminance[..., None] + 0.3 * contrast * chroma[..., None] * tint


def dead_leaves(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Discs and rotated rectangles with sizes ``p(r) ~ r^-3`` painted over each other."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = random_colour(rng)
    r_min, r_max = rng.uniform(1.0, 3.0), rng.uniform(0.15, 0.5) * max(height, width)
    count = int(rng.integers(80, 320) * height * width / 40000) + 20
    u = rng.uniform(0, 1, count)
    radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    centres = rng.uniform((0, 0), (width, height), (count, 2))
    base = random_colour(rng)  # a palette around one colour looks like one material
    spread = rng.uniform(0.1, 0.5)
    shift = 4  # sub-pixel shape positions: cv2 takes fixed-point coordinates
    for (cx, cy), radius in zip(centres, radii):
        colour = np.clip(base + spread * rng.normal(0, 0.5, 3), 0, 1)
        if rng.uniform() < 0.6:
            cv2.circle(image, (int(cx * 16), int(cy * 16)), int(radius * 16), colour.tolist(), -1,
                       cv2.LINE_AA, shift)
        else:
            box = cv2.boxPoints(((cx, cy), (2 * radius, 2 * radius * rng.uniform(0.2, 1.0)),
                                 rng.uniform(0, 180)))
            cv2.fillConvexPoly(image, np.round(box * 16).astype(np.int32), colour.tolist(), cv2.LINE_AA,
                               shift)
    return image


def grating(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Stripes or a checkerboard (repetitive: several disparities match equally well locally)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 14.0)
    phase = rng.uniform(0, 2 * np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    wave = np.sin(2 * np.pi * u / period + phase)
    if rng.uniform() < 0.4:
        v = -x * np.sin(angle) + y * np.cos(angle)
        wave = wave * np.sin(2 * np.pi * v / rng.uniform(3.0, 14.0))
    if rng.uniform() < 0.5:
        wave = np.tanh(3 * wave)  # harder edges
    colour_a, colour_b = random_colour(rng), random_colour(rng)
    t = (0.5 + 0.5 * wave)[..., None]
    return colour_a * t + colour_b * (1 - t) + 0.03 * pink_noise(height, width, rng)[..., None]


def uniform(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A nearly textureless surface: one colour, a faint gradient and very weak noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = rng.uniform(-0.1, 0.1) * x / width + rng.uniform(-0.1, 0.1) * y / height
    weak = rng.uniform(0.003, 0.02) * pink_noise(height, width, rng, 1.2)
    return random_colour(rng) + (gradient + weak)[..., None]


@functools.lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """scikit-image's sample photographs as float32 RGB in [0, 1] (loaded once per process)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("texture kind 'photo' needs scikit-image (its bundled sample photographs); "
                                  "install scikit-image or set its weight to 0 in synth.texture_weights")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    images = []
    for name in PHOTO_FILES:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR_RGB)
        if image is None:
            raise FileNotFoundError(f"{folder / name}: scikit-image sample photograph missing")
        images.append(image.astype(np.float32) / 255)
    return tuple(images)


def photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a photograph: random scale, rotation, mirror and colour."""
    source = photographs()[int(rng.integers(len(PHOTO_FILES)))]
    scale = rng.uniform(0.5, 1.5)
    angle = rng.uniform(-180, 180) if rng.uniform() < 0.5 else 0.0
    centre = (rng.uniform(0, source.shape[1]), rng.uniform(0, source.shape[0]))
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += (width / 2 - centre[0], height / 2 - centre[1])  # the crop's centre lands mid-texture
    texture = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    if rng.uniform() < 0.5:
        texture = texture[:, ::-1]
    grey = texture.mean(2, keepdims=True)
    saturation = rng.uniform(0.0, 1.3)  # from grey to more colourful
    tint = 1 + rng.uniform(-0.25, 0.25, 3).astype(np.float32)
    return np.ascontiguousarray((grey + saturation * (texture - grey)) * tint)


def make_texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 ``(height, width, 3)`` texture of ``kind`` (one of :data:`TEXTURE_KINDS`)."""
    if kind == "dead_leaves":
        texture = dead_leaves(height, width, rng)
    elif kind == "pink_noise":
        texture = coloured_noise(height, width, rng)
    elif kind == "leaves_noise":
        texture = dead_leaves(height, width, rng) * (1 + 0.25 * pink_noise(height, width, rng)[..., None])
    elif kind == "grating":
        texture = grating(height, width, rng)
    elif kind == "uniform":
        texture = uniform(height, width, rng)
    elif kind == "photo":
        texture = photo(height, width, rng)
    else:
        raise ValueError(f"unknown texture kind {kind!r}; known: {', '.join(TEXTURE_KINDS)}")
    contrast = rng.uniform(0.3, 1.0)  # some surfaces are washed out
    mean = texture.mean((0, 1), keepdims=True)
    return (mean + contrast * (texture - mean)).astype(np.float32)
