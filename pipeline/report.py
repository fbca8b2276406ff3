"""report.html: one self-contained page an inspector acts on, rendered from a jinja2 template
(`templates/report.html.j2`, autoescaped: every value from the data is escaped).

It holds the run's settings, counts and OK / NG per category, failures, the metric table, the
ROC / PR / PRO curves as inline SVG, and per category the galleries of overlays (inline JPEGs):
most anomalous parts, and where labels exist the highest-scoring normal and lowest-scoring
anomalous parts. Nothing is fetched when the page is viewed.
"""
from __future__ import annotations

import posixpath
from typing import Any

import fsspec
import jinja2

from clipsam.metrics import SCORE_METRICS
from model_store.store import join_url

from .summary import RANDOM_WEIGHTS_NOTE, RunSummary

REPORT = "report.html"
CURVE_ORDER = ("pixel_roc", "pixel_pr", "pixel_pro", "image_roc", "image_pr")
CURVE_TITLES = {"pixel_roc": "pixel ROC", "pixel_pr": "pixel precision-recall", "pixel_pro": "PRO (FPR ≤ 0.3)",
                "image_roc": "image ROC", "image_pr": "image precision-recall"}
GALLERY_TITLES = {"most_anomalous": "Most anomalous parts",
                  "highest_normal": "Normal parts with the highest scores (NG here = false alarm)",
                  "lowest_anomalous": "Defective parts with the lowest scores (OK here = missed defect)"}
PLOT = {"width": 205, "height": 175, "pad": 28}

_ENVIRONMENT = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                                  autoescape=True, undefined=jinja2.StrictUndefined)


def svg_points(curve: dict[str, Any]) -> str:
    """The curve's points in the plot's pixel frame (x to the right over [0, max x], y up over [0, 1])."""
    inner_w, inner_h = PLOT["width"] - 2 * PLOT["pad"], PLOT["height"] - 2 * PLOT["pad"]
    x_max = max(curve["x"][-1], 1e-12) if curve["x"] else 1.0
    return " ".join(f"{PLOT['pad'] + inner_w * x / x_max:.1f},{PLOT['height'] - PLOT['pad'] - inner_h * y:.1f}"
                    for x, y in zip(curve["x"], curve["y"], strict=True))


def _category_rows(summary: RunSummary) -> list[dict[str, Any]]:
    rows = []
    for name, counts in summary.categories.items():
        images = counts["images"]
        rows.append({"category": name, **counts, "yield": counts["ok"] / images if images else None,
                     "labelled": counts["normal"] + counts["anomalous"] > 0})
    return rows


def render_report(summary: RunSummary) -> str:
    """The report's HTML text."""
    per_category = (summary.metrics or {}).get("categories", {})
    categories = sorted(set(summary.categories) | set(summary.galleries) | set(summary.curves))
    return _ENVIRONMENT.get_template("report.html.j2").render(
        summary=summary,
        random_note=RANDOM_WEIGHTS_NOTE,
        category_rows=_category_rows(summary),
        categories=categories,
        metric_names=list(SCORE_METRICS),
        per_category_metrics=per_category,
        dataset_mean=(summary.metrics or {}).get("dataset", {}).get("mean", {}),
        curve_order=CURVE_ORDER,
        curve_titles=CURVE_TITLES,
        gallery_titles=GALLERY_TITLES,
        plot=PLOT,
        svg_points=svg_points,
        basename=posixpath.basename,
    )


def write_report(summary: RunSummary) -> str:
    """Render the report into `<run_dir>/report.html`; returns its URL."""
    url = join_url(summary.run_dir, REPORT)
    with fsspec.open(url, "w", encoding="utf-8") as handle:
        handle.write(render_report(summary))
    return url
