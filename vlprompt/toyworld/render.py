"""Rendering the toy world: one object of a (colour, pattern, shape) class per image, in four domains.

* ``photo``: a filled, patterned, shaded object on a light noisy background, jittered in position,
  size, rotation, colour and brightness (the pretraining domain, the ImageNet analogue);
* ``sketch``: edges only, coloured lines on paper (the ImageNet-Sketch analogue);
* ``rendition``: an altered palette (shifted hues, dark backgrounds), coarser pattern and a cartoon
  outline (the ImageNet-R analogue);
* ``adversarial``: hard crops of a large off-centre object, clutter of small distractor shapes,
  occluders and heavy noise (the ImageNet-A analogue).

Everything is NumPy on a 2× supersampled grid, drawn from the ``numpy.random.Generator`` passed in,
so an image is a pure function of its class, domain, size and generator state.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from vlprompt.toyworld.world import COLOURS, PATTERNS, SHAPES, ToyClass

DOMAINS: tuple[str, ...] = ("photo", "sketch", "rendition", "adversarial")
DEFAULT_SIZE = 56
_SUPERSAMPLE = 2  # masks are computed at twice the resolution and averaged: smooth edges


@dataclass(frozen=True)
class Scene:
    """Where the object of ``combo`` sits (pixels of the final image) and the nuisance words for it."""

    combo: ToyClass
    cx: float
    cy: float
    radius: float
    rotation: float  # radians
    size_word: str  # "small" | "large"
    position_word: str  # one of world.POSITIONS


def _check(domain: str, combo: ToyClass) -> None:
    if domain not in DOMAINS:
        raise ValueError(f'toy world domain "{domain}" is not one of {", ".join(DOMAINS)}')
    if not combo.is_full:
        raise ValueError(f'can only render a full combination, got "{combo.name}"')


def sample_scene(combo: ToyClass, rng: np.random.Generator, domain: str = "photo", size: int = DEFAULT_SIZE) -> Scene:
    """Object placement for one image; the adversarial domain uses large, off-centre objects (hard crops)."""
    _check(domain, combo)
    if domain == "adversarial":
        radius = rng.uniform(0.36, 0.52) * size
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    else:
        radius = rng.uniform(0.24, 0.36) * size
        cx, cy = (0.5 + rng.uniform(-0.12, 0.12, size=2)) * size
    rotation = math.radians(rng.uniform(-25.0, 25.0))
    size_word = "small" if radius < 0.30 * size else "large"
    dx, dy = cx / size - 0.5, cy / size - 0.5
    if max(abs(dx), abs(dy)) < 0.06:
        position_word = "in the center"
    elif abs(dx) >= abs(dy):
        position_word = "on the left" if dx < 0 else "on the right"
    else:
        position_word = "at the top" if dy < 0 else "at the bottom"
    return Scene(combo, float(cx), float(cy), float(radius), float(rotation), size_word, position_word)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in final-image pixels) of the supersampled grid: (ys, xs)."""
    coords = (np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _downsample(mask: np.ndarray) -> np.ndarray:
    """Average ``_SUPERSAMPLE``² blocks: a boolean supersampled mask becomes coverage in [0, 1]."""
    n = mask.shape[0] // _SUPERSAMPLE
    return mask.reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE).mean(axis=(1, 3))


