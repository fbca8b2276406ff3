"""Choosing the mask threshold from normal images only.

On a production line there are plenty of good parts and few labelled defects, so the mask
threshold is set from the pixel scores of normal images: the q-quantile of their distribution,
so that about a fraction 1 - q of normal pixels is flagged. Like the metrics, the state is one
fixed-size histogram (the binning of `clipsam.metrics.score_bins`: log-odds bins, outside
values clipped to the end bins), so it runs over any number of images and merges across workers.

The thresholds file (`Thresholds`) holds, per category, the pixel threshold (defect mask) and
the image threshold (OK/NG) chosen that way, how, from how many normal images, and for which
model; its (de)serialisation and validation live here, reading and writing URLs in `pipeline`.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

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


# ---------------------------------------------------------------------------------------------
# The thresholds file (DESIGN §5, "Thresholds are data"; README "Thresholds file").

THRESHOLDS_FORMAT = "clipsam-thresholds"
THRESHOLDS_VERSION = 1
POLICY_NORMAL_QUANTILE = "normal_quantile"  # both thresholds: quantile q of normal images' scores
POLICY_PROFILE_DEFAULT = "profile_default"  # too few normal images: the run uses the profile's τ
POLICIES = (POLICY_NORMAL_QUANTILE, POLICY_PROFILE_DEFAULT)
OK, NG = "OK", "NG"


class ThresholdsError(ValueError):
    """A thresholds file that does not follow the schema; the message says where."""


def decide(image_score: float, image_threshold: float) -> str:
    """The image's label: NG when image_score ≥ image_threshold, else OK."""
    return NG if image_score >= image_threshold else OK


