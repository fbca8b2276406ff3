"""Seeded synthetic line-scan frames: very wide textured surfaces with a few small defects.

Why this exists: line cameras give frames far wider than a model's input (8192 x 1024,
16000 x 2048, also 4000 x 3000 pixels) whose defects are small (a few tens of pixels on
their longest side), so a detector must tile them. Benchmarking tiled detection needs such
frames with exact masks; this module builds them from :mod:`tiny.synthetic` alone (numpy,
scipy and PIL; no fsspec, no torch), without touching that generator.

How a frame is made:

1. *Surface*: normal images ``generate_image(category, size=block, anomalous=False, ...)``
   are laid on a grid with a stride of ``block - overlap`` pixels. Each block is weighted by
   the outer product of a 1-D raised-cosine ramp (up over its first ``overlap`` pixels, 1 in
   the middle, down over its last ``overlap``); neighbouring ramps sum to exactly 1, so the
   weights are a partition of unity and blocks cross-fade without hard seams. The frame is
   cropped from the mosaic starting ``overlap`` pixels in, where the weights already sum to 1.
   Block image indices are drawn from a stream of the frame's own (see "Randomness").
2. *Defects* (anomalous frames only): one defect type per frame, from the category's types
   usable on textures. Each defect is cut from a small image (96-160 pixels, more for larger
   ``defect_sides``) rendered with that type, and its normal twin: the pasted pixels are those
   where the two differ (the defect with its soft edges), the mask is the small image's mask on
   those pixels. A cut is rejected, and the next small image tried, unless its mask's bounding
   box has its longest side within ``defect_sides`` and no changed pixel touches the small
   image's border (a defect cut off by the border would show a straight edge). Cuts are pasted
   at random positions fully inside the frame, at least ``DEFECT_GAP`` pixels apart.

So an anomalous frame equals its normal frame (same arguments, ``anomalous=False``) exactly
outside the pasted pixels, and its mask is exactly the pasted pixels that the small images'
masks mark.

Randomness: every frame has two independent streams derived from
``(seed, category, split, index)`` through :class:`numpy.random.SeedSequence` and a BLAKE2
hash of the strings (Python's ``hash`` is salted per process): one draws the block image
indices, the other everything about the defects. Frames are therefore identical in every
process, and a frame's surface does not depend on ``anomalous`` or on the defect arguments.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .synthetic import (
    GOOD,
    TEXTURE_KINDS,
    SyntheticSample,
    _stable_hash,
    applicable_defect_types,
    categories_for_split,
    encode_png,
    generate_image,
    get_category,
)

# The held-out (zero-shot test split) texture categories: a line camera looks at a moving web or
# panel surface, which the texture kinds model; objects do not fill a frame edge to edge.
LINE_SCAN_CATEGORIES: tuple[str, ...] = tuple(
    c for c in categories_for_split("test") if get_category(c).kind in TEXTURE_KINDS)

DEFAULT_SPLIT = "line_scan"
DEFAULT_N_DEFECTS = (2, 5)
DEFAULT_DEFECT_SIDES = (8, 30)
DEFECT_GAP = 32  # pixels between the bounding boxes of any two pasted defects, at least
MIN_FRAME_SIDE = 64

# Small-image sides a defect is cut from, for defects up to _REFERENCE_SIDE pixels long; they
# scale up with a larger maximum side so such defects stay reachable. Defect sizes in
# tiny.synthetic scale with the image side, so mixing sides mixes defect scales.
_CUT_SIDES = (96, 128, 160)
_REFERENCE_SIDE = 30
_MAX_CUT_TRIES = 400  # small images tried per defect before giving up with an error
_MAX_PLACE_TRIES = 200  # random positions tried per defect before leaving it out
# Defects that make sense on a surface filling the frame (no piece of an object can go missing).
_TEXTURE_DEFECT_TYPES = applicable_defect_types(TEXTURE_KINDS[0])
_INDEX_RANGE = 2**62  # block and cut image indices are drawn from [0, _INDEX_RANGE)


@dataclass(frozen=True)
class LineScanSample(SyntheticSample):
    """One line-scan frame: a :class:`~tiny.synthetic.SyntheticSample` plus where defects went.

    image: uint8 (height, width, 3) RGB. mask: bool (height, width). defect_type: the frame's
    one defect type, or ``"good"``. boxes: one ``(y0, x0, y1, x1)`` per pasted defect (frame
    pixels, end-exclusive), the bounding box of that defect's pasted pixels: every pasted pixel
    and so every mask pixel lies in exactly one box; within each box the mask's bounding box
    has its longest side within the frame's ``defect_sides``; boxes are at least
    ``DEFECT_GAP`` pixels apart. Empty for a normal frame.
    """

    boxes: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class _Cut:
    """A defect cut from a small image: pixels (h, w, 3) uint8, pasted (h, w) bool, mask (h, w) bool."""

    pixels: NDArray[np.uint8]
    pasted: NDArray[np.bool_]
    mask: NDArray[np.bool_]


def _frame_streams(seed: int, category: str, split: str, index: int
                   ) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (blocks, defects) generators of one frame."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    root = np.random.SeedSequence([seed, _stable_hash("line_scan:" + category), _stable_hash(split), index])
    blocks, defects = root.spawn(2)
    return np.random.default_rng(blocks), np.random.default_rng(defects)


def _range(value: int | tuple[int, int], name: str, low: int) -> tuple[int, int]:
    """``value`` as an inclusive (lo, hi) range of ints >= ``low``."""
    lo, hi = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if int(lo) != lo or int(hi) != hi or not low <= lo <= hi:
        raise ValueError(f"{name} must be an int or a (min, max) pair with {low} <= min <= max, got {value!r}")
    return int(lo), int(hi)


def _tile_count(length: int, block: int, overlap: int) -> int:
    """Blocks along one axis so that mosaic pixels [overlap, overlap + length) all have weight 1.

    Block k covers mosaic pixels [k * stride, k * stride + block); the last one must reach
    ``overlap + length`` before its own ramp down starts.
    """
    stride = block - overlap
    return max(1, math.ceil((length + 2 * overlap - block) / stride) + 1)


def _ramp(block: int, overlap: int) -> NDArray[np.float32]:
    """(block,) float32 weights: raised cosine up over ``overlap`` pixels, 1, then down again.

    r(t) = (1 - cos(pi * (t + 0.5) / overlap)) / 2 for t < overlap satisfies
    r(t) + r(overlap - 1 - t) = 1, so a block's ramp down and the next block's ramp up sum
    to 1 pixel by pixel.
    """
    w = np.ones(block, np.float64)
    if overlap:
        t = np.arange(overlap, dtype=np.float64)
        up = (1 - np.cos(np.pi * (t + 0.5) / overlap)) / 2
        w[:overlap] = up
        w[block - overlap:] = up[::-1]
    return w.astype(np.float32)


def _mosaic(category: str, seed: int, split: str, rng: np.random.Generator, width: int, height: int,
            block: int, overlap: int) -> NDArray[np.uint8]:
    """The blended block mosaic, cropped to a uint8 (height, width, 3) frame.

    Works one row of blocks at a time in one float32 band of ``block`` rows (never a
    full-frame float copy): a band's first ``block - overlap`` rows are final once its row of
    blocks is added; its last ``overlap`` rows move to the top of the band and get the next
    row's ramp up.
    """
    stride = block - overlap
    nx, ny = _tile_count(width, block, overlap), _tile_count(height, block, overlap)
    indices = rng.integers(0, _INDEX_RANGE, size=(ny, nx))
    ramp = _ramp(block, overlap)
    weight = (ramp[:, None] * ramp[None, :])[..., None]  # (block, block, 1)
    mosaic_width = (nx - 1) * stride + block
    x_lo, x_hi = overlap, overlap + width  # frame columns in mosaic coordinates
    out = np.empty((height, width, 3), np.uint8)
    band = np.zeros((block, mosaic_width, 3), np.float32)
    for i in range(ny):
        if i:  # the previous band's last rows, still missing this row's ramp up, move to the top
            band[:overlap] = band[block - overlap:]
            band[overlap:] = 0
        for j in range(nx):
            tile = generate_image(category, seed=seed, index=int(indices[i, j]), anomalous=False,
                                  size=block, split=split).image
            band[:, j * stride: j * stride + block] += tile * weight
        done = block if i == ny - 1 else block - overlap  # band rows no later block touches
        y0 = i * stride  # mosaic row of band row 0
        lo, hi = max(y0, overlap), min(y0 + done, overlap + height)
        if hi > lo:
            rows = band[lo - y0: hi - y0, x_lo:x_hi]
            np.add(rows, 0.5, out=rows)
            np.clip(rows, 0, 255, out=rows)
            out[lo - overlap: hi - overlap] = rows.astype(np.uint8)
    return out


def _bbox(mask: NDArray[np.bool_]) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive, of the True pixels of a non-empty 2-D mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1


def _cut_defect(category: str, defect_type: str, seed: int, split: str, rng: np.random.Generator,
                sides: tuple[int, int], cut_sides: tuple[int, ...], max_h: int, max_w: int) -> _Cut:
    """Cut one defect of ``defect_type`` whose mask bbox longest side is within ``sides``.

    Tries small images (side drawn from ``cut_sides``, index drawn from ``rng``) until one
    passes; the anomalous image alone decides most rejections, so its twin is rendered only
    for candidates.
    """
    lo, hi = sides
    for _ in range(_MAX_CUT_TRIES):
        size = int(cut_sides[int(rng.integers(len(cut_sides)))])
        index = int(rng.integers(0, _INDEX_RANGE))
        sample = generate_image(category, seed=seed, index=index, anomalous=True, size=size,
                                defect_types=[defect_type], split=split)
        y0, x0, y1, x1 = _bbox(sample.mask)
        if not lo <= max(y1 - y0, x1 - x0) <= hi:
            continue
        twin = generate_image(category, seed=seed, index=index, anomalous=False, size=size, split=split)
        changed = (sample.image != twin.image).any(axis=2)
        mask = sample.mask & changed
        if not mask.any():
            continue
        my0, mx0, my1, mx1 = _bbox(mask)
        if not lo <= max(my1 - my0, mx1 - mx0) <= hi:
            continue
        y0, x0, y1, x1 = _bbox(changed)
        if y0 == 0 or x0 == 0 or y1 == size or x1 == size or y1 - y0 > max_h or x1 - x0 > max_w:
            continue
        return _Cut(sample.image[y0:y1, x0:x1].copy(), changed[y0:y1, x0:x1].copy(),
                    mask[y0:y1, x0:x1].copy())
    raise RuntimeError(
        f"no {defect_type} of {category!r} with a mask bounding box of {lo}..{hi} pixels on its "
        f"longest side in {_MAX_CUT_TRIES} small images; widen defect_sides")


def _apart(box: tuple[int, int, int, int], others: Iterable[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` keeps at least DEFECT_GAP pixels (along x or y) from every other box."""
    y0, x0, y1, x1 = box
    return all(y0 >= b[2] + DEFECT_GAP or b[0] >= y1 + DEFECT_GAP or x0 >= b[3] + DEFECT_GAP
               or b[1] >= x1 + DEFECT_GAP for b in others)


