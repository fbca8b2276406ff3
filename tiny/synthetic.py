"""Seeded synthetic industrial images with exact pixel defect masks.

Why this exists: the tiny demo/test model profile needs labelled anomaly data that can be
built offline, and the pipeline's tests need MVTec-AD-shaped inputs of any size without
shipping a dataset. Everything here is pure numpy/scipy; PIL is used only to encode PNGs.

How an image is made (all arrays float32 in [0, 1] until the last step):

1. A *category* (name, kind, palette, params) picks a renderer. A renderer draws the
   *surface*: either a texture that fills the frame (``woven``, ``brushed``, ``wood``,
   ``leather``, ``granular``) or an object composited over a plain background with a soft
   shadow (``disc``, ``bottle``, ``screw``, ``capsule``). Orientation, scale, position,
   colour and lighting are drawn per image, so normal images of one category vary.
2. Defects are painted onto the surface as layers with an alpha; the mask is where the
   alpha (times object coverage) is >= 0.5, i.e. where the pixel is mostly the defect.
3. The same low-frequency illumination and sensor noise are applied to the surface, so a
   defect is lit and noisy like its surroundings (no "too clean" shortcut), and an
   anomalous image equals its normal twin exactly wherever no defect layer touched it.

Randomness is split into two independent streams per image, both derived from
``(seed, category, split, index)`` through :class:`numpy.random.SeedSequence` and a
BLAKE2 hash of the strings (Python's ``hash`` is salted per process): one for the base
image, one for the defects. ``generate_image(..., anomalous=True)`` therefore draws its
defects on exactly the image that ``anomalous=False`` returns.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

FloatArray = NDArray[np.float32]
RGB = tuple[int, int, int]

TEXTURE_KINDS: tuple[str, ...] = ("woven", "brushed", "wood", "leather", "granular")
OBJECT_KINDS: tuple[str, ...] = ("disc", "bottle", "screw", "capsule")
KINDS: tuple[str, ...] = TEXTURE_KINDS + OBJECT_KINDS

DEFECT_TYPES: tuple[str, ...] = (
    "scratch", "crack", "hole", "stain", "missing_piece", "color_spot",
)
GOOD = "good"  # defect_type of normal images, also the MVTec folder name

# Total defect area per image as a fraction of the image area, drawn log-uniformly in
# [lo, hi]. Together the types span ~0.1 % .. 8 % of the image.
_AREA_RANGE: dict[str, tuple[float, float]] = {
    "scratch": (0.001, 0.012),
    "crack": (0.0015, 0.02),
    "hole": (0.0015, 0.03),
    "stain": (0.004, 0.08),
    "missing_piece": (0.008, 0.08),
    "color_spot": (0.001, 0.012),
}
# A defect instance is redrawn unless its masked region covers at least this fraction of
# the image and its mean absolute per-channel change there (in [0, 1]) is at least
# _MIN_CONTRAST: a mask must mark pixels that were altered visibly, never an empty or
# invisible region.
_MIN_INSTANCE_FRACTION = 0.0006
_MIN_CONTRAST = 0.05
_MAX_TRIES = 25
_MAX_OBJECT_SHARE = 0.3  # defects cover at most this share of the object's own area
_MIN_STROKE_WIDTH = 1.5  # pixels; see _stroke


@dataclass(frozen=True)
class Category:
    """A named product/material: which renderer draws it and with which palette.

    Colours are sRGB 0..255. Their roles per kind:
    ``primary`` is the main material (warp thread, metal, early wood, leather, tile body,
    object body); ``secondary`` is the second material (weft thread, mottling, late-wood
    rings, chips, cap/head/second half/opening); ``background`` is the surface an object lies
    on (unused by texture kinds). ``scale`` multiplies feature sizes (thread period, ring
    spacing, object size); ``gloss`` in [0, 1] controls specular highlights; ``variant``
    selects a sub-style: woven 0 plain / 1 twill weave, bottle 0 side view / 1 top view,
    screw 0 hex bolt head / 1 round head, ignored elsewhere.
    """

    name: str
    kind: str
    primary: RGB
    secondary: RGB
    background: RGB = (128, 128, 128)
    scale: float = 1.0
    gloss: float = 0.3
    variant: int = 0
    defect_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if not self.defect_types:
            object.__setattr__(self, "defect_types", applicable_defect_types(self.kind))
        bad = set(self.defect_types) - set(applicable_defect_types(self.kind))
        if bad:
            raise ValueError(f"defect types {sorted(bad)} do not apply to kind {self.kind!r}")


def applicable_defect_types(kind: str) -> tuple[str, ...]:
    """Defect types that make sense on ``kind``: a texture has no piece that can go missing."""
    if kind in OBJECT_KINDS:
        return DEFECT_TYPES
    return tuple(t for t in DEFECT_TYPES if t != "missing_piece")


CATEGORIES: Mapping[str, Category] = {
    c.name: c
    for c in (
        # --- training categories -------------------------------------------------------
        Category("woven_fabric", "woven", (196, 182, 152), (168, 150, 118), gloss=0.05),
        Category("brushed_plate", "brushed", (170, 172, 175), (140, 143, 148), gloss=0.6),
        Category("oak_panel", "wood", (206, 162, 108), (150, 100, 56), gloss=0.1),
        Category("leather_hide", "leather", (128, 76, 44), (96, 54, 30), gloss=0.2),
        Category("washer", "disc", (178, 178, 172), (150, 150, 146), background=(44, 44, 48), gloss=0.7),
        Category("vial", "bottle", (160, 92, 34), (232, 232, 226), background=(208, 212, 218), gloss=0.8),
        Category("bolt", "screw", (160, 162, 166), (128, 128, 134), background=(222, 222, 216), gloss=0.6),
        # --- test categories (zero-shot: names, palettes, and two kinds never trained) -----
        Category("carbon_weave", "woven", (78, 78, 84), (34, 34, 38), scale=1.6, gloss=0.6, variant=1),
        Category("anodized_panel", "brushed", (62, 98, 164), (40, 70, 132), gloss=0.5),
        Category("walnut_board", "wood", (124, 84, 52), (66, 40, 24), scale=0.8, gloss=0.15),
        Category("terrazzo_tile", "granular", (204, 198, 186), (72, 72, 78), gloss=0.1),
        Category("gasket", "disc", (40, 40, 44), (28, 28, 30), background=(200, 200, 194),
                 scale=1.05, gloss=0.15),
        Category("medicine_bottle", "bottle", (236, 236, 230), (58, 58, 62),
                 background=(64, 94, 124), gloss=0.35, variant=1),
        Category("brass_screw", "screw", (204, 164, 74), (150, 112, 42), background=(46, 46, 52),
                 gloss=0.7, variant=1),
        Category("capsule", "capsule", (196, 44, 44), (238, 232, 214), background=(34, 38, 44), gloss=0.6),
    )
}
# Zero-shot split: no name or palette is shared, and the kinds ``granular`` and ``capsule``
# appear only at test time.
TRAIN_CATEGORIES: tuple[str, ...] = (
    "woven_fabric", "brushed_plate", "oak_panel", "leather_hide", "washer", "vial", "bolt",
)
TEST_CATEGORIES: tuple[str, ...] = (
    "carbon_weave", "anodized_panel", "walnut_board", "terrazzo_tile",
    "gasket", "medicine_bottle", "brass_screw", "capsule",
)


def categories_for_split(split: str) -> tuple[str, ...]:
    """Registered category names of the default split: ``"train"``, ``"test"`` or ``"all"``."""
    splits = {"train": TRAIN_CATEGORIES, "test": TEST_CATEGORIES,
              "all": TRAIN_CATEGORIES + TEST_CATEGORIES}
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    return splits[split]


def _stable_hash(text: str) -> int:
    """64-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def get_category(name: str) -> Category:
    """The registered category ``name``, or a deterministic made-up one for any other name.

    An unknown name is hashed to a kind and palette, so user-chosen names (one per product
    line, say) give a stable, distinct look without registering anything.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"category name must be a non-empty folder name, got {name!r}")
    if name in CATEGORIES:
        return CATEGORIES[name]
    rng = np.random.default_rng(np.random.SeedSequence(_stable_hash("category:" + name)))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    primary = rng.uniform(0.15, 0.9, 3)
    secondary = np.clip(primary * rng.uniform(0.45, 0.8) + rng.normal(0.0, 0.06, 3), 0.03, 1.0)
    luminance = float(primary @ np.array([0.299, 0.587, 0.114]))
    background = (rng.uniform(0.06, 0.22) if luminance > 0.45 else rng.uniform(0.6, 0.85)) \
        * np.exp(rng.normal(0.0, 0.08, 3))

    def to_rgb(c: np.ndarray) -> RGB:
        r, g, b = (int(v) for v in np.clip(np.round(c * 255), 0, 255))
        return (r, g, b)

    return Category(name=name, kind=kind, primary=to_rgb(primary), secondary=to_rgb(secondary),
                    background=to_rgb(background), scale=float(rng.uniform(0.8, 1.25)),
                    gloss=float(rng.uniform(0.0, 0.8)), variant=int(rng.integers(2)))


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image.

    image: uint8 (H, W, 3) RGB. mask: bool (H, W), True on defect pixels, all False for a
    normal image. defect_type: one of DEFECT_TYPES, or "good" for a normal image.
    """

    image: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    defect_type: str
    category: str


