"""Binned, mergeable metrics (clipsam.metrics, clipsam.thresholds) against exact references."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from clipsam.metrics import (
    METRIC_NAMES,
    SCORE_METRICS,
    CategoryMetricsAccumulator,
    bin_lower_edge,
    merge_all,
    score_bins,
    summarize,
)
from clipsam.thresholds import NormalScoreQuantile
from tests import reference_metrics as ref

TOLERANCE = 1e-3
REAL_DATA = Path(__file__).parent / "data" / "real"


class Sample(NamedTuple):
    """One synthetic evaluation input, in the accumulator's `add` argument order."""

    score_map: np.ndarray
    gt_mask: Optional[np.ndarray]
    image_score: float
    label: Optional[int]


def _mask(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """A ground-truth mask: empty, a few rectangles (real-looking regions) or random speckle."""
    mask = np.zeros((h, w), dtype=bool)
    if kind == "blobs":
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            height, width = rng.integers(1, max(2, h // 2)), rng.integers(1, max(2, w // 2))
            mask[y : y + height, x : x + width] = True
    elif kind == "speckle":
        mask = rng.random((h, w)) < rng.uniform(0.01, 0.5)
    return mask


def _scores(rng: np.random.Generator, mask: np.ndarray, kind: str, dtype: type) -> np.ndarray:
    """Overlapping score distributions: normal pixels in [0, 0.7), defect pixels in [0.3, 1).

    "quantized" rounds to multiples of 1/20, so many exact ties, each on its own bin.
    """
    scores = np.where(mask, rng.uniform(0.3, 1.0, mask.shape), rng.uniform(0.0, 0.7, mask.shape))
    if kind == "quantized":
        scores = np.round(scores * 20) / 20
    return scores.astype(dtype)


@st.composite
def categories(draw: st.DrawFn, unknowns: bool = False) -> list[Sample]:
    """A category's images of varied sizes and anomaly fractions.

    unknowns=True also produces images without a mask and/or without a label.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    score_kind = draw(st.sampled_from(["continuous", "quantized"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    images = []
    for _ in range(draw(st.integers(1, 6))):
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        mask = _mask(rng, h, w, draw(st.sampled_from(["none", "blobs", "speckle"])))
        scores = _scores(rng, mask, score_kind, dtype)
        label = int(mask.any())
        image_score = float(0.5 * scores.max() + 0.5 * rng.uniform(0.5 * label, 0.5 + 0.5 * label))
        if unknowns and draw(st.booleans()):
            mask = None
        if unknowns and draw(st.booleans()):
            label = None
        images.append(Sample(scores, mask, image_score, label))
    return images


def _accumulate(images: list[Sample], bins: int = 1 << 16) -> CategoryMetricsAccumulator:
    accumulator = CategoryMetricsAccumulator(bins)
    for image in images:
        accumulator.add(*image)
    return accumulator


def _assert_same_state(a: CategoryMetricsAccumulator, b: CategoryMetricsAccumulator) -> None:
    state_a, state_b = a.to_state(), b.to_state()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key
    assert a.result() == b.result()


def _exact(images: list[Sample]) -> dict[str, Optional[float]]:
    """Exact reference value of every score metric; None where the data leaves it undefined."""
    return {
        **ref.pixel_metrics([i.score_map for i in images], [i.gt_mask for i in images]),
        **ref.image_metrics([i.image_score for i in images], [i.label for i in images]),
    }


@settings(max_examples=60, deadline=None, derandomize=True)
@given(categories())
def test_binned_metrics_match_exact_reference(images: list[Sample]) -> None:
    result = _accumulate(images).result()
    expected = _exact(images)
    assert set(expected) == set(SCORE_METRICS)
    for name, value in expected.items():
        if value is None:
            assert result[name] is None and result["reasons"][name], name
        else:
            assert result[name] is not None, (name, result["reasons"])
            assert abs(result[name] - value) <= TOLERANCE, (name, result[name], value)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(categories())
def test_f1_threshold_reaches_f1_max_on_raw_scores(images: list[Sample]) -> None:
    """The reported threshold is a real operating point: thresholding raw scores gives F1-max."""
    result = _accumulate(images).result()
    pixels = np.concatenate([np.clip(i.score_map.astype(np.float64).ravel(), 0, 1) for i in images])
    truth = np.concatenate([i.gt_mask.ravel() for i in images])
    if not truth.any():
        assert result["pixel_f1_threshold"] is None
        return
    f1 = ref.f1_at(truth, pixels, result["pixel_f1_threshold"])
    assert f1 == pytest.approx(result["pixel_f1_max"], abs=1e-12)
    image_scores = np.array([i.image_score for i in images])
    image_truth = np.array([i.label == 1 for i in images])
    if image_truth.any():
        f1 = ref.f1_at(image_truth, image_scores, result["image_f1_threshold"])
        assert f1 == pytest.approx(result["image_f1_max"], abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(categories(unknowns=True), st.data())
def test_merge_equals_single_pass_exactly(images: list[Sample], data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(images)))
    whole = _accumulate(images)
    merged = _accumulate(images[:split]).merge(_accumulate(images[split:]))
    _assert_same_state(whole, merged)


@settings(max_examples=30, deadline=None)
@given(categories(unknowns=True), st.randoms(use_true_random=False))
def test_result_independent_of_image_order_and_grouping(
    images: list[Sample], shuffler: random.Random
) -> None:
    shuffled = list(images)
    shuffler.shuffle(shuffled)
    parts = [_accumulate([image]) for image in shuffled]
    _assert_same_state(_accumulate(images), merge_all(parts))
    _assert_same_state(_accumulate(images), _accumulate(shuffled))


def test_many_region_sizes_merge_bit_identically() -> None:
    """Regions of many sizes sharing a few bins: the case where float sums would depend on the
    order of additions (1/3 + 1/7 + ... rounds differently when regrouped)."""
    rng = np.random.default_rng(8)
    images = []
    for _ in range(24):
        mask = _mask(rng, 30, 30, "speckle")
        scores = np.round(rng.random((30, 30)) * 4) / 4  # five distinct scores
        images.append(Sample(scores, mask, float(rng.random()), int(mask.any())))
    whole = _accumulate(images)
    assert whole.n_regions > 200
    order = rng.permutation(len(images))
    halves = _accumulate([images[i] for i in order[:7]]).merge(
        _accumulate([images[i] for i in order[7:]])
    )
    _assert_same_state(whole, halves)
    _assert_same_state(whole, merge_all(_accumulate([images[i]]) for i in order))


def test_merge_all_leaves_inputs_untouched() -> None:
    rng = np.random.default_rng(1)
    a = _accumulate([Sample(rng.random((8, 8)), rng.random((8, 8)) > 0.7, 0.9, 1)])
    before = a.to_state()
    merge_all([a, a])
    assert np.array_equal(a.to_state()["pixel_pos"], before["pixel_pos"])
    with pytest.raises(ValueError):
        merge_all([])


def test_aupro_hand_computed_example() -> None:
    """Two regions (sizes 2 and 1), ten negatives; the curve is worked out by hand.

    Thresholds 0.9, 0.8, 0.7, 0.5, 0.1 give (FPR, PRO) = (0, .25), (.1, .25), (.1, .75),
    (.1, 1), (1, 1); the area to FPR 0.3 is 0.1 * 0.25 + 0.2 * 1 = 0.225, / 0.3 = 0.75.
    """
    scores = np.array([[0.9, 0.5, 0.1, 0.7, 0.8] + [0.1] * 8])
    mask = np.zeros_like(scores, dtype=bool)
    mask[0, [0, 1, 3]] = True
    assert ref.aupro([scores], [mask]) == pytest.approx(0.75, abs=1e-12)
    result = _accumulate([Sample(scores, mask, 0.9, 1)]).result()
    assert result["pixel_aupro"] == pytest.approx(0.75, abs=1e-12)
    assert result["counts"]["n_regions"] == 2


def test_regions_are_8_connected() -> None:
    mask = np.eye(5, dtype=bool)  # a diagonal line: one region with 8-connectivity, five with 4
    result = _accumulate([Sample(np.full((5, 5), 0.5), mask, 0.5, 1)]).result()
    assert result["counts"]["n_regions"] == 1


def test_aupro_fpr_limit_is_configurable() -> None:
    scores = np.array([[0.9, 0.5, 0.1, 0.7, 0.8] + [0.1] * 8])
    mask = np.zeros_like(scores, dtype=bool)
    mask[0, [0, 1, 3]] = True
    accumulator = _accumulate([Sample(scores, mask, 0.9, 1)])
    # Up to FPR 1: 0.025 + 0.9 * 1 = 0.925.
    assert accumulator.result(pro_fpr_limit=1.0)["pixel_aupro"] == pytest.approx(0.925, abs=1e-12)
    assert ref.aupro([scores], [mask], fpr_limit=1.0) == pytest.approx(0.925, abs=1e-12)
    with pytest.raises(ValueError):
        accumulator.result(pro_fpr_limit=0.0)


def _no_nan(value: object) -> None:
    json.dumps(value, allow_nan=False)  # raises on NaN / inf anywhere


def test_normal_only_category_gives_null_with_reasons() -> None:
    rng = np.random.default_rng(2)
    normal = np.zeros((16, 16), bool)
    images = [Sample(rng.random((16, 16)), normal, float(rng.random()), 0) for _ in range(3)]
    result = _accumulate(images).result()
    _no_nan(result)
    for name in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold"):
        assert result[name] is None and result["reasons"][name] == "no anomalous pixel"
    assert result["pixel_aupro"] is None
    assert result["reasons"]["pixel_aupro"] == "no ground-truth region"
    for name in ("image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"):
        assert result[name] is None and result["reasons"][name] == "no anomalous image"
    assert result["counts"]["n_negative_pixels"] == 3 * 256
    assert result["counts"]["n_normal_images"] == 3


def test_anomalous_only_category_gives_null_with_reasons() -> None:
    rng = np.random.default_rng(3)
    images = [Sample(rng.random((4, 4)), np.ones((4, 4), bool), 0.5 + i / 10, 1) for i in range(2)]
    result = _accumulate(images).result()
    _no_nan(result)
    assert result["pixel_auroc"] is None and result["reasons"]["pixel_auroc"] == "no normal pixel"
    assert result["pixel_aupro"] is None and result["reasons"]["pixel_aupro"] == "no normal pixel"
    assert result["image_auroc"] is None and result["reasons"]["image_auroc"] == "no normal image"
    # With positives only, every threshold has precision 1: AP and F1-max are 1 (as sklearn).
    assert result["pixel_ap"] == 1.0 and result["pixel_f1_max"] == 1.0
    assert result["image_ap"] == 1.0
    assert set(result["reasons"]) == {"pixel_auroc", "pixel_aupro", "image_auroc"}


def test_empty_accumulator_gives_null_everywhere() -> None:
    result = CategoryMetricsAccumulator(64).result()
    _no_nan(result)
    assert all(result[name] is None for name in METRIC_NAMES)
    assert result["reasons"]["pixel_auroc"] == "no image with a ground-truth mask"
    assert result["reasons"]["image_auroc"] == "no labelled image"
    assert set(result["counts"].values()) == {0}


def test_missing_mask_and_missing_label() -> None:
    rng = np.random.default_rng(4)
    scores = rng.random((8, 8))
    mask = scores > 0.8
    accumulator = CategoryMetricsAccumulator()
    accumulator.add(scores, None, 0.9, 1)  # image metrics only
    accumulator.add(scores, None, 0.1, 0)
    accumulator.add(scores, mask, 0.5, None)  # pixel metrics only
    accumulator.add(scores, None, 0.7, None)  # counted, contributes nothing
    result = accumulator.result()
    assert result["counts"] == {
        "n_images": 4,
        "n_masked_images": 1,
        "n_labelled_images": 2,
        "n_anomalous_images": 1,
        "n_normal_images": 1,
        "n_pixels": 64,
        "n_positive_pixels": int(mask.sum()),
        "n_negative_pixels": int((~mask).sum()),
        "n_regions": int(ndimage.label(mask, np.ones((3, 3)))[1]),
    }
    assert result["image_auroc"] == 1.0
    exact = ref.pixel_metrics([scores], [mask])["pixel_auroc"]
    assert result["pixel_auroc"] == pytest.approx(exact, abs=TOLERANCE)


def test_saturated_maps_keep_their_order() -> None:
    """A trained map is a softmax at CLIP's logit scale: most of its pixels sit far below 1e-5
    and rank among themselves there. The log-odds bins keep that order (equal-width bins of
    width 1.5e-5 put nearly all of these pixels into bin 0, one big tie)."""
    rng = np.random.default_rng(11)
    images = []
    for _ in range(4):
        mask = np.zeros((48, 48), dtype=bool)
        y, x = rng.integers(0, 36, 2)
        mask[y : y + 12, x : x + 8] = True
        log_odds = np.where(mask, rng.normal(-16.0, 3.0, mask.shape), rng.normal(-20.0, 3.0, mask.shape))
        scores = (1.0 / (1.0 + np.exp(-log_odds))).astype(np.float32)
        assert scores.max() < 1e-3
        images.append(Sample(scores, mask, float(scores.max()), 1))
    result = _accumulate(images).result()
    expected = _exact(images)
    assert expected["pixel_auroc"] > 0.75 and expected["pixel_aupro"] > 0.1
    for name in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"):
        assert result[name] == pytest.approx(expected[name], abs=TOLERANCE), name


def test_scores_outside_unit_range_are_clipped_to_end_bins() -> None:
    rng = np.random.default_rng(5)
    scores = rng.uniform(-0.5, 1.5, (20, 20))
    scores[0, :3] = [np.inf, -np.inf, 1.0]
    mask = rng.random((20, 20)) > 0.7
    raw = _accumulate([Sample(scores, mask, 1.7, 1), Sample(scores, ~mask, -2.0, 0)])
    inside = np.clip(scores, 0, 1)
    clipped = _accumulate([Sample(inside, mask, 1.0, 1), Sample(inside, ~mask, 0.0, 0)])
    _assert_same_state(raw, clipped)
    assert raw.result()["counts"]["n_pixels"] == 800


def test_invalid_inputs_raise_and_leave_state_unchanged() -> None:
    accumulator = CategoryMetricsAccumulator(16)
    accumulator.add(np.full((2, 2), 0.5), np.eye(2, dtype=bool), 0.5, 1)
    before = accumulator.to_state()
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        accumulator.add(np.zeros((3, 4)), np.zeros((4, 3), bool), 0.5, 1)
    with pytest.raises(ValueError, match="NaN"):
        accumulator.add(np.array([[0.1, np.nan]]), np.zeros((1, 2), bool), 0.5, 0)
    with pytest.raises(ValueError, match="2-D"):
        accumulator.add(np.zeros((2, 2, 3)), None, 0.5, 0)
    with pytest.raises(ValueError, match="label"):
        accumulator.add(np.zeros((2, 2)), None, 0.5, 2)
    with pytest.raises(ValueError, match="image_score"):
        accumulator.add(np.zeros((2, 2)), np.zeros((2, 2), bool), None, 1)
    with pytest.raises(ValueError, match="bins"):
        accumulator.merge(CategoryMetricsAccumulator(32))
    with pytest.raises(ValueError, match="bins"):
        CategoryMetricsAccumulator(1)
    after = accumulator.to_state()
    assert all(np.array_equal(before[key], after[key]) for key in before)


@settings(max_examples=15, deadline=None)
@given(categories(unknowns=True))
def test_state_round_trips(images: list[Sample]) -> None:
    accumulator = _accumulate(images, bins=4096)
    _assert_same_state(accumulator, CategoryMetricsAccumulator.from_state(accumulator.to_state()))
    _assert_same_state(accumulator, CategoryMetricsAccumulator.from_bytes(accumulator.to_bytes()))
    _assert_same_state(accumulator, pickle.loads(pickle.dumps(accumulator)))


def test_from_state_rejects_wrong_shapes() -> None:
    state = CategoryMetricsAccumulator(16).to_state()
    state["pixel_pos"] = np.zeros(8, dtype=np.int64)
    with pytest.raises(ValueError, match="pixel_pos"):
        CategoryMetricsAccumulator.from_state(state)


def test_summarize_means_over_categories_with_values() -> None:
    rng = np.random.default_rng(6)
    per_category = {}
    for name, anomalous in (("a", True), ("b", True), ("c", False)):
        images = []
        for label in (0, 1):
            scores = rng.random((12, 12))
            mask = (scores > 0.85) if (anomalous and label) else np.zeros((12, 12), bool)
            images.append(Sample(scores, mask, 0.3 + 0.4 * label, label if anomalous else 0))
        per_category[name] = _accumulate(images).result()
    summary = summarize(per_category)
    expected = (per_category["a"]["pixel_auroc"] + per_category["b"]["pixel_auroc"]) / 2
    assert summary["mean"]["pixel_auroc"] == pytest.approx(expected, abs=1e-15)
    assert summary["n_categories"]["pixel_auroc"] == 2
    assert summary["left_out"]["pixel_auroc"] == ["c"]
    assert summary["left_out"]["image_auroc"] == ["c"]
    assert "pixel_f1_threshold" not in summary["mean"]  # operating points are not averaged
    only_normal = summarize({"c": per_category["c"]})
    assert only_normal["reasons"]["pixel_auroc"] == "no category has a value"
    _no_nan(summary)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 5000),
    st.sampled_from([0.5, 0.9, 0.99, 0.999, 1.0]) | st.floats(0.01, 1.0),
    st.sampled_from([256, 1 << 16]),
)
def test_normal_score_quantile(seed: int, n: int, q: float, bins: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 5, n)
    half = n // 2
    quantile = NormalScoreQuantile(bins)
    quantile.add(scores[:half].reshape(1, -1))
    other = NormalScoreQuantile(bins)
    other.add(scores[half:])
    threshold = quantile.merge(other).threshold(q)
    exact = float(np.quantile(scores, q, method="inverted_cdf"))
    # The lower edge of the bin above the one holding the exact quantile.
    assert exact < threshold == bin_lower_edge(int(score_bins(exact, bins)) + 1, bins)
    assert np.mean(scores >= threshold) <= 1 - q + 1e-12
    single = NormalScoreQuantile(bins)
    single.add(scores)
    assert np.array_equal(single.counts, quantile.counts)


def test_normal_score_quantile_errors_and_state() -> None:
    quantile = NormalScoreQuantile(64)
    with pytest.raises(ValueError, match="no normal pixel"):
        quantile.threshold()
    quantile.add(np.linspace(0, 1, 101))
    with pytest.raises(ValueError, match="q"):
        quantile.threshold(0.0)
    copy = NormalScoreQuantile.from_state(quantile.to_state())
    assert copy.threshold(0.9) == quantile.threshold(0.9)
    with pytest.raises(ValueError, match="bins"):
        quantile.merge(NormalScoreQuantile(32))


def _real_masks() -> list[np.ndarray]:
    """Every bundled MVTec AD ground-truth mask (900 px bottle, 256 px hazelnut / transistor)."""
    paths = sorted(REAL_DATA.glob("mvtec_ad/*/ground_truth/*/*.png"))
    paths += sorted(REAL_DATA.glob("mvtec_ad_256/*/ground_truth/*/*.png"))
    assert len(paths) == 20, paths
    return [np.asarray(Image.open(p).convert("L")) > 127 for p in paths]


def _synthetic_map(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A plausible detector output in [0, 1]: the mask blurred, under smooth unit-std noise."""
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), mask.shape[0] / 100)
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 2)
    return np.clip(0.3 * blurred + 0.2 * noise / noise.std() + 0.35, 0, 1)


def test_real_mvtec_masks_match_exact_reference() -> None:
    rng = np.random.default_rng(7)
    masks = _real_masks()
    masks += [np.zeros_like(m) for m in masks[::3]]  # some normal images at each resolution
    maps = [_synthetic_map(rng, m) for m in masks]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, mask in enumerate(masks):
        by_size.setdefault(mask.shape, []).append(index)
    assert set(by_size) == {(900, 900), (256, 256)}
    for indices in by_size.values():
        images = [
            Sample(maps[i], masks[i], float(maps[i].max()), int(masks[i].any())) for i in indices
        ]
        result = _accumulate(images).result()
        expected = ref.pixel_metrics([maps[i] for i in indices], [masks[i] for i in indices])
        assert 0.3 < expected["pixel_aupro"] < 0.9  # a non-trivial curve, not a saturated one
        for name, value in expected.items():
            assert result[name] == pytest.approx(value, abs=TOLERANCE), name
