"""MMR, the arithmetic half: prompts from the rough map, and fusion of SAM's mask levels (DESIGN §4.3).

Everything here works on numpy arrays in the original image frame, so it is testable on
hand-made maps. SAM itself is called through `sam_adapter.SamAdapter`; `stage2.MMRRefiner`
calls prompts → SAM → fusion in that order.

Coordinate conventions (same as segment_anything's SamPredictor):
- a point is (x, y) = (column, row) of a pixel;
- a box is (x0, y0, x1, y1) in pixel-edge coordinates: x0 is the left edge of the leftmost
  pixel, x1 the right edge of the rightmost one (so a one-pixel component at column 7 spans
  x0 = 7, x1 = 8 before padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .config import MMRConfig

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ComponentPrompt:
    """SAM prompts for one connected component of the thresholded rough map.

    box: float32 [4] (x0, y0, x1, y1), padded and clipped to the image.
    points: float32 [P, 2] (x, y); first the rough-map argmax, then the centroid if it lies inside.
    labels: int32 [P], 1 = foreground.
    area: number of pixels of the component.
    """

    box: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    area: int


def min_component_area(shape: tuple[int, int], config: MMRConfig) -> int:
    """Smallest component kept, in pixels (at least 1)."""
    return max(1, math.ceil(config.min_area_fraction * shape[0] * shape[1]))


def extract_prompts(rough_map: np.ndarray, config: MMRConfig, seen: tuple[int, int] | None = None
                    ) -> list[ComponentPrompt]:
    """Threshold at τ, label 8-connected components, drop small ones, one prompt per component.

    rough_map: float [H, W] in [0, 1], in the original image frame.
    seen: (h, w) of what CLIP saw at once: one tile of a tiled frame, by default the whole map.
    The smallest component kept is `min_area_fraction` of it, and at most `max_components` are
    kept per such area of the map (the largest when there are more), so a tiled frame keeps
    what each of its tiles would keep.
    Returns the components in scan order (top-left first).
    """
    binary = rough_map >= config.prompt_threshold
    labels, count = ndimage.label(binary, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    height, width = rough_map.shape
    seen = seen or (height, width)
    most = config.max_components * max(1, round(height * width / (seen[0] * seen[1])))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = [i for i in range(1, count + 1) if areas[i] >= min_component_area(seen, config)]
    if len(keep) > most:
        keep = sorted(sorted(keep, key=lambda i: -areas[i])[:most])
    slices = ndimage.find_objects(labels)
    prompts = []
    for index in keep:
        rows, cols = slices[index - 1]
        window = labels[rows, cols] == index
        prompts.append(_component_prompt(rough_map[rows, cols], window, rows.start, cols.start, (height, width), config))
    return prompts


def _component_prompt(
    values: np.ndarray,
    inside: np.ndarray,
    top: int,
    left: int,
    shape: tuple[int, int],
    config: MMRConfig,
) -> ComponentPrompt:
    height, width = shape
    pad = config.box_padding
    box = np.array(
        [
            max(0, left - pad),
            max(0, top - pad),
            min(width, left + inside.shape[1] + pad),
            min(height, top + inside.shape[0] + pad),
        ],
        dtype=np.float32,
    )
    peak = np.unravel_index(np.argmax(np.where(inside, values, -np.inf)), inside.shape)
    points = [(left + peak[1], top + peak[0])]
    if config.add_centroid_point:
        rr, cc = np.nonzero(inside)
        # Round half up in image coordinates, so the point does not depend on the crop window.
        cy = int(math.floor(top + rr.mean() + 0.5)) - top
        cx = int(math.floor(left + cc.mean() + 0.5)) - left
        if inside[cy, cx] and (cy, cx) != tuple(peak):
            points.append((left + cx, top + cy))
    return ComponentPrompt(
        box=box,
        points=np.asarray(points, dtype=np.float32),
        labels=np.ones(len(points), dtype=np.int32),
        area=int(inside.sum()),
    )


def pack_prompts(prompts: list[ComponentPrompt]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components' prompts as SAM's decoder takes them, for one batched call:
    boxes float32 [N, 4], points float32 [N, P, 2], labels int64 [N, P]. Components with fewer
    points are padded with label −1, which SAM's prompt encoder treats as "not a point"."""
    most = max(len(p.points) for p in prompts)
    coords = np.zeros((len(prompts), most, 2), dtype=np.float32)
    labels = np.full((len(prompts), most), -1, dtype=np.int64)
    for i, prompt in enumerate(prompts):
        coords[i, : len(prompt.points)] = prompt.points
        labels[i, : len(prompt.labels)] = prompt.labels
    boxes = np.stack([p.box for p in prompts]).astype(np.float32)
    return boxes, coords, labels


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W] of `shape`: the pixels inside a box (x0, y0, x1, y1), its edges rounded to whole pixels."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    inside = np.zeros(shape, bool)
    inside[y0:y1, x0:x1] = True
    return inside