# ----------------------------------------------------------------------------- noise


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[FloatArray, FloatArray]:
    """Pixel-centre row and column coordinates (each float32 (size, size)); read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _bspline3(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax < 1, 2 / 3 - ax**2 + ax**3 / 2, np.where(ax < 2, (2 - ax) ** 3 / 6, 0.0))


@functools.lru_cache(maxsize=64)
def _taps(size: int, cells: int) -> tuple[NDArray[np.intp], FloatArray]:
    """Cubic B-spline taps mapping a padded (cells + 4) coarse grid to ``size`` pixels.

    Returns (indices, weights), each (size, 4): pixel i is the weighted sum of 4 grid values.
    """
    t = (np.arange(size) + 0.5) / size * cells + 1.5
    idx = np.floor(t).astype(np.intp)[:, None] + np.arange(-1, 3)
    w = _bspline3(t[:, None] - idx).astype(np.float32)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w


def _value_noise(rng: np.random.Generator, size: int, cells: float) -> FloatArray:
    """Smooth noise, about zero-mean unit-variance, with ~``cells`` blobs across the image.

    Random values on a coarse grid are upsampled with separable cubic B-splines (4 taps per
    axis): far cheaper than filtering full-resolution white noise. Gathers are used rather
    than matrix products because multi-threaded BLAS stalls badly on busy small machines.
    """
    n = max(1, int(round(cells)))
    idx, w = _taps(size, n)
    coarse = rng.standard_normal((n + 4, n + 4), dtype=np.float32)
    rows = np.einsum("ikj,ik->ij", coarse[idx], w)  # (size, n + 4)
    out = rows[:, idx[:, 0]] * w[:, 0]
    for k in range(1, 4):
        out += rows[:, idx[:, k]] * w[:, k]
    return out * np.float32(1 / 0.479)  # 0.479: mean sum of squared B-spline weights


def _fractal(rng: np.random.Generator, size: int, cells: float, octaves: int = 3) -> FloatArray:
    """Sum of value-noise octaves (each twice as fine, half as strong)."""
    out = np.zeros((size, size), np.float32)
    for k in range(octaves):
        out += _value_noise(rng, size, cells * 2**k) * np.float32(0.5**k)
    return out


def _noise_1d(rng: np.random.Generator, coord: np.ndarray, size: int, step: float) -> FloatArray:
    """1-D smooth noise evaluated at ``coord`` (pixels): streaks, fibres, grain, rings."""
    xs = np.arange(-1.5 * size, 1.5 * size + step, step, dtype=np.float32)
    values = ndimage.gaussian_filter1d(rng.standard_normal(xs.size).astype(np.float32), 1.0)
    values /= np.float32(values.std() + 1e-6)
    return np.interp(coord, xs, values).astype(np.float32)


def _rotated(size: int, cy: float, cx: float, theta: float) -> tuple[FloatArray, FloatArray]:
    """Coordinates (along, across) of every pixel in a frame at (cy, cx) rotated by theta."""
    yy, xx = _grid(size)
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    return dx * c + dy * s, dy * c - dx * s


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> FloatArray:
    t = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _jitter(colour: RGB, rng: np.random.Generator, amount: float = 0.05) -> FloatArray:
    """A palette colour in [0, 1] with per-image brightness and hue jitter."""
    c = np.asarray(colour, np.float32) / 255
    gain = math.exp(rng.normal(0.0, amount)) * np.exp(rng.normal(0.0, amount / 8, 3))
    return np.clip(c * gain.astype(np.float32), 0.0, 1.0)


def _lambert(nx: np.ndarray, ny: np.ndarray, nz: np.ndarray, light: float,
             gloss: float) -> tuple[FloatArray, FloatArray]:
    """(diffuse factor, specular term) of unit normals (nx, ny, nz) under a tilted light.

    The light comes from image angle ``light`` at 50 degrees elevation; the camera looks
    straight down, so the half-vector is halfway between the light and +z.
    """
    lx, ly, lz = 0.64 * math.cos(light), 0.64 * math.sin(light), 0.77
    hn = math.sqrt(lx**2 + ly**2 + (lz + 1) ** 2)
    ndotl = np.clip(nx * lx + ny * ly + nz * lz, 0, 1)
    ndoth = np.clip((nx * lx + ny * ly + nz * (lz + 1)) / hn, 0, 1)
    diffuse = np.float32(0.3) + np.float32(0.8) * ndotl
    specular = np.float32(0.6 * gloss) * ndoth ** np.float32(8 + 40 * gloss)
    return diffuse.astype(np.float32), specular.astype(np.float32)


# ----------------------------------------------------------------------------- textures


def _woven(cat: Category, rng: np.random.Generator, size: int, light: float) -> FloatArray:
    """Plain or twill weave: warp (primary) and weft (secondary) threads with fibres."""
    period = 9.0 * cat.scale * size / 256 * rng.uniform(0.88, 1.12)
    theta = rng.normal(0.0, 0.06) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    u, v = _rotated(size, rng.uniform(0, size), rng.uniform(0, size), theta)
    iu, iv = np.floor(u / period), np.floor(v / period)
    fu, fv = u / period - iu, v / period - iv
    cell = (iu + iv).astype(np.int64)
    warp_on_top = (cell % 4 < 2) if cat.variant == 1 else (cell % 2 == 0)
    across = np.where(warp_on_top, fu, fv)
    along = np.where(warp_on_top, fv, fu)
    height = np.sin(np.float32(math.pi) * across) ** np.float32(0.6) \
        * (np.float32(0.8) + np.float32(0.2) * np.sin(np.float32(math.pi) * along))
    fibres = np.where(warp_on_top, _noise_1d(rng, u, size, 0.7), _noise_1d(rng, v, size, 0.7))
    thread_var = rng.normal(0.0, 0.05, 64).astype(np.float32)
    var = np.where(warp_on_top, thread_var[iu.astype(np.int64) % 64],
                   thread_var[(iv.astype(np.int64) + 32) % 64])
    shade = (0.42 + 0.58 * height) * (1 + var + 0.05 * fibres)
    shade += cat.gloss * 0.25 * height**8 * (0.5 + 0.5 * math.cos(light - theta))
    warp = _jitter(cat.primary, rng)
    weft = _jitter(cat.secondary, rng)
    rgb = np.where(warp_on_top[..., None], warp, weft) * shade[..., None]
    return rgb.astype(np.float32)


def _brushed(cat: Category, rng: np.random.Generator, size: int, light: float) -> FloatArray:
    """Brushed metal: fine streaks along one direction, a broad sheen band, mottling."""
    theta = rng.normal(0.0, 0.05) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    u, v = _rotated(size, size / 2, size / 2, theta)
    stretch = np.float32(rng.uniform(0.02, 0.05))
    streaks = 0.6 * _noise_1d(rng, v, size, 0.6) \
        + 0.4 * _noise_1d(rng, v + stretch * u, size, 2.5) * (1 + 0.4 * _value_noise(rng, size, 3))
    freq = rng.uniform(0.4, 1.2) / size
    sheen = cat.gloss * 0.22 * np.cos(np.float32(2 * math.pi * freq) * u + np.float32(rng.uniform(0, 6.3)))
    mottle = _smoothstep(-1.0, 1.0, _value_noise(rng, size, 4))
    base = _jitter(cat.primary, rng)
    second = _jitter(cat.secondary, rng)
    rgb = base + (second - base) * (0.35 * mottle)[..., None]
    rgb *= (0.86 + 0.07 * streaks + sheen)[..., None]
    return rgb.astype(np.float32)


def _wood(cat: Category, rng: np.random.Generator, size: int, light: float) -> FloatArray:
    """Wood: growth rings warped by noise (sometimes around a knot) plus fine grain."""
    s = size / 256
    theta = rng.normal(0.0, 0.08) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    u, v = _rotated(size, rng.uniform(0, size), rng.uniform(0, size), theta)
    period = 14.0 * s * cat.scale * rng.uniform(0.8, 1.2)
    # Growth rings are cut at a slant, so they show as nested arches ("cathedrals") that
    # wander slowly along the grain and only a little across it.
    warp = (_noise_1d(rng, u, size, size / 6) * np.float32(1.5)
            + _value_noise(rng, size, 2.5) * np.float32(0.6)) * np.float32(period)
    knot = np.zeros((size, size), np.float32)
    if rng.random() < 0.35:
        ky, kx, kr = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 14) * s
        yy, xx = _grid(size)
        knot = np.exp(-((yy - np.float32(ky)) ** 2 + (xx - np.float32(kx)) ** 2) / np.float32(2 * kr * kr))
        warp += knot * np.float32(period * 2.5)
    arch = np.float32(rng.uniform(0.6, 2.0) * rng.choice([-1.0, 1.0]) / size)
    across = v + warp + arch * (u - np.float32(rng.uniform(-0.3, 0.3) * size)) ** 2
    rings = across / np.float32(period)
    late = (rings - np.floor(rings)) ** np.float32(4.0)
    grain = _noise_1d(rng, across, size, 0.7)
    t = np.clip(0.65 * late + 0.12 * grain + 0.08 * _value_noise(rng, size, 3) + 0.5 * knot, 0, 1)
    early = _jitter(cat.primary, rng)
    latewood = _jitter(cat.secondary, rng)
    rgb = early + (latewood - early) * t[..., None]
    return rgb.astype(np.float32)


def _leather(cat: Category, rng: np.random.Generator, size: int, light: float) -> FloatArray:
    """Leather: a network of creases (zero crossings of band-limited noise), lit as relief."""
    creases = np.exp(-np.abs(_fractal(rng, size, 24 / cat.scale, 2)) / np.float32(0.12))
    fine = np.exp(-np.abs(_value_noise(rng, size, 60 / cat.scale)) / np.float32(0.12))
    height = -(creases + 0.5 * fine)
    gy, gx = np.gradient(height)
    relief = (gx * math.cos(light) + gy * math.sin(light)) * np.float32(1.2 / cat.scale)
    mottle = _smoothstep(-1.2, 1.2, _value_noise(rng, size, 4))
    pores = _value_noise(rng, size, size / 2.5)
    base = _jitter(cat.primary, rng)
    second = _jitter(cat.secondary, rng)
    rgb = base + (second - base) * (0.5 * mottle)[..., None]
    shade = 0.95 - 0.22 * creases - 0.1 * fine + relief + 0.03 * pores
    return (rgb * shade[..., None]).astype(np.float32)


def _granular(cat: Category, rng: np.random.Generator, size: int, light: float) -> FloatArray:
    """Terrazzo-like granular surface: a mottled matrix with dark, light and tinted chips."""
    cells = size / (6.0 * cat.scale)
    base = _jitter(cat.primary, rng)
    tone = 1 + 0.05 * _value_noise(rng, size, 5) + 0.03 * _value_noise(rng, size, size / 2)
    rgb = base * tone[..., None]
    chip_colours = (_jitter(cat.secondary, rng, 0.1), np.clip(base * 1.18 + 0.08, 0, 1),
                    _jitter(cat.secondary, rng, 0.1) * np.float32(0.5) + base * np.float32(0.5))
    for colour, threshold in zip(chip_colours, (1.35, 1.6, 1.5)):
        chips = _smoothstep(threshold, threshold + 0.15, _value_noise(rng, size, cells))
        tone = colour * (1 + 0.08 * _value_noise(rng, size, cells))[..., None]
        rgb += (tone - rgb) * chips[..., None]
    return rgb.astype(np.float32)


# ----------------------------------------------------------------------------- objects


def _sd_box(a: np.ndarray, b: np.ndarray, half_a: float, half_b: float, radius: float) -> FloatArray:
    """Signed distance (pixels, negative inside) to a rounded box centred at a = b = 0."""
    qa = np.abs(a) - np.float32(half_a - radius)
    qb = np.abs(b) - np.float32(half_b - radius)
    outside = np.hypot(np.maximum(qa, 0), np.maximum(qb, 0))
    return (outside + np.minimum(np.maximum(qa, qb), 0) - np.float32(radius)).astype(np.float32)


def _coverage(sd: np.ndarray) -> FloatArray:
    """Anti-aliased coverage of the shape whose signed distance is ``sd``."""
    return np.clip(np.float32(0.5) - sd, 0, 1)


def _tube_normals(b: np.ndarray, half_width: np.ndarray | float, theta: float
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normals of a cylinder lying along image angle ``theta`` (b: offset across the axis)."""
    nb = np.clip(b / half_width, -0.999, 0.999).astype(np.float32)
    nz = np.sqrt(1 - nb * nb)
    return nb * np.float32(-math.sin(theta)), nb * np.float32(math.cos(theta)), nz


