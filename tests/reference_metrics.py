"""Exact (unbinned, keep-everything) metric definitions that the binned metrics are tested against.

AUROC and AP come from sklearn. The PRO curve follows the MVTec AD evaluation protocol
(Bergmann et al.): every distinct score is a threshold; at each, PRO is the mean over all
8-connected ground-truth regions of the fraction of the region at or above the threshold, and
FPR is the fraction of all ground-truth-negative pixels at or above it. The curve is integrated
from FPR 0 to 0.3 by trapezoids, interpolating linearly at exactly 0.3, and divided by 0.3.
These hold every pixel in memory: for tests only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


Maps = Sequence[np.ndarray]


def _flatten(score_maps: Maps, gt_masks: Maps) -> tuple[np.ndarray, np.ndarray]:
    """All pixels of all images as one float64 score vector and one bool label vector."""
    scores = np.concatenate([np.clip(np.asarray(s, np.float64), 0, 1).ravel() for s in score_maps])
    labels = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in gt_masks])
    return scores, labels


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Largest F1 over all thresholds of the precision-recall curve."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.zeros_like(denominator)
    np.divide(2 * precision * recall, denominator, out=f1, where=denominator > 0)
    return float(f1.max())


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the rule "anomalous iff score >= threshold"."""
    predicted = scores >= threshold
    tp = np.sum(predicted & labels)
    return float(2 * tp / (predicted.sum() + labels.sum()))


def pixel_metrics(score_maps: Maps, gt_masks: Maps) -> dict[str, Optional[float]]:
    """Exact pixel AUROC, AP, F1-max and AU-PRO; None where the data leaves one undefined.

    Scores are clipped to [0, 1] like the binned ones. AP and F1 need a defect pixel; AUROC
    and AU-PRO also need a normal pixel.
    """
    scores, labels = _flatten(score_maps, gt_masks)
    if not labels.any():
        return dict.fromkeys(("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"))
    both = not labels.all()
    return {
        "pixel_auroc": float(roc_auc_score(labels, scores)) if both else None,
        "pixel_ap": float(average_precision_score(labels, scores)),
        "pixel_f1_max": f1_max(labels, scores),
        "pixel_aupro": aupro(score_maps, gt_masks) if both else None,
    }


def image_metrics(
    image_scores: Sequence[float], labels: Sequence[Optional[int]]
) -> dict[str, Optional[float]]:
    """Exact image AUROC, AP and F1-max over the labelled images; None where undefined."""
    known = [(s, l) for s, l in zip(image_scores, labels) if l is not None]
    scores = np.clip(np.array([s for s, _ in known], dtype=np.float64), 0, 1)
    truth = np.array([l for _, l in known], dtype=bool)
    if not truth.any():
        return dict.fromkeys(("image_auroc", "image_ap", "image_f1_max"))
    return {
        "image_auroc": float(roc_auc_score(truth, scores)) if not truth.all() else None,
        "image_ap": float(average_precision_score(truth, scores)),
        "image_f1_max": f1_max(truth, scores),
    }


def pro_curve(score_maps: Maps, gt_masks: Maps) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) points at every distinct score, from (0, 0) to (1, 1)."""
    structure = np.ones((3, 3), dtype=int)
    overlap_weight = []
    negative = []
    n_regions = 0
    for gt in gt_masks:
        regions, n = ndimage.label(np.asarray(gt, dtype=bool), structure=structure)
        weight = np.zeros(regions.shape, dtype=np.float64)
        for index in range(1, n + 1):
            region = regions == index
            weight[region] = 1.0 / region.sum()
        overlap_weight.append(weight.ravel())
        negative.append((regions == 0).ravel())
        n_regions += n
    scores, _ = _flatten(score_maps, gt_masks)
    weight = np.concatenate(overlap_weight)
    negative = np.concatenate(negative)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    fpr = np.cumsum(negative[order]) / negative.sum()
    pro = np.cumsum(weight[order]) / n_regions
    # Only the last pixel of a run of equal scores is a threshold: ties pass together.
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = np.minimum(fpr[last_of_run], 1.0)
    pro = np.minimum(pro[last_of_run], 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of y over x in [0, x_max], with y interpolated linearly at x_max."""
    keep = x <= x_max
    xs, ys = list(x[keep]), list(y[keep])
    if xs[-1] != x_max:
        after = int(np.argmax(x > x_max))
        before = after - 1
        fraction = (x_max - x[before]) / (x[after] - x[before])
        xs.append(x_max)
        ys.append(y[before] + fraction * (y[after] - y[before]))
    xs, ys = np.array(xs), np.array(ys)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def aupro(score_maps: Maps, gt_masks: Maps, fpr_limit: float = 0.3) -> float:
    """Exact normalised AU-PRO up to `fpr_limit`."""
    fpr, pro = pro_curve(score_maps, gt_masks)
    return integrate_to(fpr, pro, fpr_limit) / fpr_limit
