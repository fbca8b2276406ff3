"""Bounded-memory, mergeable anomaly-segmentation metrics (DESIGN §6).

Evaluating a category of a production line means billions of pixels spread over many Beam
workers, so nothing here keeps per-pixel or per-image data: a `CategoryMetricsAccumulator` holds
a few fixed-size histograms over B score bins, accumulators from different workers merge by
adding them, and every metric is read off the histograms at the end.

Scores (pixel maps and image scores) live in [0, 1] and are binned on the log-odds scale:
s is clipped to [0, 1], its logit log(s / (1 - s)) to [-L, L] (L = `LOGIT_LIMIT`), and bin b
holds the scores whose logit falls in [-L + 2L·b/B, -L + 2L·(b+1)/B). This keeps the order of
scores down to e^-L and resolves 2e-4 around 0.5 at B = 2^16; a trained map (a softmax at
CLIP's logit scale) ranks most of its pixels far below 1e-5, where equal-width bins on [0, 1]
would make them ties (docs/decisions.md, "Metrics and binning"). Values outside [0, 1] are
clipped into the end bins (still counted, ranked with 0 resp. 1); NaN is an error. Binning runs in
float32 (the precision of the maps), so a threshold is exact: `bin_lower_edge(t)` is the
smallest float32 score in bin t or above, and "bin(score) >= t" equals "score >= that edge"
for every float32 score. Distinct scores that share a bin become ties; with 2^16 bins the
metrics match their exact definitions to well under 1e-3 (tests compare against sklearn and
the MVTec AD exact PRO curve).

Metrics, each per category:
- pixel AUROC, AP, F1-max (+ the threshold reaching it): from histograms of the pixel scores of
  ground-truth positive / negative pixels;
- pixel AU-PRO, the MVTec AD definition: each 8-connected ground-truth region r adds, to every
  bin b, the fraction of r's pixels falling in b; PRO(t) is the sum over bins >= t divided by
  the number of regions R, FPR(t) comes from the negative-pixel histogram; the area under PRO
  over FPR in [0, 0.3] (linearly interpolated at exactly 0.3) divided by 0.3;
- image AUROC, AP, F1-max (+ threshold): from histograms of image scores of normal / anomalous
  images (binned too, so the state does not grow with the number of images).

A metric that cannot be computed (no anomalous pixel, no normal image, ...) is None, with the
reason in `result()["reasons"]`; results never contain NaN.
"""
from __future__ import annotations

import io
import math
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from scipy import ndimage

DEFAULT_BINS = 1 << 16
# Bins span logits in [-LOGIT_LIMIT, LOGIT_LIMIT] (scores 9e-14 .. 1 - 9e-14) [decision].
LOGIT_LIMIT = 30.0
PRO_FPR_LIMIT = 0.3

# Region fractions are added as fixed-point integers (units of 2^-32 of a region) rather than
# floats: integer sums do not depend on the order of additions, so merging partial
# accumulators gives bit-identical state to one pass over all images, whatever the runner does.
# Rounding costs at most 2^-33 per (region, bin), i.e. < 1e-5 of PRO even with 2^16 bins.
PRO_SCALE_BITS = 32
_PRO_UNIT = float(1 << PRO_SCALE_BITS)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Metrics whose mean over categories is meaningful (what MVTec AD tables report).
SCORE_METRICS = (
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
    "image_auroc",
    "image_ap",
    "image_f1_max",
)
# Operating points, per category only: a mean threshold over categories means nothing.
THRESHOLD_METRICS = ("pixel_f1_threshold", "image_f1_threshold")
METRIC_NAMES = SCORE_METRICS + THRESHOLD_METRICS
COUNT_NAMES = (
    "n_images",
    "n_masked_images",
    "n_labelled_images",
    "n_anomalous_images",
    "n_normal_images",
    "n_pixels",
    "n_positive_pixels",
    "n_negative_pixels",
    "n_regions",
)

