"""Seeing a large frame piece by piece: the tile grid of stage 1, its stitching, and SAM's windows (DESIGN §13).

Frames are numpy arrays in (row, column) order; a window is (top, left, bottom, right) in source
pixels, bottom/right exclusive. Stitching weights are separable (a ramp along rows times a ramp
along columns) and every tile of a plan has the same size, so the sum of the weights at a pixel is
the outer product of two 1-D sums: the stitched map needs no full-frame weight image, and a
constant map stitches to that constant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import TileConfig

Window = tuple[int, int, int, int]  # (top, left, bottom, right), source pixels, bottom/right exclusive


def tile_side(config: TileConfig, grid: int, patch: int) -> int:
    """Tile side in source pixels: `config.side`, else patch_pixels (default: the CLIP patch) × grid."""
    if config.side is not None:
        return int(config.side)
    return max(1, int(round((config.patch_pixels or patch) * grid)))


def axis_starts(length: int, side: int, overlap: float) -> list[int]:
    """Start offsets of tiles of `side` along an axis of `length` pixels: evenly spread from 0 to
    length − side, each step at most side·(1 − overlap). One start (0) when length ≤ side."""
    if length <= side:
        return [0]
    stride = max(1.0, side * (1.0 - overlap))
    count = math.ceil((length - side) / stride) + 1
    return [int(round(v)) for v in np.linspace(0, length - side, count)]


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one frame: every tile is `size` = (rows, columns) source pixels (the tile
    side, or the frame's extent where the frame is smaller), at the product of `tops` × `lefts`.
    magnification: CLIP input size / tile side, how much larger than in the frame CLIP sees a tile."""

    frame: tuple[int, int]
    size: tuple[int, int]
    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    magnification: float = 1.0

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def windows(self) -> Iterator[Window]:
        """Row by row, left to right."""
        for top in self.tops:
            for left in self.lefts:
                yield top, left, top + self.size[0], left + self.size[1]


def plan_tiles(frame: tuple[int, int], config: TileConfig, input_size: int, grid: int, patch: int) -> TilePlan | None:
    """The tile plan for a frame (H, W), or None when the frame is scored whole: mode "off", mode
    "auto" with max(H, W) ≤ auto_factor × input_size, or a frame that fits in one tile."""
    if config.mode == "off" or (config.mode == "auto" and max(frame) <= config.auto_factor * input_size):
        return None
    side = tile_side(config, grid, patch)
    size = (min(side, frame[0]), min(side, frame[1]))
    plan = TilePlan(frame, size, tuple(axis_starts(frame[0], side, config.overlap)),
                    tuple(axis_starts(frame[1], side, config.overlap)), input_size / side)
    return plan if len(plan) > 1 else None


def ramp(starts: Iterable[int], side: int) -> np.ndarray:
    """float64 [side]: one tile's stitching weight along an axis. A raised-cosine rise over the
    narrowest overlap between neighbours (so weights are smooth and a tile fades out where the
    next one takes over), 1 in between, never 0 (a frame's border pixels, seen by one tile only,
    keep their value)."""
    steps = np.diff(sorted(set(starts)))
    band = side - int(steps.max()) if len(steps) else 0
    weight = np.ones(side)
    if band > 0:
        rise = np.sin(0.5 * np.pi * (np.arange(band) + 0.5) / band) ** 2
        weight[:band] = np.minimum(weight[:band], rise)
        weight[side - band:] = np.minimum(weight[side - band:], rise[::-1])
    return weight