def image_quantile_threshold(scores: np.ndarray, q: float) -> float:
    """Image threshold T from normal images' image scores (any shape, in [0, 1]) such that at
    most a fraction 1 - q of them would be NG (score ≥ T).

    s_q is the q-quantile in the inverted-CDF sense (the k-th smallest score, k = ceil(q * n),
    like `NormalScoreQuantile.threshold`), and T is the next float64 above it, so s_q itself is OK.
    When s_q is 1.0, T = 1.0 (a score of exactly 1 stays NG).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("no normal image score was given; cannot choose a threshold")
    s_q = float(values[max(1, math.ceil(q * values.size)) - 1])
    return min(1.0, float(np.nextafter(s_q, np.inf)))


@dataclass(frozen=True)
class CategoryThresholds:
    """One category's thresholds and how they were chosen.

    pixel_threshold: the defect mask is final map ≥ it (score in [0, 1]); None with the
    profile_default policy (the run then uses the profile's mask threshold).
    image_threshold: the image is NG when image_score ≥ it; None with profile_default.
    policy: one of POLICIES. quantile: q of the normal_quantile policy (None otherwise).
    normal_images: how many normal images of the category the calibration run had.
    normal_pixels: how many stored-map pixels the pixel quantile saw (0 with profile_default).
    reason: why the profile default was used (None with normal_quantile).
    """

    pixel_threshold: Optional[float]
    image_threshold: Optional[float]
    policy: str
    quantile: Optional[float]
    normal_images: int
    normal_pixels: int = 0
    reason: Optional[str] = None


@dataclass(frozen=True)
class Thresholds:
    """A thresholds file: per category thresholds for one model (profile + weight digests).

    created_at: ISO-8601 UTC time of calibration. source: the calibration run's records URL.
    """

    profile: str
    model_digests: dict[str, str]
    created_at: str
    source: str
    categories: dict[str, CategoryThresholds] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file (schema version THRESHOLDS_VERSION)."""
        return {
            "format": THRESHOLDS_FORMAT,
            "version": THRESHOLDS_VERSION,
            "profile": self.profile,
            "model_digests": dict(sorted(self.model_digests.items())),
            "created_at": self.created_at,
            "source": self.source,
            "categories": {name: asdict(entry) for name, entry in sorted(self.categories.items())},
        }

    def dumps(self) -> str:
        """The file's text: indented JSON, keys sorted, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of `to_dict()`: keys sorted, no whitespace, UTF-8.
        Formatting of the file on disk does not change it; any value does."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    def calibrated(self, category: str) -> Optional[CategoryThresholds]:
        """The category's entry when it holds thresholds (normal_quantile), else None (the run
        uses the profile default: the category is missing or its policy is profile_default)."""
        entry = self.categories.get(category)
        return entry if entry is not None and entry.policy == POLICY_NORMAL_QUANTILE else None

    @classmethod
    def from_dict(cls, data: Any) -> "Thresholds":
        """Validate a parsed JSON object against the schema; ThresholdsError names the bad key."""
        if not isinstance(data, dict):
            raise ThresholdsError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != THRESHOLDS_FORMAT:
            raise ThresholdsError(f"format: expected {THRESHOLDS_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != THRESHOLDS_VERSION:
            raise ThresholdsError(f"version: this code reads version {THRESHOLDS_VERSION}, got {data.get('version')!r}")
        expected = {"format", "version", "profile", "model_digests", "created_at", "source", "categories"}
        _check_keys(data, expected, "")
        for key in ("profile", "created_at", "source"):
            if not isinstance(data[key], str):
                raise ThresholdsError(f"{key}: expected a string, got {data[key]!r}")
        digests = data["model_digests"]
        if not isinstance(digests, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
            raise ThresholdsError("model_digests: expected an object of role → sha256 strings")
        if not isinstance(data["categories"], dict):
            raise ThresholdsError("categories: expected an object of category → thresholds")
        categories = {name: _category(name, entry) for name, entry in data["categories"].items()}
        return cls(data["profile"], dict(digests), data["created_at"], data["source"], categories)

    @classmethod
    def loads(cls, text: str | bytes) -> "Thresholds":
        """Parse and validate the file's text."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ThresholdsError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace (the input of `Thresholds.digest`)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_keys(data: dict, expected: set[str], where: str) -> None:
    missing, extra = expected - data.keys(), data.keys() - expected
    if missing or extra:
        parts = ([f"missing {sorted(missing)}"] if missing else []) + ([f"unknown {sorted(extra)}"] if extra else [])
        raise ThresholdsError(f"{where or 'top level'}: " + ", ".join(parts))


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ThresholdsError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _category(name: Any, entry: Any) -> CategoryThresholds:
    where = f"categories.{name}"
    if not isinstance(entry, dict):
        raise ThresholdsError(f"{where}: expected an object")
    _check_keys(entry, {f.name for f in fields(CategoryThresholds)}, where)
    policy = entry["policy"]
    if policy not in POLICIES:
        raise ThresholdsError(f"{where}.policy: expected one of {list(POLICIES)}, got {policy!r}")
    for key in ("normal_images", "normal_pixels"):
        if isinstance(entry[key], bool) or not isinstance(entry[key], int) or entry[key] < 0:
            raise ThresholdsError(f"{where}.{key}: expected an integer >= 0, got {entry[key]!r}")
    if policy == POLICY_NORMAL_QUANTILE:
        quantile = entry["quantile"]
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 1.0:
            raise ThresholdsError(f"{where}.quantile: expected a number in (0, 1], got {quantile!r}")
        if entry["reason"] is not None:
            raise ThresholdsError(f"{where}.reason: must be null with policy {policy!r}")
        return CategoryThresholds(_score(entry["pixel_threshold"], f"{where}.pixel_threshold"),
                                  _score(entry["image_threshold"], f"{where}.image_threshold"),
                                  policy, float(quantile), entry["normal_images"], entry["normal_pixels"], None)
    for key in ("pixel_threshold", "image_threshold", "quantile"):
        if entry[key] is not None:
            raise ThresholdsError(f"{where}.{key}: must be null with policy {policy!r}")
    if not isinstance(entry["reason"], str) or not entry["reason"]:
        raise ThresholdsError(f"{where}.reason: policy {policy!r} needs a reason string")
    return CategoryThresholds(None, None, policy, None, entry["normal_images"], entry["normal_pixels"], entry["reason"])