_HISTOGRAMS = ("pixel_pos", "pixel_neg", "pro_fixed", "image_pos", "image_neg")
_COUNTERS = ("n_images", "n_masked_images", "n_regions")


def score_units(scores: np.ndarray) -> np.ndarray:
    """Position of every score on the binning scale, float32 in [0, 1] (same shape):
    (clip(logit(clip(s, 0, 1)), -L, L) + L) / 2L. Raises ValueError on NaN."""
    values = np.asarray(scores, dtype=np.float32)
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    clipped = np.clip(values, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        logits = np.clip(np.log(clipped) - np.log1p(-clipped), -LOGIT_LIMIT, LOGIT_LIMIT)
    return np.asarray((logits + np.float32(LOGIT_LIMIT)) * np.float32(0.5 / LOGIT_LIMIT), dtype=np.float32)


def unit_scores(units: np.ndarray) -> np.ndarray:
    """Inverse of `score_units` (up to float32 rounding): positions in [0, 1] → scores, float32."""
    logits = (np.asarray(units, dtype=np.float64) * 2.0 - 1.0) * LOGIT_LIMIT
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def score_bins(scores: np.ndarray, bins: int) -> np.ndarray:
    """Bin index (intp, same shape) of every score: floor(score_units(score) * bins), in [0, bins)."""
    scaled = np.asarray(score_units(scores) * np.float32(bins))
    return np.minimum(scaled.astype(np.intp), bins - 1)


def bin_lower_edge(index: int, bins: int) -> float:
    """The smallest float32 score whose bin is >= `index`, so that for float32 scores
    "bin(score) >= index" and "score >= bin_lower_edge(index)" are the same test.
    0.0 for index <= 0; 1.0 for index >= bins (only a score of 1 still reaches it)."""
    if index <= 0:
        return 0.0
    if index >= bins:
        return 1.0
    edge = np.float32(unit_scores(np.float64(index) / bins))
    # The closed form is within a few float32 steps of the exact edge of the float32 binning.
    while edge > 0 and score_bins(np.nextafter(edge, np.float32(0)), bins) >= index:
        edge = np.nextafter(edge, np.float32(0))
    while score_bins(edge, bins) < index:
        edge = np.nextafter(edge, np.float32(1))
    return float(edge)


def check_bins(bins: int) -> int:
    """The bin count as a plain int; ValueError unless it is an integer >= 2."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    return int(bins)


def _max_regions(bins: int) -> int:
    """Most regions whose fixed-point PRO sums cannot overflow int64 (about 2^31)."""
    # One region adds at most 2^32 plus half a unit of rounding for each bin it touches.
    return (2**63 - 1) // ((1 << PRO_SCALE_BITS) + bins // 2)


class CategoryMetricsAccumulator:
    """Fixed-size, mergeable state of every metric of one category.

    State (B = bins): int64 histograms `pixel_pos[B]` / `pixel_neg[B]` (pixel scores of
    ground-truth positive / negative pixels), `pro_fixed[B]` (region fractions in units of
    2^-32), `image_pos[B]` / `image_neg[B]` (image scores of anomalous / normal images), and
    three counters. About 2.6 MB at B = 2^16, whatever the number of images or pixels.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.bins = check_bins(bins)
        for name in _HISTOGRAMS:
            setattr(self, name, np.zeros(self.bins, dtype=np.int64))
        self.n_images = 0
        self.n_masked_images = 0
        self.n_regions = 0

    def add(
        self,
        score_map: np.ndarray,
        gt_mask: Optional[np.ndarray] = None,
        image_score: Optional[float] = None,
        label: Optional[int] = None,
    ) -> None:
        """Add one image.

        score_map: float (H, W) anomaly map in [0, 1], at the ground truth's resolution.
        gt_mask: (H, W) ground truth, nonzero = defect; None when the image has none: it then
            adds nothing to the pixel metrics (give an all-False mask for a normal image so
            its pixels count as negatives).
        image_score: the image's anomaly score in [0, 1]; required when label is known.
        label: 1 anomalous, 0 normal, None unknown: an unlabelled image adds nothing to the
            image metrics.
        Everything is validated before any state changes, so a rejected image leaves the
        accumulator as it was.
        """
        scores = np.asarray(score_map)
        if scores.ndim != 2:
            raise ValueError(f"score map must be 2-D (H, W), got shape {scores.shape}")
        image_bin = self._image_bin(image_score, label)
        pixel_bins = gt = None
        if gt_mask is not None:
            gt = np.asarray(gt_mask)
            if gt.shape != scores.shape:
                raise ValueError(
                    f"score map shape {scores.shape} != ground-truth mask shape {gt.shape}"
                )
            gt = gt.astype(bool, copy=False)
            pixel_bins = score_bins(scores, self.bins)
        regions, n_regions = self._label_regions(gt)
        if pixel_bins is not None:
            self._add_pixels(pixel_bins, gt, regions, n_regions)
        if image_bin is not None:
            histogram = self.image_pos if label == 1 else self.image_neg
            histogram[image_bin] += 1
        self.n_images += 1

    def _image_bin(self, image_score: Optional[float], label: Optional[int]) -> Optional[int]:
        """Bin of the image score for a labelled image, None for an unlabelled one."""
        if label is None:
            return None
        if isinstance(label, (bool, np.bool_)) or label not in (0, 1):
            raise ValueError(f"label must be 0, 1 or None, got {label!r}")
        if image_score is None:
            raise ValueError("a labelled image needs an image_score")
        return int(score_bins(np.asarray(image_score, dtype=np.float64), self.bins))

    def _label_regions(self, gt: Optional[np.ndarray]) -> tuple[Optional[np.ndarray], int]:
        """8-connected ground-truth regions (labels 1..n), checked against the int64 limit."""
        if gt is None or not gt.any():
            return None, 0
        regions, n_regions = ndimage.label(gt, structure=_EIGHT_CONNECTED)
        if self.n_regions + n_regions > _max_regions(self.bins):
            raise OverflowError(
                f"more than {_max_regions(self.bins)} ground-truth regions in one category "
                "would overflow the fixed-point AU-PRO histogram"
            )
        return regions, int(n_regions)

    def _add_pixels(
        self,
        pixel_bins: np.ndarray,
        gt: np.ndarray,
        regions: Optional[np.ndarray],
        n_regions: int,
    ) -> None:
        """Add one image's pixels to the histograms: O(pixels + B), sorting only defect pixels."""
        flat = pixel_bins.ravel()
        self.n_masked_images += 1
        if regions is None:
            self.pixel_neg += np.bincount(flat, minlength=self.bins)
            return
        positive = gt.ravel()
        self._add_regions(flat[positive], regions.ravel()[positive], n_regions)
        # One bincount for both classes: positive pixels are shifted into bins B..2B-1.
        np.add(flat, self.bins, out=flat, where=positive)
        counts = np.bincount(flat, minlength=2 * self.bins)
        self.pixel_neg += counts[: self.bins]
        self.pixel_pos += counts[self.bins :]

    def _add_regions(
        self, bins_of_defects: np.ndarray, region_of_defects: np.ndarray, n: int
    ) -> None:
        """Add every region's per-bin fraction count_r(b) / |r| to `pro_fixed`, in 2^-32 units.

        Rounding happens per (region, bin) so the result depends on the image alone, never on
        which images were added before: that is what makes merging exact.
        """
        sizes = np.bincount(region_of_defects, minlength=n + 1)
        keys = region_of_defects.astype(np.int64) * self.bins + bins_of_defects
        pairs, counts = np.unique(keys, return_counts=True)
        region, bin_index = np.divmod(pairs, self.bins)
        fixed = np.rint(counts * _PRO_UNIT / sizes[region]).astype(np.int64)
        np.add.at(self.pro_fixed, bin_index, fixed)
        self.n_regions += n

    def merge(self, other: "CategoryMetricsAccumulator") -> "CategoryMetricsAccumulator":
        """Add `other`'s state into this one (in place) and return self.

        Integer state only, so merging in any grouping and order equals one pass over all
        the images, bit for bit.
        """
        if other.bins != self.bins:
            raise ValueError(f"cannot merge accumulators with {self.bins} and {other.bins} bins")
        if self.n_regions + other.n_regions > _max_regions(self.bins):
            raise OverflowError("merged region count would overflow the AU-PRO histogram")
        for name in _HISTOGRAMS:
            mine = getattr(self, name)
            np.add(mine, getattr(other, name), out=mine)
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def counts(self) -> dict[str, int]:
        """How much data the metrics rest on (all plain ints)."""
        positive = int(self.pixel_pos.sum())
        negative = int(self.pixel_neg.sum())
        anomalous = int(self.image_pos.sum())
        normal = int(self.image_neg.sum())
        return {
            "n_images": self.n_images,
            "n_masked_images": self.n_masked_images,
            "n_labelled_images": anomalous + normal,
            "n_anomalous_images": anomalous,
            "n_normal_images": normal,
            "n_pixels": positive + negative,
            "n_positive_pixels": positive,
            "n_negative_pixels": negative,
            "n_regions": self.n_regions,
        }

    def result(self, pro_fpr_limit: float = PRO_FPR_LIMIT) -> dict[str, Any]:
        """Every metric, JSON-ready: floats or None, never NaN.

        Returns {metric name: float | None for each of METRIC_NAMES, "reasons": {metric: why it
        is None}, "counts": counts(), "bins": B, "pro_fpr_limit": the AU-PRO FPR limit}.
        Thresholds are score values (`bin_lower_edge`): anomalous iff score >= threshold.
        """
        if not 0.0 < pro_fpr_limit <= 1.0:
            raise ValueError(f"pro_fpr_limit must be in (0, 1], got {pro_fpr_limit}")
        counts = self.counts()
        outcomes = {
            **self._pixel_metrics(counts, pro_fpr_limit),
            **_ranking_metrics("image", self.image_pos, self.image_neg, _image_missing(counts)),
        }
        result: dict[str, Any] = {name: outcomes[name][0] for name in METRIC_NAMES}
        result["reasons"] = {
            name: outcomes[name][1] for name in METRIC_NAMES if outcomes[name][1] is not None
        }
        result["counts"] = counts
        result["bins"] = self.bins
        result["pro_fpr_limit"] = float(pro_fpr_limit)
        return result

    def _pixel_metrics(self, counts: Mapping[str, int], limit: float) -> dict[str, "_Outcome"]:
        """Pixel AUROC / AP / F1-max / threshold and AU-PRO, with reasons where impossible."""
        missing = _pixel_missing(counts)
        outcomes = _ranking_metrics("pixel", self.pixel_pos, self.pixel_neg, missing)
        reason = missing["pro"]
        if reason is None:
            outcomes["pixel_aupro"] = (
                aupro_from_histograms(self.pro_fixed, self.n_regions, self.pixel_neg, limit),
                None,
            )
        else:
            outcomes["pixel_aupro"] = (None, reason)
        return outcomes

    def to_state(self) -> dict[str, Any]:
        """Plain-dict snapshot (int64 arrays copied, plain ints) that `from_state` rebuilds."""
        state: dict[str, Any] = {"bins": self.bins, "pro_scale_bits": PRO_SCALE_BITS}
        state.update({name: getattr(self, name).copy() for name in _HISTOGRAMS})
        state.update({name: int(getattr(self, name)) for name in _COUNTERS})
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "CategoryMetricsAccumulator":
        """Rebuild an accumulator from `to_state()` output, checking shapes and the PRO scale."""
        if int(state["pro_scale_bits"]) != PRO_SCALE_BITS:
            raise ValueError(
                f"state uses 2^-{state['pro_scale_bits']} PRO units, this code 2^-{PRO_SCALE_BITS}"
            )
        accumulator = cls(int(state["bins"]))
        for name in _HISTOGRAMS:
            values = np.asarray(state[name])
            if values.shape != (accumulator.bins,) or values.dtype != np.int64:
                raise ValueError(f"state {name}: expected int64[{accumulator.bins}], got "
                                 f"{values.dtype}{list(values.shape)}")
            setattr(accumulator, name, values.copy())
        for name in _COUNTERS:
            setattr(accumulator, name, int(state[name]))
        return accumulator

    def to_bytes(self) -> bytes:
        """Compact bytes (compressed .npz, no pickle): mostly-empty histograms shrink a lot."""
        buffer = io.BytesIO()
        state = self.to_state()
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in state.items()})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CategoryMetricsAccumulator":
        """Inverse of `to_bytes`; refuses pickled content."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls.from_state({name: arrays[name] for name in arrays.files})


def merge_all(accumulators: Iterable[CategoryMetricsAccumulator]) -> CategoryMetricsAccumulator:
    """A new accumulator holding the sum of all given ones (inputs are left untouched)."""
    iterator = iter(accumulators)
    first = next(iterator, None)
    if first is None:
        raise ValueError("merge_all needs at least one accumulator")
    merged = CategoryMetricsAccumulator.from_state(first.to_state())
    for accumulator in iterator:
        merged.merge(accumulator)
    return merged


_Outcome = tuple[Optional[float], Optional[str]]


def _pixel_missing(counts: Mapping[str, int]) -> dict[str, Optional[str]]:
    """Why pixel metrics cannot be computed: keys "ranking" (AP, F1), "roc" and "pro"."""
    if counts["n_masked_images"] == 0:
        none = "no image with a ground-truth mask"
        return {"ranking": none, "roc": none, "pro": none}
    no_positive = "no anomalous pixel" if counts["n_positive_pixels"] == 0 else None
    no_negative = "no normal pixel" if counts["n_negative_pixels"] == 0 else None
    no_region = "no ground-truth region" if counts["n_regions"] == 0 else None
    return {
        "ranking": no_positive,
        "roc": no_positive or no_negative,
        "pro": no_region or no_negative,
    }


def _image_missing(counts: Mapping[str, int]) -> dict[str, Optional[str]]:
    """Why image metrics cannot be computed, in the same shape as `_pixel_missing`."""
    if counts["n_labelled_images"] == 0:
        none = "no labelled image"
        return {"ranking": none, "roc": none}
    no_anomalous = "no anomalous image" if counts["n_anomalous_images"] == 0 else None
    no_normal = "no normal image" if counts["n_normal_images"] == 0 else None
    return {"ranking": no_anomalous, "roc": no_anomalous or no_normal}


def _ranking_metrics(
    level: str, pos: np.ndarray, neg: np.ndarray, missing: Mapping[str, Optional[str]]
) -> dict[str, _Outcome]:
    """AUROC, AP, F1-max and its threshold of one level ("pixel" / "image")."""
    outcomes: dict[str, _Outcome] = {}
    if missing["roc"] is None:
        outcomes[f"{level}_auroc"] = (roc_auc_from_histograms(pos, neg), None)
    else:
        outcomes[f"{level}_auroc"] = (None, missing["roc"])
    reason = missing["ranking"]
    if reason is None:
        f1, threshold = f1_max_from_histograms(pos, neg)
        outcomes[f"{level}_ap"] = (average_precision_from_histograms(pos, neg), None)
        outcomes[f"{level}_f1_max"] = (f1, None)
        outcomes[f"{level}_f1_threshold"] = (threshold, None)
    else:
        for name in ("ap", "f1_max", "f1_threshold"):
            outcomes[f"{level}_{name}"] = (None, reason)
    return outcomes


def descending_counts(
    pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts at every non-empty bin, thresholds from high to low.

    Returns (bin indices, positives per bin, cumulative TP, cumulative FP), all descending by
    bin; empty bins are dropped because they are not distinct thresholds.
    """
    occupied = np.flatnonzero((pos + neg) > 0)[::-1]
    pos_desc = pos[occupied]
    return occupied, pos_desc, np.cumsum(pos_desc), np.cumsum(neg[occupied])


