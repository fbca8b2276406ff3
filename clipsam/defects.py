"""Defect instances: one entry per 8-connected component of the final mask (DESIGN §5, "defects").

Each instance carries what a COCO results consumer expects of a detection: `bbox` [x, y, w, h]
(pixels, COCO convention: x, y = column and row of the top-left pixel of the component, w, h
its width and height in pixels, as floats), `area` (pixels), its own `segmentation` as COCO
compressed RLE (`size` [H, W] of the whole image, `counts` str, column-major, the form of the
record's `mask_rle`), and the final map's `max_score` and `mean_score` over its pixels.

The RLE of a component is built from the runs inside its bounding box only (cost grows with the
box, not with the image), then compressed by pycocotools, so it is the same string that
`pycocotools.mask.encode` gives for the full-size component mask.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from scipy import ndimage

from .mmr import EIGHT_CONNECTED
from .rle import RLE

MAX_DEFECTS = 256


def component_rle(component: np.ndarray, top: int, left: int, height: int, width: int) -> RLE:
    """COCO compressed RLE of a mask of size [height, width] whose True pixels are exactly
    `component` (bool [h, w]) placed with its top-left corner at row `top`, column `left`."""
    h, w = component.shape
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = component.T  # column-major: one row of `padded` per image column
    steps = np.diff(padded, axis=1)
    start_x, start_y = np.nonzero(steps == 1)  # row-major order: by column, then by row
    end_x, end_y = np.nonzero(steps == -1)
    starts = (left + start_x).astype(np.int64) * height + top + start_y
    ends = (left + end_x).astype(np.int64) * height + top + end_y
    if starts.size:
        # A run that ends at the bottom of one column and one that starts at the top of the next
        # are one run in column-major order.
        joined = ends[:-1] == starts[1:]
        starts = starts[np.concatenate(([True], ~joined))]
        ends = ends[np.concatenate((~joined, [True]))]
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds)
    if counts.size > 1 and counts[-1] == 0:  # the mask ends with a run of ones: no trailing zeros
        counts = counts[:-1]
    encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}


def defect_instances(final_map: np.ndarray, mask: np.ndarray,
                     max_defects: int = MAX_DEFECTS) -> tuple[list[dict[str, Any]], bool]:
    """The 8-connected components of `mask` (bool [H, W]) as defect entries, and whether some
    were left out.

    final_map: float [H, W], the scores the mask was thresholded from (same frame).
    Returns (defects, truncated): at most `max_defects` entries, the largest components first
    (ties: in raster order of their first pixel); truncated is True when the mask had more.
    Entry keys: bbox [x, y, w, h] (float), area (int pixels), max_score, mean_score (float),
    segmentation (COCO RLE of that component alone, size [H, W]).
    """
    if mask.shape != final_map.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and final_map {final_map.shape} must be the same 2-D shape")
    if max_defects < 0:
        raise ValueError(f"max_defects must be >= 0, got {max_defects}")
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return [], False
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.lexsort((np.arange(count), -areas))[:max_defects]  # area descending, then label
    slices = ndimage.find_objects(labels)
    height, width = mask.shape
    defects = []
    for index in order:
        rows, cols = slices[index]
        component = labels[rows, cols] == index + 1
        scores = np.asarray(final_map[rows, cols], dtype=np.float64)[component]
        defects.append({
            "bbox": [float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)],
            "area": int(areas[index]),
            "max_score": float(scores.max()),
            "mean_score": float(scores.mean()),
            "segmentation": component_rle(component, rows.start, cols.start, height, width),
        })
    return defects, count > max_defects


def defects_found(mask: np.ndarray, gt_mask: np.ndarray, min_overlap: float = 0.1) -> tuple[int, int]:
    """Per-defect recall counts: (found, total) over the ground-truth defects (8-connected
    components of `gt_mask`), a defect found when `mask` covers at least `min_overlap` of its
    pixels. mask, gt_mask: bool [H, W] in the same frame. Unlike pixel metrics, a small defect
    weighs as much as a large one here, which is what an inspector counts."""
    if mask.shape != gt_mask.shape:
        raise ValueError(f"mask {mask.shape} and ground truth {gt_mask.shape} must be the same shape")
    labels, total = ndimage.label(gt_mask, structure=EIGHT_CONNECTED)
    if total == 0:
        return 0, 0
    sizes = np.bincount(labels.ravel(), minlength=total + 1)
    covered = np.bincount(labels[mask], minlength=total + 1)
    return int((covered[1:] >= min_overlap * sizes[1:]).sum()), int(total)