def line_scan_frame(category: str, *, seed: int, index: int, width: int, height: int, anomalous: bool,
                    n_defects: int | tuple[int, int] = DEFAULT_N_DEFECTS,
                    defect_sides: tuple[int, int] = DEFAULT_DEFECT_SIDES, block: int = 256,
                    overlap: int | None = None, split: str = DEFAULT_SPLIT) -> LineScanSample:
    """Render line-scan frame ``index`` of ``category``, reproducibly from (seed, category, split, index).

    Returns a :class:`LineScanSample` with a uint8 (height, width, 3) image and a bool
    (height, width) mask (see the module doc for how). ``block`` is the side of the mosaic's
    square source images (>= 32; feature sizes of a texture scale with it) and ``overlap``
    how many pixels neighbouring blocks cross-fade over (default ``block // 4``; 0 gives a
    hard-edged mosaic). ``n_defects`` (an int or an inclusive (min, max) range, >= 1) is how
    many defects are drawn; a frame too small to keep them ``DEFECT_GAP`` apart gets as many
    as fit, always at least one. ``defect_sides`` is the inclusive (min, max) range, in
    pixels, of the longest side of each defect's mask bounding box. The surface depends only
    on (seed, category, split, index, width, height, block, overlap), so the same arguments
    with ``anomalous=False`` give the anomalous frame's normal twin. Raises ValueError for bad
    arguments and RuntimeError when no defect of the drawn type fits ``defect_sides``.
    """
    if width < MIN_FRAME_SIDE or height < MIN_FRAME_SIDE:
        raise ValueError(f"width and height must be >= {MIN_FRAME_SIDE}, got {width} x {height}")
    if block < 32:
        raise ValueError(f"block must be >= 32, got {block}")
    overlap = block // 4 if overlap is None else overlap
    if not 0 <= overlap <= block // 2:
        raise ValueError(f"overlap must be in 0..block // 2 = {block // 2}, got {overlap}")
    count_range = _range(n_defects, "n_defects", 1)
    sides = _range(defect_sides, "defect_sides", 1)
    if sides[1] > min(width, height):
        raise ValueError(f"defect_sides maximum {sides[1]} does not fit a {width} x {height} frame")
    cat = get_category(category)
    types = tuple(t for t in cat.defect_types if t in _TEXTURE_DEFECT_TYPES)
    if anomalous and not types:
        raise ValueError(f"category {cat.name!r} has no defect type usable on textures")
    block_rng, defect_rng = _frame_streams(seed, cat.name, split, index)
    image = _mosaic(cat.name, seed, split, block_rng, width, height, block, overlap)
    mask = np.zeros((height, width), bool)
    if not anomalous:
        return LineScanSample(image, mask, GOOD, cat.name)

    defect_type = types[int(defect_rng.integers(len(types)))]
    count = int(defect_rng.integers(count_range[0], count_range[1] + 1))
    scale = max(1.0, sides[1] / _REFERENCE_SIDE)
    cut_sides = tuple(round(s * scale / 8) * 8 for s in _CUT_SIDES)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        cut = _cut_defect(cat.name, defect_type, seed, f"{split}/defects", defect_rng, sides, cut_sides,
                          height, width)
        h, w = cut.pasted.shape
        for _attempt in range(_MAX_PLACE_TRIES):
            y0 = int(defect_rng.integers(0, height - h + 1))
            x0 = int(defect_rng.integers(0, width - w + 1))
            box = (y0, x0, y0 + h, x0 + w)
            if _apart(box, boxes):
                break
        else:
            continue  # no room left at DEFECT_GAP from the others: the frame gets fewer defects
        region = image[y0:y0 + h, x0:x0 + w]
        region[cut.pasted] = cut.pixels[cut.pasted]
        mask[y0:y0 + h, x0:x0 + w] = cut.mask
        boxes.append(box)
    return LineScanSample(image, mask, defect_type, cat.name, tuple(boxes))