def cells_in_boxes(boxes: np.ndarray, scale: float, side: int) -> np.ndarray:
    """bool [N, side, side]: for each box (x0, y0, x1, y1) [N, 4], multiplied by `scale` into the
    frame of a side × side grid, the grid cells whose centres lie inside it."""
    scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    centres = np.arange(side) + 0.5
    inside_x = (centres[None] >= scaled[:, 0, None]) & (centres[None] < scaled[:, 2, None])
    inside_y = (centres[None] >= scaled[:, 1, None]) & (centres[None] < scaled[:, 3, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def mask_prompt_logits(values: np.ndarray, inside_box: np.ndarray, config: MMRConfig) -> np.ndarray:
    """SAM dense mask prompt (logits) from rough-map values, in the units SAM's `mask_input` has
    (logits of its own earlier masks): gain · (logit(M) − logit(τ)), clipped to ±clamp, inside the
    box, and −clamp ("surely normal") outside it, so a prompt speaks only for its own component's box.
    The logit keeps apart the very small values a rough map is mostly made of on unseen
    categories, which M − τ would flatten (docs/decisions.md, "MMR settings").

    values: float [..., h, w] in [0, 1] (clipped to [1e-7, 1 − 1e-7]); inside_box: bool,
    broadcastable to values. Returns float32 of the broadcast shape.
    """
    v = np.clip(np.asarray(values, np.float64), 1e-7, 1 - 1e-7)
    tau = config.prompt_threshold
    logits = config.mask_prompt_gain * (np.log(v / (1 - v)) - np.log(tau / (1 - tau)))
    clamp = config.mask_prompt_clamp
    return np.where(inside_box, np.clip(logits, -clamp, clamp), -clamp).astype(np.float32)


def level_weights(scores: np.ndarray) -> np.ndarray:
    """Softmax over SAM's mask levels of its predicted-IoU scores: [N, K] → [N, K], rows sum to 1."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def fuse_levels(level_probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One component's SAM map: Σ_k softmax(scores)_k · σ(logit_k).

    level_probs: [N, K, H, W] sigmoid of SAM's mask logits; scores: [N, K].
    Returns [N, H, W] float32 in [0, 1].
    """
    weights = level_weights(scores).astype(np.float32)
    return np.einsum("nk,nkhw->nhw", weights, level_probs.astype(np.float32, copy=False))


def union_of_components(levels: Iterable[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """M_sam: the pixel-wise max over components of each component's `fuse_levels`.

    levels: groups of (level_probs [n, K, H, W], scores [n, K]) covering all components
    (`SamAdapter.level_probabilities`); shape: (H, W). Returns float32 [H, W] in [0, 1].
    """
    sam_map = np.zeros(shape, dtype=np.float32)
    for probs, scores in levels:
        np.maximum(sam_map, fuse_levels(probs, scores).max(axis=0), out=sam_map)
    return sam_map


def fuse_with_rough(rough_map: np.ndarray, sam_map: np.ndarray | None, alpha: float) -> np.ndarray:
    """Final map M = (1 − α)·M_clip + α·M_sam; without SAM (no prompt) M = M_clip."""
    if sam_map is None:
        return rough_map.astype(np.float32, copy=False)
    return fuse_in_windows(rough_map, [((0, 0, *rough_map.shape), sam_map)], alpha)


def fuse_in_windows(rough_map: np.ndarray, windows: Sequence[tuple[tuple[int, int, int, int], np.ndarray]],
                    alpha: float) -> np.ndarray:
    """`fuse_with_rough` where M_sam is given in windows (the union of components across
    windows that overlap is their pixel-wise max, as within one) and is 0 elsewhere.

    windows: ((top, left, bottom, right), M_sam of that window float32 [bottom − top, right − left]).
    Returns float32 [H, W]; with no window, M = M_clip (the same array). Only the result is a
    full-frame array: M_sam never is. (1 − α)·M_clip + α·s grows with s, so the max of the
    fused values over windows is the fusion with the max of M_sam.
    """
    if not windows:
        return rough_map.astype(np.float32, copy=False)
    final = ((1.0 - alpha) * rough_map).astype(np.float32, copy=False)
    for (top, left, bottom, right), sam_map in windows:
        region = final[top:bottom, left:right]
        fused = ((1.0 - alpha) * rough_map[top:bottom, left:right]).astype(np.float32, copy=False) + alpha * sam_map
        np.maximum(region, fused, out=region)
    return final


def image_score(final_map: np.ndarray, config: MMRConfig) -> float:
    """Image-level score: max of M, or the mean of its top `topk_fraction` pixels."""
    if config.image_score == "max":
        return float(final_map.max())
    if config.image_score == "topk":
        k = max(1, int(round(config.topk_fraction * final_map.size)))
        return float(np.partition(final_map.ravel(), final_map.size - k)[-k:].mean())
    raise ValueError(f"unknown image_score {config.image_score!r}: use 'max' or 'topk'")
