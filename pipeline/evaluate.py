"""`python -m pipeline.evaluate`: recompute metrics from stored records, without the models.

    python -m pipeline.evaluate --records=out/RUN/ --ground_truth=/data/mvtec_ad [--output=DIR]

Needs a run made with `--store_maps`: each record then holds its final map as a 16-bit PNG of
at most 256 px, which is resized (bilinear) back to the ground truth's size. Results therefore
match the in-pipeline metrics up to that quantisation (the pipeline evaluates the float map at
full resolution). Ground truth is found by listing `--ground_truth` exactly as the pipeline
lists its input, so a record matches its mask through the image's URI. Memory stays bounded:
records are streamed in Parquet batches and every category keeps only its histograms.
"""
from __future__ import annotations

import argparse
import logging
import sys

import fsspec
import numpy as np

from clipsam.metrics import DEFAULT_BINS, CategoryMetricsAccumulator
from model_store.store import join_url
from inputs.decode import DecodeError, decode_mask
from transforms.evaluate import write_metrics
from inputs.elements import known_ground_truth
from inputs.layouts import InputUnit, list_inputs

from .logs import show_progress
from .run import OptionError
from .stored_records import score_map, stored_records

LOG = logging.getLogger("clipsam.evaluate")
COLUMNS = ["source_uri", "category", "width", "height", "image_score", "anomaly_map_png"]


def list_all_inputs(inputs: str) -> list[InputUnit]:
    """The units of every comma-separated URL of `inputs` (auto layout), listed here; OptionError
    naming --ground_truth when one cannot be listed."""
    units: set[InputUnit] = set()
    for url in filter(None, (part.strip() for part in inputs.split(","))):
        try:
            units.update(list_inputs(url))
        except (ValueError, OSError) as exc:
            raise OptionError(f"--ground_truth: {exc}") from None
    return sorted(units)


def ground_truth(unit: InputUnit, shape: tuple[int, int]) -> np.ndarray | None:
    """bool [H, W] = `shape`: the unit's mask file, decoded; all-False for a normal unit (label 0)."""
    if unit.mask_uri is None:
        return known_ground_truth(None, unit.label, shape)
    with fsspec.open(unit.mask_uri, "rb") as handle:
        return decode_mask(handle.read(), unit.mask_uri, shape)


def evaluate_records(records_url: str, truth_url: str, bins: int = DEFAULT_BINS) -> dict[str, dict]:
    units = {u.uri: u for u in list_all_inputs(truth_url) if u.label is not None}
    if not units:
        raise OptionError(f"--ground_truth: {truth_url} has no labelled images (use an MVTec-AD or VisA root)")
    accumulators: dict[str, CategoryMetricsAccumulator] = {}
    used = skipped = 0
    for record in stored_records(records_url, COLUMNS):
        unit = units.get(record["source_uri"])
        if unit is None:
            skipped += 1
            continue
        if record["anomaly_map_png"] is None:
            raise OptionError(f"--records: {record['source_uri']} has no stored map; rerun the pipeline with --store_maps")
        try:
            mask = ground_truth(unit, (record["height"], record["width"]))
        except DecodeError as exc:
            LOG.warning("skipping %s: %s", record["source_uri"], exc)
            skipped += 1
            continue
        acc = accumulators.setdefault(record["category"], CategoryMetricsAccumulator(bins))
        acc.add(score_map(record), mask, record["image_score"], unit.label)
        used += 1
    LOG.info("evaluated %d records, %d without ground truth skipped", used, skipped)
    return {category: acc.result() for category, acc in sorted(accumulators.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True, help="a run folder (<output>/<run_id>) or one records Parquet file")
    parser.add_argument("--ground_truth", required=True, help="the MVTec-AD / VisA root(s) the run read (comma-separated)")
    parser.add_argument("--output", help="where metrics.json / metrics.parquet go (default: a `reevaluated` folder in --records)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="histogram bins (default 2^16)")
    args = parser.parse_args(argv)
    show_progress()
    try:
        per_category = evaluate_records(args.records, args.ground_truth, args.bins)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = args.output or join_url(args.records.rstrip("/"), "reevaluated")
    for url in write_metrics(per_category, output):
        print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