def line_scan_layout(categories: Iterable[str], *, seed: int, n_train_good: int, n_test_good: int,
                     n_test_defect: int, width: int, height: int,
                     n_defects: int | tuple[int, int] = DEFAULT_N_DEFECTS,
                     defect_sides: tuple[int, int] = DEFAULT_DEFECT_SIDES, block: int = 256,
                     overlap: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (relative_path, png_bytes) of line-scan frames in the exact MVTec-AD folder layout.

    Per category: ``<c>/train/good/NNN.png``, ``<c>/test/good/NNN.png`` and ``n_test_defect``
    defective frames in total, each under its own drawn defect type: ``<c>/test/<type>/NNN.png``
    followed by its mask ``<c>/ground_truth/<type>/NNN_mask.png`` (mode L, 0/255, same size),
    numbered from 000 per type folder in the order the frames are drawn. Each of the three
    groups (train good, test good, test defective) is its own frame stream (split
    ``line_scan/<group>``), so changing one count never changes another group's frames, and
    raising ``n_test_defect`` only appends frames. Frame arguments as in :func:`line_scan_frame`.
    """
    if min(n_train_good, n_test_good, n_test_defect) < 0:
        raise ValueError("image counts must be >= 0")
    frame_args = {"seed": seed, "width": width, "height": height, "n_defects": n_defects,
                      "defect_sides": defect_sides, "block": block, "overlap": overlap}
    for name in categories:
        get_category(name)
        for folder, count in (("train/good", n_train_good), ("test/good", n_test_good)):
            for i in range(count):
                frame = line_scan_frame(name, index=i, anomalous=False, split=f"line_scan/{folder}",
                                        **frame_args)
                yield f"{name}/{folder}/{i:03d}.png", encode_png(frame.image)
        numbers: dict[str, int] = {}
        for i in range(n_test_defect):
            frame = line_scan_frame(name, index=i, anomalous=True, split="line_scan/test/defective",
                                    **frame_args)
            number = numbers.get(frame.defect_type, 0)
            numbers[frame.defect_type] = number + 1
            yield f"{name}/test/{frame.defect_type}/{number:03d}.png", encode_png(frame.image)
            yield f"{name}/ground_truth/{frame.defect_type}/{number:03d}_mask.png", encode_png(frame.mask)