def roc_auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: trapezoids through (0, 0) and every bin threshold.

    Ties within a bin make a diagonal segment, exactly as sklearn treats tied scores.
    Needs at least one positive and one negative.
    """
    fpr, tpr = roc_points(pos, neg)
    return float(np.trapezoid(tpr, fpr))


def roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve (FPR, TPR): (0, 0), then one point per occupied bin from the highest
    threshold down, ending at (1, 1). Needs at least one positive and one negative."""
    _, _, tp, fp = descending_counts(pos, neg)
    return np.concatenate(([0.0], fp / fp[-1])), np.concatenate(([0.0], tp / tp[-1]))


def average_precision_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision, sklearn's step-wise sum of ΔRecall · Precision (no interpolation).

    Needs at least one positive.
    """
    _, pos_desc, tp, fp = descending_counts(pos, neg)
    precision = tp / (tp + fp)
    return float(np.sum(pos_desc * precision) / tp[-1])


def f1_max_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Best F1 over all bin thresholds, and that threshold (`bin_lower_edge` of the bin).

    F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P). On ties the highest threshold wins.
    Needs at least one positive.
    """
    occupied, _, tp, fp = descending_counts(pos, neg)
    f1 = 2.0 * tp / (tp + fp + tp[-1])
    best = int(np.argmax(f1))
    return float(f1[best]), bin_lower_edge(int(occupied[best]), pos.size)