def _local(size: int, cx: float, cy: float, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates in pixels (u right, v down once the object is un-rotated)."""
    ys, xs = _grid(size)
    dx, dy = xs - cx, ys - cy
    cos, sin = math.cos(rotation), math.sin(rotation)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test for ``shape`` in units of the object radius (the shape spans about [-1, 1]²)."""
    if shape == "circle":
        return u * u + v * v <= 0.85**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if shape == "triangle":  # equilateral, apex up (v grows downwards), centred on its centroid
        inside = np.ones(u.shape, dtype=bool)
        for degrees in (90.0, 210.0, 330.0):
            angle = math.radians(degrees)
            inside &= u * math.cos(angle) + (v - 0.12) * math.sin(angle) <= 0.55
        return inside
    if shape == "star":  # five points, one up; exact polygon via the edge of each point's sector
        rho = np.hypot(u, v)
        sector = 2 * math.pi / 5
        angle = np.mod(np.arctan2(v, u) + math.pi / 2, sector)
        angle = np.abs(angle - sector / 2)  # 0 at an inner vertex .. sector/2 at a point
        angle = sector / 2 - angle  # 0 at a point
        outer, inner = 1.0, 0.45
        p0 = np.array([outer, 0.0])
        p1 = np.array([inner * math.cos(sector / 2), inner * math.sin(sector / 2)])
        normal = np.array([p1[1] - p0[1], p0[0] - p1[0]])  # points away from the origin
        qx, qy = rho * np.cos(angle), rho * np.sin(angle)
        return (qx - p0[0]) * normal[0] + (qy - p0[1]) * normal[1] <= 0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.88)) | ((av <= 0.3) & (au <= 0.88))
    if shape == "heart":  # (x² + y² - 1)³ ≤ x² y³, lobes up
        x, y = u * 1.25, -v * 1.25 + 0.2
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f'shape "{shape}" is not one of {", ".join(SHAPES)}')


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Where the pattern's second colour goes (pixel units, ``scale`` stretches its period)."""
    if pattern == "plain":
        return np.zeros(u.shape, dtype=bool)
    angle = rng.uniform(0, math.pi)
    a = u * math.cos(angle) + v * math.sin(angle)
    b = -u * math.sin(angle) + v * math.cos(angle)
    if pattern == "striped":
        period = rng.uniform(6.0, 8.0) * scale
        return np.mod(a / period + rng.uniform(0, 1), 1.0) < 0.45
    if pattern == "dotted":
        period = rng.uniform(6.5, 8.0) * scale
        dot = rng.uniform(0.26, 0.32) * period
        pa = np.mod(a + rng.uniform(0, period), period) - period / 2
        pb = np.mod(b + rng.uniform(0, period), period) - period / 2
        return pa * pa + pb * pb <= dot * dot
    if pattern == "checkered":
        cell = rng.uniform(4.5, 6.0) * scale
        ia = np.floor((a + rng.uniform(0, cell)) / cell)
        ib = np.floor((b + rng.uniform(0, cell)) / cell)
        return np.mod(ia + ib, 2) == 0
    raise ValueError(f'pattern "{pattern}" is not one of {", ".join(PATTERNS)}')


def _object_masks(scene: Scene, size: int, rng: np.random.Generator, pattern_scale: float):
    """Supersampled (object, pattern-inside-object) boolean masks of the scene's object."""
    u, v = _local(size, scene.cx, scene.cy, scene.rotation)
    inside = shape_mask(scene.combo.shape, u / scene.radius, v / scene.radius)
    pattern = pattern_mask(scene.combo.pattern, u, v, rng, pattern_scale) & inside
    return inside, pattern


def _jittered_colour(name: str, rng: np.random.Generator, hue_shift: float = 0.0, sat: float = 1.0,
                     val: float = 1.0) -> np.ndarray:
    """The named colour with small random jitter (and an optional palette change), RGB in [0, 255]."""
    r, g, b = (channel / 255.0 for channel in COLOURS[name])
    h, s, value = colorsys.rgb_to_hsv(r, g, b)
    h = (h + hue_shift + rng.uniform(-0.02, 0.02)) % 1.0
    s = min(1.0, max(0.0, s * sat * rng.uniform(0.85, 1.1)))
    value = min(1.0, max(0.0, value * val * rng.uniform(0.85, 1.1)))
    return np.array(colorsys.hsv_to_rgb(h, s, value)) * 255.0