def stitch(plan: TilePlan, tile_maps: Iterable[np.ndarray]) -> np.ndarray:
    """Tile maps (float [h, w] each, any resolution, in `plan.windows()` order) → float32 [H, W]
    in the frame: each map resized bilinearly to its tile's size, weighted by the tiles' ramps,
    and normalised by the sum of weights. Memory: one float32 frame (the result) plus one tile."""
    height, width = plan.frame
    rows_w = ramp(plan.tops, plan.size[0])
    cols_w = ramp(plan.lefts, plan.size[1])
    weight = np.outer(rows_w, cols_w).astype(np.float32)
    out = np.zeros(plan.frame, np.float32)
    row_sum, col_sum = np.zeros(height), np.zeros(width)
    for top in plan.tops:
        row_sum[top:top + plan.size[0]] += rows_w
    for left in plan.lefts:
        col_sum[left:left + plan.size[1]] += cols_w
    count = 0
    for (top, left, bottom, right), tile in zip(plan.windows(), tile_maps):
        out[top:bottom, left:right] += weight * resize_map(tile, plan.size)
        count += 1
    if count != len(plan):
        raise ValueError(f"stitch got {count} tile maps for a plan of {len(plan)} tiles")
    out /= row_sum.astype(np.float32)[:, None]
    out /= col_sum.astype(np.float32)[None, :]
    return np.clip(out, 0.0, 1.0, out=out)


def resize_map(values: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A map [h, w] → float32 [H, W] = `size` (bilinear, half-pixel centres; the array itself, as
    float32, when it already has that size)."""
    if tuple(values.shape) == tuple(size):
        return np.asarray(values, dtype=np.float32)
    tensor = torch.as_tensor(values, dtype=torch.float32)[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


MERGE_LIMIT = 2  # merged SAM windows stay within this many window sides on each axis


def sam_windows(boxes: np.ndarray, frame: tuple[int, int], side: int) -> list[tuple[Window, list[int]]]:
    """SAM's windows for components with boxes (x0, y0, x1, y1) [N, 4] in a frame (H, W):
    (window, indices of the components it holds) each, left to right.

    A component's window is `side` × `side` centred on its box (or the box, where that is
    larger), moved inside the frame. Two windows that overlap are merged into their bounding
    window while it stays within MERGE_LIMIT × side on each axis, so neighbouring components
    share one encoder pass; a crowd of components does not grow into one frame-sized window that
    SAM would see shrunk. Windows that still overlap are fused by the pixel-wise max
    (`mmr.fuse_in_windows`). Every component is in exactly one window. Cost: a sweep along
    columns per round of merging, so about linear in N for components spread along a frame.
    """
    height, width = frame
    groups: list[tuple[list[int], list[int]]] = []  # ([top, left, bottom, right], members)
    for index, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        top, bottom = _span(y0, y1, side, height)
        left, right = _span(x0, x1, side, width)
        groups.append(([top, left, bottom, right], [index]))
    limit = MERGE_LIMIT * side
    merged = True
    while merged:
        merged = False
        groups.sort(key=lambda g: (g[0][1], g[0][0]))
        widest = max((g[0][3] - g[0][1] for g in groups), default=0)
        kept: list[tuple[list[int], list[int]]] = []
        for box, members in groups:
            for k in range(len(kept) - 1, -1, -1):
                other = kept[k][0]
                if other[1] + widest <= box[1]:  # this and every earlier kept window end left of box
                    kept.append((box, members))
                    break
                union = _merged(other, box, limit)
                if union is not None:
                    kept[k] = (union, kept[k][1] + members)
                    widest = max(widest, union[3] - union[1])
                    merged = True
                    break
            else:
                kept.append((box, members))
        groups = kept
    return [(tuple(box), sorted(members)) for box, members in groups]


def _merged(a: list[int], b: list[int], limit: int) -> list[int] | None:
    """The bounding window of two overlapping windows if no side of it exceeds `limit` (or either
    window's own side), else None."""
    if not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]):
        return None
    box = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
    rows_limit = max(limit, a[2] - a[0], b[2] - b[0])
    cols_limit = max(limit, a[3] - a[1], b[3] - b[1])
    return box if box[2] - box[0] <= rows_limit and box[3] - box[1] <= cols_limit else None


def _span(lo: float, hi: float, side: int, length: int) -> tuple[int, int]:
    """[start, stop) of at least `side` pixels (or the box, if longer), centred on [lo, hi) and
    moved inside [0, length)."""
    lo_px, hi_px = int(math.floor(lo)), int(math.ceil(hi))
    extent = min(length, max(side, hi_px - lo_px))
    start = int(round((lo_px + hi_px - extent) / 2))
    start = min(max(0, start), length - extent)
    return start, start + extent