def aupro_from_histograms(
    pro_fixed: np.ndarray, n_regions: int, neg: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT
) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (MVTec AD definition).

    pro_fixed: per-bin sum over regions of (region pixels in bin) / |region|, in 2^-32 units.
    PRO(t) = Σ_{b>=t} pro_fixed[b] / (2^32 R); FPR(t) = Σ_{b>=t} neg[b] / N. The curve starts
    at (0, 0), steps through every occupied bin and reaches FPR = 1 at the lowest, so the
    point at exactly `fpr_limit` is always interpolated between two real points.
    Needs at least one region and one negative pixel.
    """
    fpr, pro = pro_points(pro_fixed, n_regions, neg)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def pro_points(pro_fixed: np.ndarray, n_regions: int, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve (FPR, PRO) of `aupro_from_histograms`: (0, 0), then one point per occupied
    bin from the highest threshold down, ending at FPR = 1."""
    occupied = np.flatnonzero((pro_fixed + neg) > 0)[::-1]
    fp = np.cumsum(neg[occupied])
    overlap = np.cumsum(pro_fixed[occupied])
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    pro = np.concatenate(([0.0], np.minimum(overlap / (_PRO_UNIT * n_regions), 1.0)))
    return fpr, pro


def cut_at(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of the polyline y(x) with x <= `limit`, ending exactly at `limit` (y interpolated
    linearly there). x must be non-decreasing and reach at least `limit`."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if xs[-1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return xs, ys


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], limit] (`cut_at`)."""
    xs, ys = cut_at(x, y, limit)
    return float(np.trapezoid(ys, xs))


def summarize(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Dataset summary: per metric, the mean over the categories that have a value.

    That is how MVTec AD / VisA tables report a dataset. Categories without a value are
    listed under "left_out" so a mean over fewer categories is never mistaken for a full one.
    Sums are exact (math.fsum), so the mean does not depend on category order.
    Returns {"mean": {metric: float | None}, "n_categories": {metric: int},
    "left_out": {metric: [category, ...]}, "reasons": {metric: why the mean is None}}.
    """
    summary: dict[str, Any] = {"mean": {}, "n_categories": {}, "left_out": {}, "reasons": {}}
    for metric in SCORE_METRICS:
        values = [r[metric] for r in per_category.values() if r.get(metric) is not None]
        summary["mean"][metric] = math.fsum(values) / len(values) if values else None
        summary["n_categories"][metric] = len(values)
        summary["left_out"][metric] = sorted(
            name for name, r in per_category.items() if r.get(metric) is None
        )
        if not values:
            summary["reasons"][metric] = "no category has a value"
    return summary