def _disc(cat: Category, rng: np.random.Generator, size: int, light: float
          ) -> tuple[FloatArray, FloatArray]:
    """Washer/gasket seen from above: an annulus with chamfered edges and machining rings."""
    cy, cx = size / 2 + rng.normal(0, 0.03 * size), size / 2 + rng.normal(0, 0.03 * size)
    outer = min(0.36 * size * cat.scale * rng.uniform(0.92, 1.04), 0.44 * size)
    inner = outer * rng.uniform(0.36, 0.46)
    yy, xx = _grid(size)
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)
    r = np.hypot(dy, dx) + np.float32(1e-3)
    alpha = np.clip(np.float32(outer + 0.5) - r, 0, 1) * np.clip(r - np.float32(inner - 0.5), 0, 1)
    t = np.clip((r - np.float32(inner)) / np.float32(outer - inner), 0, 1)
    chamfer = np.float32(0.14)
    slope = np.clip((t - (1 - chamfer)) / chamfer, 0, 1) - np.clip((chamfer - t) / chamfer, 0, 1)
    slope *= np.float32(0.6)
    nz = np.sqrt(1 - slope * slope)
    diffuse, specular = _lambert(slope * dx / r, slope * dy / r, nz, light, cat.gloss)
    rings = _noise_1d(rng, r, size, 0.7) * np.float32(0.02 + 0.05 * cat.gloss)
    body = _jitter(cat.primary, rng)
    face = _jitter(cat.secondary, rng)
    mid = _smoothstep(0.25, 0.35, t) * (1 - _smoothstep(0.65, 0.75, t))
    rgb = body + (face - body) * (0.4 * mid)[..., None]
    rgb = rgb * (diffuse * (1 + rings))[..., None] + specular[..., None]
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _bottle(cat: Category, rng: np.random.Generator, size: int, light: float
            ) -> tuple[FloatArray, FloatArray]:
    """Bottle: side view (body, shoulder, neck, cap) or top view (shoulder, lip, opening)."""
    s = cat.scale * rng.uniform(0.92, 1.06)
    cy, cx = size / 2 + rng.normal(0, 0.025 * size), size / 2 + rng.normal(0, 0.025 * size)
    body = _jitter(cat.primary, rng)
    second = _jitter(cat.secondary, rng)
    if cat.variant == 1:
        radius = min(0.38 * size * s, 0.45 * size)
        yy, xx = _grid(size)
        dy, dx = yy - np.float32(cy), xx - np.float32(cx)
        r = np.hypot(dy, dx) + np.float32(1e-3)
        alpha = _coverage(r - np.float32(radius))
        t = np.clip((r - np.float32(0.45 * radius)) / np.float32(0.55 * radius), 0, 1)
        slope = np.float32(0.75) * t
        nz = np.sqrt(1 - slope * slope)
        diffuse, specular = _lambert(slope * dx / r, slope * dy / r, nz, light, cat.gloss)
        lip = _smoothstep(0.28, 0.31, r / radius) * (1 - _smoothstep(0.43, 0.46, r / radius))
        opening = 1 - _smoothstep(0.28, 0.31, r / radius)
        rgb = body * (diffuse * (1 - 0.25 * t * t) + 0.15 * lip)[..., None] + specular[..., None]
        rgb += (second * (0.7 + 0.3 * r / np.float32(0.3 * radius))[..., None] - rgb) * opening[..., None]
        return rgb.astype(np.float32), alpha.astype(np.float32)

    # Standing or lying, cap either way.
    theta = rng.normal(0.0, 0.05) + math.pi / 2 * int(rng.integers(4))
    a, b = _rotated(size, cy, cx, theta)
    half_w = 0.16 * size * s
    neck_w = 0.42 * half_w
    body_sd = _sd_box(a + np.float32(0.07 * size * s), b, 0.25 * size * s, half_w, 0.6 * half_w)
    neck_sd = _sd_box(a - np.float32(0.25 * size * s), b, 0.1 * size * s, neck_w, 0.15 * neck_w)
    cap_sd = _sd_box(a - np.float32(0.33 * size * s), b, 0.05 * size * s, 1.15 * neck_w, 0.2 * neck_w)
    alpha = np.maximum(_coverage(np.minimum(body_sd, neck_sd)), _coverage(cap_sd))
    in_body = body_sd < neck_sd
    width = np.where(in_body, np.float32(half_w), np.float32(neck_w))
    width = np.where(cap_sd < 0, np.float32(1.15 * neck_w), width)
    diffuse, specular = _lambert(*_tube_normals(b, width, theta), light, cat.gloss)
    nb = b / width
    glint = np.float32(0.25 * cat.gloss) * np.exp(-(((nb - 0.55) / 0.08) ** 2))
    cap = _coverage(cap_sd)
    rgb = body * diffuse[..., None] + (specular + glint)[..., None]
    rgb += (second * diffuse[..., None] - rgb) * cap[..., None]
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _screw(cat: Category, rng: np.random.Generator, size: int, light: float
           ) -> tuple[FloatArray, FloatArray]:
    """Screw/bolt lying at any angle: head, plain shank, threaded part, tapered tip."""
    s = size * cat.scale * rng.uniform(0.92, 1.06)
    theta = rng.uniform(0, 2 * math.pi)
    cy, cx = size / 2 + rng.normal(0, 0.03 * size), size / 2 + rng.normal(0, 0.03 * size)
    a, b = _rotated(size, cy, cx, theta)
    w = 0.045 * s
    pitch = 0.028 * s
    threaded = _smoothstep(-0.12 * s, -0.1 * s, a)
    ridge = 0.5 + 0.5 * np.cos(np.float32(2 * math.pi / pitch) * (a + np.float32(0.25) * b))
    taper = np.clip(1 - (a - np.float32(0.2 * s)) / np.float32(0.12 * s), 0.12, 1)
    shaft_w = np.float32(w) * taper * (1 - np.float32(0.1) * threaded * (1 - ridge))
    shaft_sd = np.maximum(np.abs(b) - shaft_w, np.abs(a - np.float32(0.03 * s)) - np.float32(0.29 * s))
    head_a = a + np.float32(0.3 * s)
    head_sd = _sd_box(head_a, b, 0.045 * s, 2.2 * w, (0.3 if cat.variant == 0 else 0.9) * w)
    alpha = _coverage(np.minimum(shaft_sd, head_sd))
    in_head = head_sd < shaft_sd
    diffuse, specular = _lambert(*_tube_normals(b, np.where(in_head, np.float32(2.2 * w), shaft_w), theta),
                                 light, cat.gloss)
    if cat.variant == 0:  # hex head: three flat facets instead of a round profile
        facet = np.float32(0.12) * np.sign(np.round(b / np.float32(1.5 * w)))
        diffuse = np.where(in_head, np.float32(0.85) + facet * np.float32(math.sin(light - theta)), diffuse)
    thread_shade = np.float32(0.72) + np.float32(0.28) * (1 - threaded + threaded * ridge)
    grooves = np.where(in_head, np.float32(1), thread_shade)
    body = _jitter(cat.primary, rng)
    head = _jitter(cat.secondary, rng)
    rgb = np.where(in_head[..., None], head, body) * (diffuse * grooves)[..., None] + specular[..., None]
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _capsule(cat: Category, rng: np.random.Generator, size: int, light: float
             ) -> tuple[FloatArray, FloatArray]:
    """Two-tone pill capsule: a glossy stadium with a seam between its halves."""
    s = size * cat.scale * rng.uniform(0.92, 1.06)
    theta = rng.uniform(0, 2 * math.pi)
    cy, cx = size / 2 + rng.normal(0, 0.03 * size), size / 2 + rng.normal(0, 0.03 * size)
    a, b = _rotated(size, cy, cx, theta)
    half_len, radius = 0.22 * s, 0.1 * s
    spine_a = np.maximum(np.abs(a) - np.float32(half_len), 0)
    dist = np.hypot(spine_a, b) + np.float32(1e-3)
    alpha = _coverage(dist - np.float32(radius))
    slope = np.clip(dist / np.float32(radius), 0, 0.999)
    nz = np.sqrt(1 - slope * slope)
    ca, sa = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    na, nb = np.sign(a) * spine_a / dist * slope, b / dist * slope
    diffuse, specular = _lambert(na * ca - nb * sa, na * sa + nb * ca, nz, light, cat.gloss)
    seam = np.float32(rng.uniform(-0.1, 0.1) * half_len)
    cap_half = _smoothstep(-0.7, 0.7, a - seam)
    seam_line = np.float32(1) - np.float32(0.35) * np.exp(-(((a - seam) / np.float32(1.2)) ** 2))
    first, second = _jitter(cat.primary, rng), _jitter(cat.secondary, rng)
    rgb = first + (second - first) * cap_half[..., None]
    rgb = rgb * (diffuse * seam_line)[..., None] + specular[..., None]
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _background(cat: Category, rng: np.random.Generator, size: int) -> FloatArray:
    """The plain surface objects lie on: slightly uneven, with a fine belt-like texture."""
    tone = 1 + 0.04 * _value_noise(rng, size, 3) + 0.025 * _value_noise(rng, size, size / 3)
    return (_jitter(cat.background, rng) * tone[..., None]).astype(np.float32)


