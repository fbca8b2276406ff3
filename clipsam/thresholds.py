"""Choosing the mask threshold from normal images only.

On a production line there are plenty of good parts and few labelled defects, so the mask
threshold is set from the pixel scores of normal images: the q-quantile of their distribution,
so that about a fraction 1 - q of normal pixels is flagged. Like the metrics, the state is one
fixed-size histogram (the binning of `clipsam.metrics.score_bins`: log-odds bins, outside
values clipped to the end bins), so it runs over any number of images and merges across workers.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from clipsam.metrics import DEFAULT_BINS, bin_lower_edge, check_bins, score_bins


class NormalScoreQuantile:
    """Histogram of normal-pixel scores; `threshold(q)` reads a quantile off it."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.bins = check_bins(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)

    @property
    def n_pixels(self) -> int:
        return int(self.counts.sum())

    def add(self, score_map: np.ndarray) -> None:
        """Add every pixel score of one normal image (any shape, float scores in [0, 1])."""
        self.counts += np.bincount(score_bins(score_map, self.bins).ravel(), minlength=self.bins)

    def merge(self, other: "NormalScoreQuantile") -> "NormalScoreQuantile":
        """Add `other`'s counts into this one (in place, exact) and return self."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms with {self.bins} and {other.bins} bins")
        self.counts += other.counts
        return self

    def threshold(self, q: float = 0.999) -> float:
        """Score threshold T such that at most a fraction 1 - q of normal pixels have score >= T.

        Let s_q be the q-quantile of the normal scores in the inverted-CDF sense (the k-th
        smallest score, k = ceil(q * n), numpy's method="inverted_cdf"). T is the lower edge of
        the next bin (`bin_lower_edge`), so s_q < T and every score of s_q's bin stays below T:
        the guarantee above holds exactly at the cost of at most one bin width. When s_q is in
        the top bin T = 1.0, and only scores of exactly 1 (or clipped above) still reach it.
        """
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
        n = self.n_pixels
        if n == 0:
            raise ValueError("no normal pixel was added; cannot choose a threshold")
        rank = max(1, math.ceil(q * n))
        bin_index = int(np.searchsorted(np.cumsum(self.counts), rank, side="left"))
        return bin_lower_edge(bin_index + 1, self.bins)

    def to_state(self) -> dict[str, Any]:
        """Plain-dict snapshot that `from_state` rebuilds."""
        return {"bins": self.bins, "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "NormalScoreQuantile":
        """Rebuild from `to_state()` output, checking the histogram's shape and dtype."""
        quantile = cls(int(state["bins"]))
        counts = np.asarray(state["counts"])
        if counts.shape != (quantile.bins,) or counts.dtype != np.int64:
            raise ValueError(
                f"counts: expected int64[{quantile.bins}], got {counts.dtype}{list(counts.shape)}"
            )
        quantile.counts = counts.copy()
        return quantile