def _pattern_colour(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark version of the object colour: on a light background the silhouette stays whole."""
    return base * rng.uniform(0.2, 0.45)


def _composite(canvas: np.ndarray, coverage: np.ndarray, colour: np.ndarray | float) -> np.ndarray:
    return canvas * (1 - coverage[..., None]) + np.asarray(colour) * coverage[..., None]


def _fill(canvas: np.ndarray, inside: np.ndarray, pattern: np.ndarray, base: np.ndarray, second: np.ndarray):
    canvas = _composite(canvas, _downsample(inside & ~pattern), base)
    return _composite(canvas, _downsample(pattern), second)


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    """The boundary band of a supersampled mask, ``width`` supersampled pixels thick on each side."""
    grown = ndimage.binary_dilation(mask, iterations=width)
    shrunk = ndimage.binary_erosion(mask, iterations=width)
    return grown & ~shrunk


def _distractors(canvas: np.ndarray, size: int, rng: np.random.Generator, count: int, grey: bool) -> np.ndarray:
    """``count`` small plain shapes anywhere in the frame, grey or in any of the named colours."""
    for _ in range(count):
        shape = str(rng.choice(SHAPES))
        cx, cy = rng.uniform(0, size, size=2)
        radius = rng.uniform(0.06, 0.11) * size
        u, v = _local(size, float(cx), float(cy), float(rng.uniform(-math.pi, math.pi)))
        colour = rng.uniform(90, 200) if grey else _jittered_colour(str(rng.choice(list(COLOURS))), rng)
        canvas = _composite(canvas, _downsample(shape_mask(shape, u / radius, v / radius)), colour)
    return canvas


def _noise(shape: tuple, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, size=shape)


def render(scene: Scene, domain: str, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The image of ``scene`` in ``domain``: ``(size, size, 3)`` uint8."""
    _check(domain, scene.combo)
    ys = np.linspace(-1.0, 1.0, size)[:, None, None]
    xs = np.linspace(-1.0, 1.0, size)[None, :, None]
    if domain == "photo":
        # Mostly light backgrounds, some dark ones; now and then grey clutter or an outlined object.
        light = rng.uniform() < 0.75
        background = rng.uniform(170, 245) if light else rng.uniform(30, 110)
        canvas = np.broadcast_to(background + rng.uniform(-12, 12, size=3), (size, size, 3)).astype(np.float64)
        if rng.uniform() < 0.3:
            canvas = _distractors(canvas, size, rng, int(rng.integers(1, 3)), grey=True)
        inside, pattern = _object_masks(scene, size, rng, pattern_scale=1.0)
        base = _jittered_colour(scene.combo.colour, rng)
        canvas = _fill(canvas, inside, pattern, base, _pattern_colour(base, rng))
        if rng.uniform() < 0.2:
            outline = ndimage.binary_dilation(inside, iterations=2) & ~inside
            canvas = _composite(canvas, _downsample(outline), rng.uniform(0, 40))
        # Directional lighting and a brightness change over the whole frame.
        direction = rng.uniform(0, 2 * math.pi)
        shading = 1.0 + 0.12 * (xs * math.cos(direction) + ys * math.sin(direction))
        canvas = canvas * shading * rng.uniform(0.85, 1.1) + _noise(canvas.shape, rng, 6.0)
    elif domain == "sketch":
        paper = rng.uniform(235, 255) + rng.uniform(-6, 6, size=3)
        canvas = np.broadcast_to(paper, (size, size, 3)).astype(np.float64)
        inside, pattern = _object_masks(scene, size, rng, pattern_scale=1.0)
        ink = _jittered_colour(scene.combo.colour, rng, val=0.8)
        lines = _edges(inside, 2) | (_edges(pattern, 1) & inside)
        # Pencil strokes: thin, slightly broken lines.
        lines &= rng.uniform(size=lines.shape) > 0.12
        canvas = _composite(canvas, np.clip(_downsample(lines) * 1.6, 0, 1), ink)
        canvas = canvas + _noise(canvas.shape, rng, 4.0)
    elif domain == "rendition":
        hsv_background = (rng.uniform(0, 1), rng.uniform(0.2, 0.6), rng.uniform(0.08, 0.3))
        background = np.array(colorsys.hsv_to_rgb(*hsv_background)) * 255.0
        canvas = np.broadcast_to(background, (size, size, 3)).astype(np.float64)
        inside, pattern = _object_masks(scene, size, rng, pattern_scale=1.5)
        base = _jittered_colour(scene.combo.colour, rng, hue_shift=rng.uniform(-0.04, 0.04), sat=1.15, val=1.1)
        second = base + (255.0 - base) * 0.8 if rng.uniform() < 0.7 else base * 0.15
        canvas = _fill(canvas, inside, pattern, base, second)
        outline = ndimage.binary_dilation(inside, iterations=3) & ~inside
        canvas = _composite(canvas, _downsample(outline), 10.0)  # cartoon outline
        canvas = np.round(canvas / 32.0) * 32.0  # posterised palette
    else:  # adversarial
        low = ndimage.zoom(rng.uniform(60, 220, size=(4, 4, 3)), (size / 4, size / 4, 1), order=1)
        canvas = low[:size, :size].astype(np.float64)
        canvas = _distractors(canvas, size, rng, int(rng.integers(3, 7)), grey=False)
        inside, pattern = _object_masks(scene, size, rng, pattern_scale=1.0)
        base = _jittered_colour(scene.combo.colour, rng)
        canvas = _fill(canvas, inside, pattern, base, _pattern_colour(base, rng))
        if rng.uniform() < 0.5:  # an occluding bar across the frame
            angle = rng.uniform(0, math.pi)
            yy, xx = _grid(size)
            offset = rng.uniform(0.3, 0.7) * size
            band = np.abs((xx - size / 2) * math.cos(angle) + (yy - size / 2) * math.sin(angle) + size / 2 - offset)
            canvas = _composite(canvas, _downsample(band < rng.uniform(3, 6)), rng.uniform(40, 200))
        canvas = canvas + _noise(canvas.shape, rng, 16.0)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def render_class(combo: ToyClass, domain: str, rng: np.random.Generator, size: int = DEFAULT_SIZE):
    """(image, scene) for one random image of the full combination ``combo`` in ``domain``."""
    scene = sample_scene(combo, rng, domain, size)
    return render(scene, domain, rng, size), scene
