"""EvaluatePerCategory in a real Beam pipeline (FnApiRunner) against direct accumulator results."""
from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from clipsam.metrics import COUNT_NAMES, METRIC_NAMES, CategoryMetricsAccumulator, summarize
from transforms.evaluate import (
    METRICS_SCHEMA,
    CategoryMetricsCombineFn,
    EvalItem,
    EvaluatePerCategory,
    write_metrics,
)

BINS = 4096


def _items(seed: int, n: int, anomalous: bool, size: int) -> list[EvalItem]:
    """Half normal / half anomalous images (all normal when `anomalous` is False)."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(n):
        mask = np.zeros((size, size), dtype=bool)
        if anomalous and index % 2:
            y, x = rng.integers(0, size - 4, 2)
            mask[y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = True
        scores = np.clip(rng.uniform(0, 0.7, mask.shape) + 0.3 * mask, 0, 1).astype(np.float32)
        items.append(EvalItem(scores, mask, float(scores.max()), int(mask.any())))
    return items


@pytest.fixture(scope="module")
def dataset() -> dict[str, list[EvalItem]]:
    return {
        "bottle": _items(0, 6, anomalous=True, size=24),
        "hazelnut": _items(1, 5, anomalous=True, size=16),
        "screw": _items(2, 4, anomalous=False, size=20),  # no anomalies: pixel metrics null
    }


def _direct(dataset: dict[str, list[EvalItem]]) -> dict[str, dict[str, Any]]:
    results = {}
    for category, items in dataset.items():
        accumulator = CategoryMetricsAccumulator(BINS)
        for item in items:
            accumulator.add(*item)
        results[category] = accumulator.result()
    return results


def _check_outputs(output_dir: str, expected: dict[str, dict[str, Any]]) -> None:
    with fsspec.open(f"{output_dir}/metrics.json", "rb") as stream:
        document = json.loads(stream.read())
    assert document["categories"] == expected  # JSON floats round-trip exactly
    assert document["dataset"] == json.loads(json.dumps(summarize(expected)))
    with fsspec.open(f"{output_dir}/metrics.parquet", "rb") as stream:
        table = pq.read_table(stream)
    assert table.schema.equals(METRICS_SCHEMA)
    rows = {row["category"]: row for row in table.to_pylist()}
    assert list(rows) == sorted(expected)
    for category, result in expected.items():
        row = rows[category]
        assert {m: row[m] for m in METRIC_NAMES} == {m: result[m] for m in METRIC_NAMES}
        assert {c: row[c] for c in COUNT_NAMES} == result["counts"]
        assert row["bins"] == BINS
        parts = row["reasons"].split("; ") if row["reasons"] else []
        reasons = dict(part.split(": ", 1) for part in parts)
        assert reasons == result["reasons"]


def test_pipeline_writes_metrics_matching_direct_accumulation(tmp_path, dataset) -> None:
    output_dir = str(tmp_path / "run" / "eval")  # not created yet: the writer makes it
    keyed = [(category, item) for category, items in dataset.items() for item in items]
    # Two workers after a Reshuffle: each category is pre-combined in two places, so the
    # runner really merges accumulators before extracting.
    options = PipelineOptions(direct_num_workers=2, direct_running_mode="in_memory")
    with beam.Pipeline(runner="FnApiRunner", options=options) as pipeline:
        written = (
            pipeline
            | beam.Create(keyed, reshuffle=False)
            | beam.Reshuffle()
            | EvaluatePerCategory(output_dir, bins=BINS)
        )
        expected_urls = [f"{output_dir}/metrics.json", f"{output_dir}/metrics.parquet"]
        assert_that(written, equal_to(expected_urls))
    expected = _direct(dataset)
    assert expected["screw"]["pixel_auroc"] is None
    assert expected["screw"]["reasons"]["pixel_auroc"] == "no anomalous pixel"
    assert expected["bottle"]["pixel_aupro"] is not None
    _check_outputs(output_dir, expected)


def test_combine_fn_merges_like_one_accumulator(dataset) -> None:
    combine = CategoryMetricsCombineFn(BINS)
    items = dataset["bottle"]
    parts = []
    for chunk in (items[:2], items[2:3], items[3:]):
        accumulator = combine.create_accumulator()
        for item in chunk:
            accumulator = combine.add_input(accumulator, item)
        parts.append(accumulator)
    merged = combine.merge_accumulators(parts)
    assert combine.extract_output(merged) == _direct({"bottle": items})["bottle"]


def test_write_metrics_to_fsspec_url(dataset) -> None:
    expected = _direct(dataset)
    urls = write_metrics(expected.items(), "memory://clipsam-eval/out/")
    root = "memory://clipsam-eval/out"
    assert urls == [f"{root}/metrics.json", f"{root}/metrics.parquet"]
    _check_outputs("memory://clipsam-eval/out", expected)


def test_invalid_bins_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="bins"):
        EvaluatePerCategory("/tmp/unused", bins=1)
