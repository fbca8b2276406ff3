"""After a run: read the outputs back, print where everything is, and write report.html.

Reading the written files (rather than trusting in-memory counters) means the summary states
what a consumer will actually find, on any runner. The lost-input check counts listings: every
listed image file must have as many rows (record or failure, by `source_uri`) as it has
listings, and every listed tar shard at least one row (its own, or a sample's
``<shard>#<key>``). Files the listing left out on purpose are printed by reason.
report.html escapes every value that comes from the data (category names, URIs, messages).
"""
from __future__ import annotations

import collections
import html
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import fsspec
import pyarrow.parquet as pq

from clipsam.metrics import SCORE_METRICS
from model_store.store import join_url

SUMMARY_COLUMNS = ["image_id", "source_uri", "category", "image_score", "sam_used", "anomaly_area_fraction", "pred_label"]
RANDOM_WEIGHTS_NOTE = ("the model store holds RANDOM weights (python -m model_store make-random): these scores, "
                       "masks and metrics mean nothing; use them for benchmarks and plumbing checks only")


def read_rows(run_dir: str, kind: str, columns: list[str] | None = None,
              files: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of `<run_dir>/<kind>-*.parquet` (kind: records | failures), in file order; with
    `files` (URLs a run wrote), only those of them."""
    fs, path = fsspec.core.url_to_fs(run_dir)
    names = sorted(fs.glob(f"{path.rstrip('/')}/{kind}-*.parquet"))
    if files is not None:
        listed = {fsspec.core.url_to_fs(url)[1] for url in files}
        names = [name for name in names if name in listed]
    rows: list[dict[str, Any]] = []
    for name in names:
        with fs.open(name, "rb") as handle:
            rows.extend(pq.read_table(handle, columns=columns).to_pylist())
    return rows


@dataclass
class RunSummary:
    run_dir: str
    num_records: int
    num_failures: int
    sam_used: int
    failures_by_type: dict[str, int]
    categories: dict[str, int]
    metrics: dict[str, Any] | None
    elapsed_s: float
    counters: dict[str, int] = field(default_factory=dict)  # the job's Beam counters (namespace clipsam)
    missing: list[str] = field(default_factory=list)  # listed inputs with no record and no failure row
    files: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # files left out on purpose at listing, by reason
    random_weights: bool = False  # the model store held make-random weights: the scores mean nothing
    pred_labels: list[str] = field(default_factory=list, repr=False)  # every record's OK/NG
    thresholds: Optional[str] = None  # the --thresholds file in force (URL), None: profile defaults
    default_threshold_categories: list[str] = field(default_factory=list)  # categories it does not calibrate

    def text(self) -> str:
        lines = [
            f"run finished in {self.elapsed_s:.1f}s: {self.num_records} records, {self.num_failures} failures, "
            f"SAM used on {self.sam_used} images",
            "  counters: " + (_fmt_counts(self.counters) or "none reported by this runner"),
            f"  records:  {self.files['records']}",
            f"  failures: {self.files['failures']}" + (f"  ({_fmt_counts(self.failures_by_type)})" if self.failures_by_type else ""),
        ]
        decisions = collections.Counter(self.pred_labels)
        lines.append(f"  decisions: {decisions.get('NG', 0)} NG, {decisions.get('OK', 0)} OK, thresholds: "
                     + (self.thresholds or "profile default (no --thresholds)"))
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
        if self.missing:
            lines.append(f"  ERROR: {len(self.missing)} listed inputs have neither a record nor a failure row "
                         f"(the runner lost them), e.g. {self.missing[0]}")
        if "report" in self.files:
            lines.append(f"  report:   {self.files['report']}")
        return "\n".join(lines)


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def lost_inputs(units: Iterable[Any], expected_uris: Iterable[str], source_uris: Iterable[str]) -> list[str]:
    """Listed inputs without their rows, given the `source_uri` of every record and failure row.

    `units`: the listed `InputUnit`s: an image unit listed k times (a repeat is a DuplicateInput
    unit) needs k rows with its URI; a tar unit needs at least one row that is its own or a
    sample's (``<shard>#<key>``). `expected_uris`: image URIs listed without units (one row each).
    Returns one URI per lost listing, sorted.
    """
    rows = collections.Counter(source_uris)
    listings: collections.Counter = collections.Counter()
    shards: set[str] = set()
    for unit in units:
        if unit.kind == "tar":
            shards.add(unit.uri)
        else:
            listings[unit.uri] += 1
    for uri in expected_uris:
        listings[uri] = max(listings[uri], 1)
    lost = [uri for uri, n in listings.items() for _ in range(n - min(n, rows.get(uri, 0)))]
    if shards:
        seen_shards = set()
        for uri in rows:
            if uri in shards:
                seen_shards.add(uri)
            cut = uri.find("#")
            while cut != -1:  # a shard URI may itself hold '#': try every split
                if uri[:cut] in shards:
                    seen_shards.add(uri[:cut])
                cut = uri.find("#", cut + 1)
        lost += shards - seen_shards
    return sorted(lost)


def summarize_run(
    run_dir: str, *, files: list[str], expected_uris: set[str], counters: dict[str, int], elapsed_s: float,
    report: bool, units: Optional[Iterable[Any]] = None, skipped: Optional[dict[str, int]] = None,
    random_weights: bool = False,
) -> RunSummary:
    """Read a finished run back: only `files`, the URLs this run wrote (a folder reused by an
    earlier run may still hold others). `expected_uris`: the image files listed at launch; any of
    them with neither a record nor a failure row is reported as missing (a runner lost it).
    `units` (optional): every listed `InputUnit`, repeats included, so that tar shards and
    repeated listings are checked too (`lost_inputs`). `skipped` (optional): files left out on
    purpose at listing, by reason (`inputs.layouts.Listing.skipped`), printed and reported.
    `random_weights`: the store's weights came from `make-random`; the summary and the report
    say that the scores mean nothing."""
    records = read_rows(run_dir, "records", SUMMARY_COLUMNS, files)
    failures = read_rows(run_dir, "failures", None, files)
    source_uris = [r["source_uri"] for r in records] + [f["source_uri"] for f in failures]
    metrics_url = join_url(run_dir, "metrics.json")
    fs, path = fsspec.core.url_to_fs(metrics_url)
    listed = {fsspec.core.url_to_fs(url)[1] for url in files}
    metrics = json.loads(fs.cat_file(path)) if path in listed else None
    summary = RunSummary(
        run_dir=run_dir,
        num_records=len(records),
        num_failures=len(failures),
        sam_used=sum(1 for r in records if r["sam_used"]),
        failures_by_type=dict(collections.Counter(f["error_type"] for f in failures)),
        categories=dict(collections.Counter(r["category"] for r in records)),
        metrics=metrics,
        elapsed_s=elapsed_s,
        counters=counters,
        missing=lost_inputs(units or [], expected_uris, source_uris),
        files={
            "records": join_url(run_dir, "records-*.parquet"),
            "failures": join_url(run_dir, "failures-*.parquet"),
            "metrics": metrics_url,
        },
        skipped=dict(sorted((skipped or {}).items())),
        random_weights=random_weights,
        pred_labels=[r["pred_label"] for r in records],
    )
    if report:
        summary.files["report"] = write_report(summary, records, failures)
    return summary


def write_report(summary: RunSummary, records: list[dict], failures: list[dict]) -> str:
    """A single self-contained HTML page: counts, metrics per category, top anomalies, failures; a
    banner at the top when the run used random weights."""
    esc = html.escape
    top = sorted(records, key=lambda r: -r["image_score"])[:25]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>ClipSAM run report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style>",
        f"<h1>ClipSAM run {esc(summary.run_dir)}</h1>",
        *([f"<p class='random' style='background:#c00;color:#fff;padding:1em;font-size:1.3em'><b>RANDOM WEIGHTS</b>: "
           f"{esc(RANDOM_WEIGHTS_NOTE)}.</p>"] if summary.random_weights else []),
        f"<p>{summary.num_records} records, {summary.num_failures} failures, SAM used on {summary.sam_used} images, "
        f"{summary.elapsed_s:.1f} s.</p>",
        "<h2>Images per category</h2>",
        _table(["category", "images"], sorted(summary.categories.items())),
    ]
    if summary.failures_by_type:
        parts += ["<h2>Failures by type</h2>", _table(["error_type", "inputs"], sorted(summary.failures_by_type.items()))]
    if summary.skipped:
        parts += ["<h2>Files left out on purpose at listing</h2>",
                  _table(["reason", "files"], sorted(summary.skipped.items()))]
    if summary.missing:
        parts += [f"<h2>Lost inputs ({len(summary.missing)}): neither a record nor a failure row</h2>",
                  _table(["source"], [[uri] for uri in summary.missing[:100]])]
    if summary.metrics is not None:
        per_category = summary.metrics.get("categories", {})
        names = list(SCORE_METRICS)
        rows = [[cat] + [_num(values.get(n)) for n in names] for cat, values in sorted(per_category.items())]
        mean = summary.metrics.get("dataset", {}).get("mean", {})
        rows.append([_Html("<b>mean</b>")] + [_num(mean.get(n)) for n in names])
        parts += ["<h2>Metrics</h2>", _table(["category", *names], rows)]
    parts += [
        "<h2>Most anomalous images</h2>",
        _table(["image_score", "category", "sam_used", "area", "source"],
               [[f"{r['image_score']:.3f}", r["category"], r["sam_used"], f"{r['anomaly_area_fraction']:.4f}", r["source_uri"]] for r in top]),
        "<h2>Failures</h2>",
        _table(["stage", "error_type", "source", "message"], [[f["stage"], f["error_type"], f["source_uri"], f["message"][:300]] for f in failures]),
    ]
    url = join_url(summary.run_dir, "report.html")
    with fsspec.open(url, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))
    return url


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


class _Html(str):
    """A fixed piece of markup written by this module: the only cell `_table` does not escape."""


def _table(header: list[str], rows: list) -> str:
    """An HTML table; every cell is escaped (values come from data: folder names, VisA cells,
    tar members, URIs, messages) except `_Html` ones."""
    def cell(value: Any) -> str:
        return value if isinstance(value, _Html) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
