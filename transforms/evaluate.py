"""Evaluation in Beam: per-category metrics with a combiner, written once as JSON and Parquet.

The metric math lives in `clipsam.metrics`; this module only wires it into Beam. The
combiner's accumulator is a fixed-size histogram set (~2.6 MB at 2^16 bins), so Beam can
pre-combine on every worker and ship only accumulators, never pixels (DESIGN §6).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsam.metrics import (
    COUNT_NAMES,
    DEFAULT_BINS,
    METRIC_NAMES,
    CategoryMetricsAccumulator,
    check_bins,
    summarize,
)
from clipsam.curves import category_curves
from inputs.elements import known_ground_truth

METRICS_JSON = "metrics.json"
METRICS_PARQUET = "metrics.parquet"
CURVES_JSON = "curves.json"  # per category, the ROC / PR / PRO curves behind the metrics (`clipsam.curves`)

# One row per category: nullable metric values (null where a metric cannot be computed, the
# reason in `reasons`), the counts they rest on, and the binning they were computed with.
METRICS_SCHEMA = pa.schema(
    [pa.field("category", pa.string(), nullable=False)]
    + [pa.field(name, pa.float64()) for name in METRIC_NAMES]
    + [pa.field(name, pa.int64(), nullable=False) for name in COUNT_NAMES]
    + [
        pa.field("bins", pa.int64(), nullable=False),
        pa.field("pro_fpr_limit", pa.float64(), nullable=False),
        pa.field("reasons", pa.string()),  # "metric: reason; ..." or null when all are set
    ]
)


class EvalItem(NamedTuple):
    """One image's evaluation input.

    score_map: float32 (H, W) final anomaly map in [0, 1], at the ground truth's resolution.
    gt_mask: bool (H, W) ground truth, or None when the image has none (then it adds to the
        image metrics only; a normal image should carry an all-False mask).
    image_score: the image's anomaly score in [0, 1].
    label: 1 anomalous, 0 normal, None unknown (then it adds nothing to image metrics).
    """

    score_map: np.ndarray
    gt_mask: Optional[np.ndarray]
    image_score: float
    label: Optional[int]


def eval_items(pair: tuple) -> Iterable[tuple[str, EvalItem]]:
    """(ImageElement, Prediction) → (category, EvalItem) for images whose label is known; the
    element's ground truth follows `inputs.elements.known_ground_truth` (all-False when normal)."""
    element, prediction = pair
    if element.label is None:
        return
    gt = known_ground_truth(element.gt_mask, element.label, prediction.final_map.shape)
    yield element.category, EvalItem(prediction.final_map, gt, prediction.image_score, element.label)


class CategoryMetricsCombineFn(beam.CombineFn):
    """Folds EvalItems of one category into a `CategoryMetricsAccumulator`; outputs its result,
    with its curves under "curves" when `curves` is set."""

    def __init__(self, bins: int = DEFAULT_BINS, curves: bool = False) -> None:
        super().__init__()
        self._bins = check_bins(bins)  # fail at graph construction, not on a worker
        self._curves = curves

    def create_accumulator(self) -> CategoryMetricsAccumulator:
        return CategoryMetricsAccumulator(self._bins)

    def add_input(
        self, accumulator: CategoryMetricsAccumulator, item: EvalItem
    ) -> CategoryMetricsAccumulator:
        accumulator.add(item.score_map, item.gt_mask, item.image_score, item.label)
        return accumulator

    def merge_accumulators(
        self, accumulators: Iterable[CategoryMetricsAccumulator]
    ) -> CategoryMetricsAccumulator:
        # Beam allows mutating the first accumulator: no 2.6 MB copy per merge.
        iterator = iter(accumulators)
        merged = next(iterator)
        for accumulator in iterator:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: CategoryMetricsAccumulator) -> dict[str, Any]:
        result = accumulator.result()
        if self._curves:
            result["curves"] = category_curves(accumulator, result)
        return result


def metrics_document(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics.json content: every category's result and the dataset summary."""
    return {
        "categories": {name: dict(per_category[name]) for name in sorted(per_category)},
        "dataset": summarize(per_category),
    }


def metrics_table(per_category: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """The metrics.parquet content: one row per category (sorted), METRICS_SCHEMA."""
    rows = []
    for name in sorted(per_category):
        result = per_category[name]
        reasons = "; ".join(f"{metric}: {why}" for metric, why in result["reasons"].items())
        rows.append(
            {
                "category": name,
                **{metric: result[metric] for metric in METRIC_NAMES},
                **{count: result["counts"][count] for count in COUNT_NAMES},
                "bins": result["bins"],
                "pro_fpr_limit": result["pro_fpr_limit"],
                "reasons": reasons or None,
            }
        )
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def write_metrics(
    per_category: Iterable[tuple[str, Mapping[str, Any]]], output_dir: str, parquet_url: Optional[str] = None,
    write_empty: bool = True,
) -> list[str]:
    """Write metrics.json and metrics.parquet under `output_dir` (a path or any fsspec URL), and
    curves.json when the results carry curves ({category: {curve name: curve}}); `parquet_url`:
    metrics.parquet elsewhere (a results table's night, `--table`). Without any category (no image
    had ground truth) nothing is written unless `write_empty`.

    Returns the URLs written. JSON is written with allow_nan=False: a NaN reaching the
    report is a bug, not a value.
    """
    results = dict(per_category)
    if not results and not write_empty:
        return []
    curves = {name: results[name]["curves"] for name in sorted(results) if "curves" in results[name]}
    results = {name: {k: v for k, v in result.items() if k != "curves"} for name, result in results.items()}
    fs, root = fsspec.core.url_to_fs(output_dir)
    fs.makedirs(root, exist_ok=True)
    base = output_dir.rstrip("/")
    json_url, parquet_url = f"{base}/{METRICS_JSON}", parquet_url or f"{base}/{METRICS_PARQUET}"
    _write_json(json_url, metrics_document(results))
    with fsspec.open(parquet_url, "wb") as stream:
        pq.write_table(metrics_table(results), stream, compression="zstd")
    if not curves:
        return [json_url, parquet_url]
    _write_json(f"{base}/{CURVES_JSON}", curves)
    return [json_url, parquet_url, f"{base}/{CURVES_JSON}"]


def _write_json(url: str, document: Any) -> None:
    with fsspec.open(url, "wb") as stream:
        stream.write(json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode("utf-8"))


class EvaluatePerCategory(beam.PTransform):
    """(category, EvalItem) → metrics.json + metrics.parquet (+ curves.json) in `output_dir`, written once.

    Per-key combine first (fixed-size state per category), then all category results are
    gathered into one list so the two files are written by exactly one element. Outputs the
    PCollection of the written URLs.
    """

    def __init__(self, output_dir: str, bins: int = DEFAULT_BINS, curves: bool = False,
                 parquet_url: Optional[str] = None, write_empty: bool = True) -> None:
        super().__init__()
        self._output_dir = output_dir
        self._parquet_url = parquet_url
        self._write_empty = write_empty
        self._bins = check_bins(bins)
        self._curves = curves

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        return (
            items
            | "CombinePerCategory" >> beam.CombinePerKey(CategoryMetricsCombineFn(self._bins, self._curves))
            | "GatherCategories" >> beam.combiners.ToList()
            | "WriteMetrics" >> beam.FlatMap(write_metrics, self._output_dir, self._parquet_url, self._write_empty)
        )
