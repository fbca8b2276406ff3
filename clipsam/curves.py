"""ROC, precision-recall and PRO curves of one category, read off the evaluation's histograms.

The metrics (`clipsam.metrics`) reduce each curve to a number; a person deciding where to set a
threshold wants the curve itself. Every curve here is computed from the same fixed-size,
mergeable `CategoryMetricsAccumulator` state as its metric (one point per occupied score bin,
thresholds from high to low), then thinned to at most `max_points` points spread evenly along
the curve's length, so a curve costs the same for ten images and for ten million.

A curve is {"x": [...], "y": [...], "x_label": str, "y_label": str, "area": float | None}: the
area is the matching metric (AUROC, AP, AU-PRO), so a plot can print it. Curves that cannot be
drawn (no anomalous pixel, no normal image, ...) are left out.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .metrics import PRO_FPR_LIMIT, CategoryMetricsAccumulator, cut_at, descending_counts, pro_points, roc_points

DEFAULT_MAX_POINTS = 200


def thin(x: np.ndarray, y: np.ndarray, max_points: int = DEFAULT_MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most `max_points` points of the polyline (x, y), evenly spaced along its length, first
    and last kept; values rounded to 6 decimals (far below a pixel of any plot)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size > max_points:
        length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
        keep = np.unique(np.searchsorted(length, np.linspace(0.0, length[-1], max_points)))
        keep = np.unique(np.concatenate(([0], np.minimum(keep, x.size - 1), [x.size - 1])))
        x, y = x[keep], y[keep]
    return np.round(x, 6).tolist(), np.round(y, 6).tolist()


def _curve(x: np.ndarray, y: np.ndarray, x_label: str, y_label: str, area: Optional[float],
           max_points: int) -> dict[str, Any]:
    xs, ys = thin(x, y, max_points)
    return {"x": xs, "y": ys, "x_label": x_label, "y_label": y_label, "area": area}


def roc_curve(pos: np.ndarray, neg: np.ndarray, area: Optional[float], max_points: int) -> Optional[dict[str, Any]]:
    """False-positive rate → true-positive rate from (0, 0) to (1, 1); None without positives or negatives."""
    if pos.sum() == 0 or neg.sum() == 0:
        return None
    return _curve(*roc_points(pos, neg), "false positive rate", "true positive rate", area, max_points)


def pr_curve(pos: np.ndarray, neg: np.ndarray, area: Optional[float], max_points: int) -> Optional[dict[str, Any]]:
    """Recall → precision at every threshold (the steps average precision sums); None without positives."""
    if pos.sum() == 0:
        return None
    _, _, tp, fp = descending_counts(pos, neg)
    return _curve(tp / tp[-1], tp / (tp + fp), "recall", "precision", area, max_points)


def pro_curve(accumulator: CategoryMetricsAccumulator, area: Optional[float], limit: float,
              max_points: int) -> Optional[dict[str, Any]]:
    """Pixel false-positive rate → per-region overlap, up to FPR = `limit` (the part AU-PRO
    integrates); None without ground-truth regions or normal pixels."""
    if accumulator.n_regions == 0 or accumulator.pixel_neg.sum() == 0:
        return None
    fpr, pro = cut_at(*pro_points(accumulator.pro_fixed, accumulator.n_regions, accumulator.pixel_neg), limit)
    return _curve(fpr, pro, "pixel false positive rate", "per-region overlap", area, max_points)


def category_curves(accumulator: CategoryMetricsAccumulator, result: dict[str, Any],
                    max_points: int = DEFAULT_MAX_POINTS) -> dict[str, dict[str, Any]]:
    """Every curve of one category that can be drawn: pixel_roc, pixel_pr, pixel_pro,
    image_roc, image_pr. `result`: the accumulator's `result()`, whose metrics become the areas."""
    limit = float(result.get("pro_fpr_limit", PRO_FPR_LIMIT))
    curves = {
        "pixel_roc": roc_curve(accumulator.pixel_pos, accumulator.pixel_neg, result.get("pixel_auroc"), max_points),
        "pixel_pr": pr_curve(accumulator.pixel_pos, accumulator.pixel_neg, result.get("pixel_ap"), max_points),
        "pixel_pro": pro_curve(accumulator, result.get("pixel_aupro"), limit, max_points),
        "image_roc": roc_curve(accumulator.image_pos, accumulator.image_neg, result.get("image_auroc"), max_points),
        "image_pr": pr_curve(accumulator.image_pos, accumulator.image_neg, result.get("image_ap"), max_points),
    }
    return {name: curve for name, curve in curves.items() if curve is not None}
