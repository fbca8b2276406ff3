"""After a run: what it produced, from the pipeline's own small aggregates, and report.html.

The pipeline writes `report-data.json` (`transforms.presentation.RunAggregates`: per-category
counts, OK / NG, galleries, failure counts and samples), `metrics.json` and `curves.json` when it
evaluates, and `.written-files.json`; the launcher reads only these, whose size does not depend
on the number of images, never the records. Inputs a runner lost are `Lost` failure rows
(`transforms.accounting`), counted like any other failure type.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import fsspec

from model_store.store import join_url
from transforms.accounting import LOST
from transforms.evaluate import CURVES_JSON, METRICS_JSON
from transforms.presentation import REPORT_DATA

RANDOM_WEIGHTS_NOTE = ("the model store holds RANDOM weights (python -m model_store make-random): these scores, "
                       "masks and metrics mean nothing; use them for benchmarks and plumbing checks only")


@dataclass
class RunSummary:
    run_dir: str
    categories: dict[str, dict[str, int]]  # per category: images, ok, ng, sam_used, normal, anomalous, ...
    failures_by_type: dict[str, int]
    metrics: dict[str, Any] | None
    elapsed_s: float
    counters: dict[str, int] = field(default_factory=dict)  # the job's Beam counters (namespace clipsam)
    files: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # files left out on purpose at listing, by reason
    listed_units: int = 0  # image files and tar shards the pipeline listed
    random_weights: bool = False  # the model store held make-random weights: the scores mean nothing
    thresholds: Optional[str] = None  # the --thresholds file in force (URL), None: profile defaults
    default_threshold_categories: list[str] = field(default_factory=list)  # categories it does not calibrate
    galleries: dict[str, dict[str, list[dict]]] = field(default_factory=dict, repr=False)
    failure_samples: list[dict] = field(default_factory=list, repr=False)
    curves: dict[str, dict[str, dict]] = field(default_factory=dict, repr=False)
    settings: dict[str, str] = field(default_factory=dict)  # what the run was asked to do, for the report
    skipped_scored: dict[str, int] = field(default_factory=dict)  # --skip_scored: images left out, by category
    table: Optional[str] = None  # --table: the table, night and versions this run committed

    def total(self, name: str) -> int:
        """A per-category count summed over categories (`images`, `ng`, `ok`, `sam_used`, ...)."""
        return sum(counts.get(name, 0) for counts in self.categories.values())

    @property
    def num_records(self) -> int:
        return self.total("images")

    @property
    def num_failures(self) -> int:
        return sum(self.failures_by_type.values())

    @property
    def sam_used(self) -> int:
        return self.total("sam_used")

    @property
    def lost(self) -> int:
        """Listed inputs a runner lost (they have a `Lost` failure row)."""
        return self.failures_by_type.get(LOST, 0)

    @property
    def lost_examples(self) -> list[str]:
        return sorted(row["source_uri"] for row in self.failure_samples if row["error_type"] == LOST)

    def text(self) -> str:
        lines = [
            f"run finished in {self.elapsed_s:.1f}s: {self.listed_units} files listed, {self.num_records} records, "
            f"{self.num_failures} failures, SAM used on {self.sam_used} images",
            "  counters: " + (_fmt_counts(self.counters) or "none reported by this runner"),
            f"  records:  {self.files['records']}",
            f"  failures: {self.files['failures']}" + (f"  ({_fmt_counts(self.failures_by_type)})" if self.failures_by_type else ""),
            f"  decisions: {self.total('ng')} NG, {self.total('ok')} OK, thresholds: "
            + (self.thresholds or "profile default (no --thresholds)"),
        ]
        if self.thresholds and self.default_threshold_categories:
            lines.append("  profile default thresholds (not calibrated in the file) for: "
                         + ", ".join(self.default_threshold_categories))
        if self.metrics is not None:
            lines.append(f"  metrics:  {self.files['metrics']}")
            mean = self.metrics.get("dataset", {}).get("mean", {})
            if mean:
                lines.append("  dataset mean: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(mean.items()) if v is not None))
        if self.random_weights:
            lines.append(f"  WARNING: {RANDOM_WEIGHTS_NOTE}")
        if self.skipped:
            lines.append(f"  skipped on purpose at listing: {_fmt_counts(self.skipped)}")
        if self.skipped_scored:
            lines.append(f"  skipped as already scored in the table: {sum(self.skipped_scored.values())} "
                         f"({_fmt_counts(self.skipped_scored)})")
        if self.table:
            lines.append(f"  table:    {self.table}")
        if self.lost:
            example = f", e.g. {self.lost_examples[0]}" if self.lost_examples else ""
            lines.append(f"  ERROR: {self.lost} listed inputs were lost by the runner (failure rows of type {LOST}){example}")
        if "report" in self.files:
            lines.append(f"  report:   {self.files['report']}")
        return "\n".join(lines)


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _read_json(url: str, listed: set[str]) -> Optional[Any]:
    """The JSON document at `url` when the run wrote it (its path is in `listed`), else None."""
    fs, path = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(path)) if path in listed else None


def summarize_run(run_dir: str, *, files: list[str], counters: dict[str, int], elapsed_s: float,
                  random_weights: bool = False, settings: Optional[dict[str, str]] = None) -> RunSummary:
    """The summary of a finished run from its aggregates: only `files`, the URLs this run wrote,
    are read (a folder reused by an earlier run may still hold others). `random_weights`:
    the store's weights came from `make-random`; the summary and the report say the scores mean
    nothing. `settings`: what the run was asked to do (flags, store, profile), shown in the report."""
    listed = {fsspec.core.url_to_fs(url)[1] for url in files}
    data = _read_json(join_url(run_dir, REPORT_DATA), listed)
    if data is None:
        raise FileNotFoundError(f"{join_url(run_dir, REPORT_DATA)} was not written by this run")
    return RunSummary(
        run_dir=run_dir,
        categories=data["categories"],
        failures_by_type=collections.Counter(data["failures"]["by_type"]),
        metrics=_read_json(join_url(run_dir, METRICS_JSON), listed),
        elapsed_s=elapsed_s,
        counters=counters,
        files={
            "records": join_url(run_dir, "records-*.parquet"),
            "failures": join_url(run_dir, "failures-*.parquet"),
            "metrics": join_url(run_dir, METRICS_JSON),
        },
        skipped=data["listing"]["skipped"],
        listed_units=data["listing"]["units"],
        random_weights=random_weights,
        galleries=data["galleries"],
        failure_samples=data["failures"]["samples"],
        curves=_read_json(join_url(run_dir, CURVES_JSON), listed) or {},
        settings=dict(settings or {}),
        skipped_scored=data.get("skipped_scored", {}),
    )