TextureRenderer = Callable[[Category, np.random.Generator, int, float], FloatArray]
ObjectRenderer = Callable[[Category, np.random.Generator, int, float], tuple[FloatArray, FloatArray]]
_TEXTURES: dict[str, TextureRenderer] = {
    "woven": _woven, "brushed": _brushed, "wood": _wood, "leather": _leather, "granular": _granular,
}
_OBJECTS: dict[str, ObjectRenderer] = {
    "disc": _disc, "bottle": _bottle, "screw": _screw, "capsule": _capsule,
}


# ----------------------------------------------------------------------------- scene


@dataclass
class _Scene:
    """A rendered base image before lighting, plus what defects need to know about it.

    surface: (H, W, 3) colours before illumination. coverage: (H, W) object coverage (all
    ones for textures). background: (H, W, 3) what shows where the object is absent (None
    for textures). support: flat indices of pixels where a defect may be centred.
    illumination: (H, W, 3) multiplicative light; noise: (H, W, 3) additive sensor noise.
    """

    surface: FloatArray
    coverage: FloatArray
    background: FloatArray | None
    support: NDArray[np.intp]
    light: float
    illumination: FloatArray
    noise: FloatArray

    @property
    def size(self) -> int:
        return self.surface.shape[0]

    def finish(self, surface: FloatArray) -> NDArray[np.uint8]:
        """Light, add sensor noise, quantise to uint8."""
        img = surface * self.illumination + self.noise
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _render_scene(cat: Category, rng: np.random.Generator, size: int) -> _Scene:
    light = rng.uniform(0, 2 * math.pi)
    background = None
    if cat.kind in _TEXTURES:
        surface = _TEXTURES[cat.kind](cat, rng, size, light)
        coverage = np.ones((size, size), np.float32)
        margin = int(0.05 * size)
        inside = np.zeros((size, size), bool)
        inside[margin:size - margin, margin:size - margin] = True
    else:
        obj, coverage = _OBJECTS[cat.kind](cat, rng, size, light)
        background = _background(cat, rng, size)
        shift = 0.025 * size
        offset = (round(shift * -math.sin(light)), round(shift * -math.cos(light)))
        shadow = ndimage.gaussian_filter(np.roll(coverage, offset, axis=(0, 1)), 4.0 * size / 256)
        background *= (1 - rng.uniform(0.25, 0.45) * shadow)[..., None]
        surface = background + (obj - background) * coverage[..., None]
        inside = ndimage.binary_erosion(coverage > 0.95, iterations=max(1, size // 128))
        if not inside.any():  # a thin object at a small size: no interior survives erosion
            inside = coverage >= 0.5
    yy, xx = _grid(size)
    gy, gx = rng.normal(0, 1, 2)
    gradient = np.float32(rng.uniform(0, 0.12)) \
        * (np.float32(gx) * (xx / size - 0.5) + np.float32(gy) * (yy / size - 0.5))
    vignette = np.float32(rng.uniform(0, 0.25)) * (((xx / size - 0.5) ** 2 + (yy / size - 0.5) ** 2) * 2)
    light_map = rng.uniform(0.9, 1.08) * (1 + 0.05 * _value_noise(rng, size, 2) + gradient - vignette)
    tint = np.exp(rng.normal(0, 0.006, 3)).astype(np.float32)
    sigma = np.float32(rng.uniform(0.004, 0.016))
    noise = sigma * (rng.standard_normal((size, size, 1), dtype=np.float32)
                     + 0.35 * rng.standard_normal((size, size, 3), dtype=np.float32))
    return _Scene(surface=np.clip(surface, 0, 1), coverage=coverage, background=background,
                  support=np.flatnonzero(inside), light=light,
                  illumination=(light_map[..., None] * tint).astype(np.float32), noise=noise)


# ----------------------------------------------------------------------------- defects


@dataclass
class _Layer:
    """A defect as painted: colour (H, W, 3), compositing alpha (H, W), mask weight (H, W)."""

    colour: FloatArray
    alpha: FloatArray
    weight: FloatArray


def _pick(scene: _Scene, rng: np.random.Generator,
          pool: NDArray[np.intp] | None = None) -> tuple[float, float]:
    """A random (y, x) pixel position from ``pool`` (default: the scene's support)."""
    pool = scene.support if pool is None or pool.size == 0 else pool
    flat = int(pool[rng.integers(pool.size)])
    return flat // scene.size + rng.uniform(-0.5, 0.5), flat % scene.size + rng.uniform(-0.5, 0.5)


def _crop(size: int, cy: float, cx: float, reach: float) -> tuple[slice, slice]:
    y0, x0 = max(0, int(cy - reach)), max(0, int(cx - reach))
    y1, x1 = min(size, int(cy + reach) + 2), min(size, int(cx + reach) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _blob(size: int, cy: float, cx: float, radius: float, rng: np.random.Generator, *,
          aspect: float, roughness: float, feather: float, harmonics: int = 5) -> FloatArray:
    """(size, size) alpha of an irregular soft-edged blob of roughly ``pi * radius**2`` pixels.

    The outline is an ellipse whose radius is perturbed by random low harmonics of the
    polar angle; ``feather`` is the width (pixels) of the soft edge.
    """
    out = np.zeros((size, size), np.float32)
    reach = radius * math.sqrt(aspect) * (1 + roughness) + feather + 2
    ys, xs = _crop(size, cy, cx, reach)
    yy, xx = _grid(size)
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = xx[ys, xs] - np.float32(cx), yy[ys, xs] - np.float32(cy)
    u = (dx * c + dy * s) / np.float32(math.sqrt(aspect))
    v = (dy * c - dx * s) * np.float32(math.sqrt(aspect))
    dist, phi = np.hypot(u, v), np.arctan2(v, u)
    k = np.arange(2, 2 + harmonics)
    amps = roughness * rng.uniform(0, 1, harmonics) / (k - 1)
    phases = rng.uniform(0, 2 * math.pi, harmonics)
    outline = np.ones_like(phi)
    for amp, kk, ph in zip(amps, k, phases):
        outline += np.float32(amp) * np.cos(np.float32(kk) * phi + np.float32(ph))
    out[ys, xs] = np.clip((np.float32(radius) * outline - dist) / np.float32(feather) + 0.5, 0, 1)
    return out


def _stroke(size: int, ys: np.ndarray, xs: np.ndarray, widths: np.ndarray) -> FloatArray:
    """(size, size) alpha of a polyline sampled densely at (ys, xs) with per-point widths.

    A Euclidean distance transform finds each pixel's nearest sample; coverage falls off
    linearly over one pixel around half that sample's width (anti-aliased edges). Widths
    are at least _MIN_STROKE_WIDTH so every sample's nearest pixel is covered >= 0.5: a
    thinner line would change pixels without ever entering the mask.
    """
    widths = np.maximum(widths, _MIN_STROKE_WIDTH)
    out = np.zeros((size, size), np.float32)
    keep = (ys > -0.5) & (ys < size - 0.5) & (xs > -0.5) & (xs < size - 0.5)
    if not keep.any():
        return out
    ys, xs, widths = ys[keep], xs[keep], widths[keep]
    reach = float(widths.max()) / 2 + 2
    y0, y1 = max(0, int(ys.min() - reach)), min(size, int(ys.max() + reach) + 2)
    x0, x1 = max(0, int(xs.min() - reach)), min(size, int(xs.max() + reach) + 2)
    iy, ix = np.rint(ys).astype(np.intp) - y0, np.rint(xs).astype(np.intp) - x0
    free = np.ones((y1 - y0, x1 - x0), bool)
    free[iy, ix] = False
    point_y = np.zeros(free.shape, np.float32)
    point_x = np.zeros(free.shape, np.float32)
    width = np.zeros(free.shape, np.float32)
    point_y[iy, ix], point_x[iy, ix], width[iy, ix] = ys, xs, widths
    _, (ny, nx) = ndimage.distance_transform_edt(free, return_indices=True)
    yy, xx = _grid(size)
    dist = np.hypot(yy[y0:y1, x0:x1] - point_y[ny, nx], xx[y0:y1, x0:x1] - point_x[ny, nx])
    out[y0:y1, x0:x1] = np.clip(width[ny, nx] / 2 + 0.5 - dist, 0, 1)
    return out


def _scratch(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A thin curved line, brighter (burnished) or darker (groove) than the surface."""
    size = scene.size
    width = max(_MIN_STROKE_WIDTH, rng.uniform(1.0, 2.6) * size / 256)
    length = float(np.clip(area / width, 0.06 * size, 0.7 * size))
    cy, cx = _pick(scene, rng)
    t = np.arange(0.0, length, 0.5)
    heading = rng.uniform(0, 2 * math.pi) + rng.normal(0, 1.5 / length) * t \
        + 0.04 * np.sin(t / rng.uniform(8, 30) + rng.uniform(0, 6.3))
    ys = cy + np.cumsum(0.5 * np.sin(heading))
    xs = cx + np.cumsum(0.5 * np.cos(heading))
    ys, xs = ys - (ys[-1] - ys[0]) / 2, xs - (xs[-1] - xs[0]) / 2
    widths = width * (0.35 + 0.65 * np.sin(np.pi * t / length) ** 0.5)
    alpha = _stroke(size, ys, xs, widths) * scene.coverage
    strength = np.float32(rng.uniform(0.35, 0.75))
    colour = surface + (1 - surface) * strength if rng.random() < 0.5 else surface * (1 - strength)
    return _Layer(colour, alpha, alpha)


def _crack(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A dark jagged fissure: a meandering random walk that branches once or twice."""
    size = scene.size
    width = max(_MIN_STROKE_WIDTH, rng.uniform(1.2, 2.6) * size / 256)
    trunk = float(np.clip(0.7 * area / (0.75 * width), 0.1 * size, 0.6 * size))
    step = 0.8

    def walk(y: float, x: float, heading: float, length: float, w: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = max(2, int(length / step))
        angles = heading + np.cumsum(rng.normal(0, 0.06, n)) + rng.normal(0, 0.35, n)
        ys = y + np.cumsum(step * np.sin(angles))
        xs = x + np.cumsum(step * np.cos(angles))
        return ys, xs, w * (1 - 0.7 * np.arange(n) / n)

    cy, cx = _pick(scene, rng)
    heading = rng.uniform(0, 2 * math.pi)
    # Start half a trunk back so the crack is centred on the picked point.
    ys, xs, ws = walk(cy - trunk / 2 * math.sin(heading), cx - trunk / 2 * math.cos(heading),
                      heading, trunk, width)
    parts = [(ys, xs, ws)]
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(len(ys) // 5, max(len(ys) // 5 + 1, 4 * len(ys) // 5)))
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        parts.append(walk(ys[at], xs[at], heading + turn, trunk * rng.uniform(0.2, 0.5), ws[at] * 0.7))
    alpha = _stroke(size, *(np.concatenate(p) for p in zip(*parts))) * scene.coverage
    colour = surface * np.float32(rng.uniform(0.1, 0.4))
    return _Layer(colour, alpha, alpha)


def _hole(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A dark elliptical pit with a raised rim lit from the scene's light direction."""
    size = scene.size
    aspect = rng.uniform(1.0, 1.8)
    semi_b = math.sqrt(area / (math.pi * aspect))
    semi_a = semi_b * aspect
    rim = rng.uniform(1.0, 2.5) * size / 256
    cy, cx = _pick(scene, rng)
    theta = rng.uniform(0, math.pi)
    u, v = _rotated(size, cy, cx, theta)
    rho = np.hypot(u / np.float32(semi_a), v / np.float32(semi_b))
    edge = (rho - 1) * np.float32(math.sqrt(semi_a * semi_b))  # ~ signed distance to the edge
    inner = np.clip(0.5 - edge, 0, 1)
    outer = np.clip(0.5 - (edge - np.float32(rim)), 0, 1)
    facing = np.cos(np.arctan2(v, u) + np.float32(theta - scene.light))
    depth = np.float32(rng.uniform(0.03, 0.15))
    pit = surface * (depth * (1 + np.clip(-facing, 0, 1) * np.minimum(rho, 1) * 1.5))[..., None]
    rim_colour = surface * (1 + 0.45 * facing)[..., None]
    share = (inner / np.maximum(outer, 1e-6))[..., None]
    alpha = outer * scene.coverage
    return _Layer(np.clip(pit * share + rim_colour * (1 - share), 0, 1), alpha, alpha)


_STAIN_TINTS = np.array([
    (0.55, 0.42, 0.28), (0.35, 0.35, 0.38), (0.78, 0.74, 0.42), (1.45, 1.38, 1.25), (0.62, 0.5, 0.62),
], np.float32)
_SPOT_COLOURS = np.array([
    (0.88, 0.1, 0.1), (0.1, 0.25, 0.88), (0.1, 0.72, 0.2),
    (0.96, 0.86, 0.1), (0.82, 0.1, 0.72), (0.96, 0.5, 0.05),
], np.float32)


def _stain(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A soft-edged irregular blob of a different colour (rust, oil, residue, bleaching)."""
    size = scene.size
    cy, cx = _pick(scene, rng)
    shape = _blob(size, cy, cx, math.sqrt(area / math.pi), rng, aspect=rng.uniform(1.0, 1.7),
                  roughness=0.3, feather=rng.uniform(1.5, 5.0) * size / 256)
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))] * np.exp(rng.normal(0, 0.05, 3)).astype(np.float32)
    colour = np.clip(surface * tint * np.float32(0.65) + np.minimum(tint, 1) * np.float32(0.3), 0, 1)
    # Opacity between 0.7 * 0.8 and 0.95: the whole blob interior stays above the 0.5 mask cut.
    patchy = 0.8 + 0.2 * _smoothstep(-1, 1, _value_noise(rng, size, 12))
    alpha = shape * np.float32(rng.uniform(0.7, 0.95)) * patchy
    alpha *= scene.coverage
    return _Layer(colour, alpha, alpha)


def _color_spot(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A few small saturated blobs (paint, ink) clustered together."""
    size = scene.size
    count = int(rng.integers(1, 5))
    radius = math.sqrt(area / count / math.pi)
    cy, cx = _pick(scene, rng)
    shape = np.zeros((size, size), np.float32)
    for _ in range(count):
        oy, ox = rng.normal(0, 1.5 * radius, 2) if count > 1 else (0.0, 0.0)
        shape = np.maximum(shape, _blob(size, cy + oy, cx + ox, radius * rng.uniform(0.7, 1.3), rng,
                                        aspect=rng.uniform(1.0, 1.5), roughness=0.15,
                                        feather=0.8 * size / 256))
    paint = _SPOT_COLOURS[rng.integers(len(_SPOT_COLOURS))] * np.float32(rng.uniform(0.75, 1.0))
    luminance = 0.299 * surface[..., 0] + 0.587 * surface[..., 1] + 0.114 * surface[..., 2]
    colour = paint * (0.8 + 0.3 * luminance)[..., None]
    alpha = shape * scene.coverage
    return _Layer(colour.astype(np.float32), alpha, alpha)


def _missing_piece(scene: _Scene, rng: np.random.Generator, area: float, surface: FloatArray) -> _Layer:
    """A jagged chunk broken off the object's edge: the background shows through.

    The layer composites with the chunk's alpha but the mask weight is alpha times the
    object coverage, so only pixels that used to be object are marked.
    """
    assert scene.background is not None, "missing_piece needs an object kind"
    size = scene.size
    edge = np.flatnonzero((scene.coverage > 0.2) & (scene.coverage < 0.8))
    cy, cx = _pick(scene, rng, edge)
    chunk = _blob(size, cy, cx, math.sqrt(2 * area / math.pi), rng, aspect=rng.uniform(1.0, 2.0),
                  roughness=0.35, feather=0.7 * size / 256, harmonics=11)
    return _Layer(scene.background, chunk, chunk * scene.coverage)


# A painter gets the scene, the defect stream, a target area in pixels and the current
# surface (earlier instances already painted) and returns one instance as a layer.
DefectPainter = Callable[[_Scene, np.random.Generator, float, FloatArray], _Layer]
_PAINTERS: dict[str, DefectPainter] = {
    "scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain,
    "missing_piece": _missing_piece, "color_spot": _color_spot,
}


def _paint_defects(scene: _Scene, defect_type: str, rng: np.random.Generator
                   ) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Paint 1-3 instances of ``defect_type``; returns (surface, mask).

    Each instance is redrawn until its own mask is big enough and visibly different from
    what it covers, so the final mask is never empty and never marks invisible changes.
    """
    size = scene.size
    lo, hi = _AREA_RANGE[defect_type]
    count = int(rng.integers(1, 4))
    total = math.exp(rng.uniform(math.log(lo), math.log(hi))) * size * size
    # A small object (a screw) must not be covered entirely by its defects.
    total = min(total, _MAX_OBJECT_SHARE * float(scene.coverage.sum()))
    surface = scene.surface.copy()
    mask = np.zeros((size, size), bool)
    for _ in range(count):
        for _attempt in range(_MAX_TRIES):
            area = max(total / count * rng.uniform(0.6, 1.4), 2 * _MIN_INSTANCE_FRACTION * size * size)
            layer = _PAINTERS[defect_type](scene, rng, area, surface)
            region = layer.weight >= 0.5
            if region.sum() < _MIN_INSTANCE_FRACTION * size * size:
                continue
            alpha = layer.alpha[..., None]
            painted = surface * (1 - alpha) + layer.colour * alpha
            if float(np.abs(painted[region] - surface[region]).mean()) >= _MIN_CONTRAST:
                surface = painted
                mask |= region
                break
        else:
            raise RuntimeError(f"could not place a visible {defect_type} after {_MAX_TRIES} tries")
    return surface, mask


# ----------------------------------------------------------------------------- public API


def _streams(seed: int, category: str, split: str, index: int
             ) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (base, defect) generators for one image."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    root = np.random.SeedSequence([seed, _stable_hash(category), _stable_hash(split), index])
    base, defects = root.spawn(2)
    return np.random.default_rng(base), np.random.default_rng(defects)


def generate_image(category: str, *, seed: int, index: int, anomalous: bool, size: int = 256,
                   defect_types: Sequence[str] | None = None, split: str = "test") -> SyntheticSample:
    """Render image ``index`` of ``category``, reproducibly from (seed, category, split, index).

    ``split`` names an independent stream of images (any string; ``mvtec_layout`` uses the
    folder, e.g. ``"train/good"``). The same arguments with ``anomalous=False`` and ``True``
    give the same base image, the latter with 1-3 defects of one type drawn on top. The type
    is drawn from ``defect_types`` (default: the category's types). Returns a
    :class:`SyntheticSample` with a uint8 (size, size, 3) image and a bool (size, size) mask.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    cat = get_category(category)
    base_rng, defect_rng = _streams(seed, cat.name, split, index)
    scene = _render_scene(cat, base_rng, size)
    if not anomalous:
        return SyntheticSample(scene.finish(scene.surface), np.zeros((size, size), bool), GOOD, cat.name)
    choices = tuple(defect_types) if defect_types is not None else cat.defect_types
    bad = set(choices) - set(cat.defect_types)
    if not choices or bad:
        raise ValueError(f"defect types {sorted(bad) or '[]'} not available for {cat.name!r} "
                         f"(kind {cat.kind!r}); choose from {cat.defect_types}")
    defect_type = choices[int(defect_rng.integers(len(choices)))]
    surface, mask = _paint_defects(scene, defect_type, defect_rng)
    return SyntheticSample(scene.finish(surface), mask, defect_type, cat.name)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) RGB image or a bool (H, W) mask (mode L, 0/255)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mvtec_layout(categories: Iterable[str], *, seed: int, n_train_good: int, n_test_good: int,
                 n_test_defect: int, size: int = 256) -> Iterator[tuple[str, bytes]]:
    """Yield (relative_path, png_bytes) of a dataset in the exact MVTec-AD folder layout.

    Per category: ``<c>/train/good/NNN.png``, ``<c>/test/good/NNN.png`` and, for every
    defect type of the category, ``n_test_defect`` images ``<c>/test/<type>/NNN.png`` each
    followed by its mask ``<c>/ground_truth/<type>/NNN_mask.png`` (mode L, 0/255, same size).
    Every folder is its own image stream, numbered from 000, so changing one count never
    changes the images of another folder.
    """
    if min(n_train_good, n_test_good, n_test_defect) < 0:
        raise ValueError("image counts must be >= 0")
    for name in categories:
        cat = get_category(name)
        folders = [("train/good", None, n_train_good), ("test/good", None, n_test_good)]
        folders += [(f"test/{t}", t, n_test_defect) for t in cat.defect_types]
        for folder, defect_type, count in folders:
            for i in range(count):
                sample = generate_image(name, seed=seed, index=i, size=size, split=folder,
                                        anomalous=defect_type is not None,
                                        defect_types=None if defect_type is None else [defect_type])
                yield f"{name}/{folder}/{i:03d}.png", encode_png(sample.image)
                if defect_type is not None:
                    yield f"{name}/ground_truth/{defect_type}/{i:03d}_mask.png", encode_png(sample.mask)
