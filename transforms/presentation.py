"""What a person looks at after a run, computed inside the pipeline (DESIGN §5, README "Report").

Per image, `Present` renders (`transforms.pictures.render_overlay`):
- a small overlay for the report's galleries, carried in a `GalleryItem`, for the images that
  can still make a gallery (see `Present`);
- the full overlay file `overlays/<category>/<image_id>.jpg` when `--write_overlays` asks for it
  (`ng`: images judged NG, `all`, `none`), written by `WriteFileShards`.
`RunAggregates` then folds the gallery items and failure rows into `report-data.json` with
fixed-size per-category combiners: counts (images, OK / NG, SAM used, false alarms and misses
where the truth is known), the `top_k` most anomalous images, the `top_k` highest-scoring
normal and lowest-scoring anomalous images (where labels exist), failure counts by type and the
first `FAILURE_SAMPLES` failures. Its size does not grow with the night, so the launcher writes
the summary and the report from it without reading any record back.
"""
from __future__ import annotations

import base64
import collections
import heapq
import json
import posixpath
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional

import apache_beam as beam
import fsspec

from clipsam.thresholds import NG, decide
from inputs.elements import known_ground_truth

from .pictures import render_overlay
from .records import judged_mask
from .routing import of_type
from .write import safe_name

OVERLAY_MODES = ("ng", "all", "none")
OVERLAYS = "overlays"
GALLERY_SIDE = 192  # long side of each panel of a gallery overlay, pixels
REPORT_DATA = "report-data.json"
FAILURE_SAMPLES = 100
GALLERIES = ("most_anomalous", "highest_normal", "lowest_anomalous")


class OverlayFile(NamedTuple):
    """One overlay file to write (`WriteFileShards`): its image, path in the run folder, JPEG bytes."""

    image_id: str
    path: str
    data: bytes


class GalleryItem(NamedTuple):
    """One image as the report shows it; `overlay` is a small overlay JPEG."""

    category: str
    image_id: str
    source_uri: str
    image_score: float
    image_threshold: float
    pred_label: str
    gt_label: Optional[int]
    sam_used: bool
    defects: int  # connected components of the mask
    overlay: bytes

    def to_json(self) -> dict[str, Any]:
        fields = self._asdict()
        fields["overlay"] = base64.b64encode(self.overlay).decode("ascii")
        return fields


def overlay_path(category: str, image_id: str) -> str:
    """`overlays/<category>/<image_id>.jpg` relative to the run folder; the category (a folder
    name from the data) made a safe path segment (`safe_name`)."""
    return f"{OVERLAYS}/{safe_name(category)}/{safe_name(image_id)}.jpg"


def caption(category: str, source_uri: str, score: float, threshold: float, label: str) -> str:
    return f"{label}  score {score:.3f} (threshold {threshold:.3f})  {category}  {posixpath.basename(source_uri)}"


def _high_first(score: float, image_id: str) -> tuple[float, str]:
    return score, image_id  # the id breaks ties: the same night gives the same galleries


def _low_first(score: float, image_id: str) -> tuple[float, str]:
    return -score, image_id


def gallery_keys(category: str, image_id: str, score: float, gt_label: Optional[int]) -> dict[tuple, tuple]:
    """(category, gallery) → the image's rank key in each gallery it can enter (larger ranks first;
    the same keys `RunAggregates` ranks by)."""
    keys = {(category, GALLERIES[0]): _high_first(score, image_id)}
    if gt_label == 0:
        keys[(category, GALLERIES[1])] = _high_first(score, image_id)
    elif gt_label == 1:
        keys[(category, GALLERIES[2])] = _low_first(score, image_id)
    return keys


class Present(beam.DoFn):
    """(ImageElement, Prediction) → GalleryItem, and an OverlayFile when `write_overlays` asks for
    one; `split_presentation` separates them (one output, not tagged ones: see `routing`).

    A gallery overlay is drawn only for an image that enters the running top `gallery_size` of
    one of its galleries within its bundle; the others carry an empty overlay. That is exact: an
    image that `gallery_size` earlier images of its bundle outrank is outranked by them in the
    whole run too, so it cannot be in a gallery's final top. So drawing costs O(K log n) per
    bundle and gallery, not one overlay per image.
    """

    def __init__(self, thresholds: Mapping[str, tuple[float, float]] | None, write_overlays: str,
                 overlay_max_side: int, gallery_size: int) -> None:
        if write_overlays not in OVERLAY_MODES:
            raise ValueError(f"write_overlays must be one of {OVERLAY_MODES}, got {write_overlays!r}")
        self.thresholds = dict(thresholds or {})
        self.write_overlays, self.overlay_max_side, self.gallery_size = write_overlays, overlay_max_side, gallery_size
        self._tops: dict[tuple, list] = {}

    def start_bundle(self) -> None:
        self._tops = {}

    def _enters_a_gallery(self, keys: dict[tuple, tuple]) -> bool:
        """Offer the keys to the bundle's running tops (min-heaps of the best `gallery_size`)."""
        entered = False
        for gallery, key in keys.items():
            top = self._tops.setdefault(gallery, [])
            if len(top) < self.gallery_size:
                heapq.heappush(top, key)
                entered = True
            elif self.gallery_size and key > top[0]:
                heapq.heapreplace(top, key)
                entered = True
        return entered

    def process(self, pair: tuple) -> Iterator[Any]:
        element, prediction = pair
        mask, _, image_threshold = judged_mask(element.category, prediction, self.thresholds)
        label = decide(prediction.image_score, image_threshold)
        gt = known_ground_truth(element.gt_mask, element.label, mask.shape)
        text = caption(element.category, element.source_uri, prediction.image_score, image_threshold, label)

        def draw(max_side: int) -> bytes:
            return render_overlay(element.image, prediction.final_map, mask, gt, text, max_side)

        if self.write_overlays == "all" or (self.write_overlays == "ng" and label == NG):
            yield OverlayFile(element.image_id, overlay_path(element.category, element.image_id),
                              draw(self.overlay_max_side))
        keys = gallery_keys(element.category, element.image_id, float(prediction.image_score), element.label)
        yield GalleryItem(element.category, element.image_id, element.source_uri, float(prediction.image_score),
                          image_threshold, label, element.label, bool(prediction.sam_used), len(prediction.prompts),
                          draw(GALLERY_SIDE) if self._enters_a_gallery(keys) else b"")


def split_presentation(presented: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
    """`Present`'s output → (GalleryItems, OverlayFiles)."""
    return of_type(presented, GalleryItem, "GalleryItems"), of_type(presented, OverlayFile, "OverlayFiles")


COUNTS = ("images", "ng", "ok", "sam_used", "normal", "anomalous", "unlabelled", "false_alarms", "misses")


class CountsFn(beam.CombineFn):
    """GalleryItems of one category → {name: count for COUNTS}: false_alarms are normal images
    judged NG, misses anomalous images judged OK."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, counts: collections.Counter, item: GalleryItem) -> collections.Counter:
        ng = item.pred_label == NG
        counts.update({"images": 1, "ng": int(ng), "ok": int(not ng), "sam_used": int(item.sam_used),
                       "normal": int(item.gt_label == 0), "anomalous": int(item.gt_label == 1),
                       "unlabelled": int(item.gt_label is None),
                       "false_alarms": int(item.gt_label == 0 and ng), "misses": int(item.gt_label == 1 and not ng)})
        return counts

    def merge_accumulators(self, accumulators: Iterable[collections.Counter]) -> collections.Counter:
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts: collections.Counter) -> dict[str, int]:
        return {name: int(counts.get(name, 0)) for name in COUNTS}


def _score_key(item: GalleryItem) -> tuple[float, str]:
    return _high_first(item.image_score, item.image_id)


def _low_score_key(item: GalleryItem) -> tuple[float, str]:
    return _low_first(item.image_score, item.image_id)


def _failure_key(row: dict) -> tuple[str, str, str]:
    return row["source_uri"], row["image_id"], row["stage"]


def write_report_data(parts: list[tuple[str, Any]], url: str) -> str:
    """Gathered (kind, value) aggregates → the report-data.json document at `url`."""
    document: dict[str, Any] = {"categories": {}, "galleries": {}, "failures": {"by_type": {}, "samples": []},
                                "skipped_scored": {}, "listing": {"inputs": 0, "units": 0, "skipped": {}}}
    for kind, value in parts:
        if kind == "counts":
            document["categories"][value[0]] = value[1]
        elif kind in GALLERIES:
            category, items = value
            document["galleries"].setdefault(category, {})[kind] = [item.to_json() for item in items]
        elif kind == "failure_type":
            document["failures"]["by_type"][value[0]] = value[1]
        elif kind == "listing":
            listing = document["listing"]
            listing["inputs"] += 1
            listing["units"] += value.units
            for reason, count in value.skipped.items():
                listing["skipped"][reason] = listing["skipped"].get(reason, 0) + count
        elif kind == "skipped_scored":
            document["skipped_scored"][value[0]] = value[1]
        elif kind == "failure_samples":
            document["failures"]["samples"] = sorted(value, key=_failure_key)
    document["categories"] = dict(sorted(document["categories"].items()))
    document["galleries"] = dict(sorted(document["galleries"].items()))
    document["failures"]["by_type"] = dict(sorted(document["failures"]["by_type"].items()))
    document["skipped_scored"] = dict(sorted(document["skipped_scored"].items()))
    document["listing"]["skipped"] = dict(sorted(document["listing"]["skipped"].items()))
    with fsspec.open(url, "w", encoding="utf-8") as handle:
        json.dump(document, handle, sort_keys=True)
    return url


class RunAggregates(beam.PTransform):
    """(GalleryItems, failure rows, SkippedScored, ListingNotes) → `<run_dir>/report-data.json`
    (module docstring, plus per category the images skipped as already scored, and what listing
    the inputs found: units and files left out on purpose, by reason); outputs its URL."""

    def __init__(self, url: str, top_k: int) -> None:
        super().__init__()
        self.url, self.top_k = url, top_k

    def expand(self, inputs: tuple[beam.PCollection, ...]) -> beam.PCollection:
        items, failures, skipped, notes = inputs
        k = self.top_k
        by_category = items | "ByCategory" >> beam.Map(lambda item: (item.category, item))
        normal = by_category | "Normal" >> beam.Filter(lambda kv: kv[1].gt_label == 0)
        anomalous = by_category | "Anomalous" >> beam.Filter(lambda kv: kv[1].gt_label == 1)
        parts = [
            by_category | "Counts" >> beam.CombinePerKey(CountsFn()) | "TagCounts" >> beam.Map(lambda kv: ("counts", kv)),
            by_category | "TopAll" >> beam.combiners.Top.PerKey(k, key=_score_key)
            | "TagTop" >> beam.Map(lambda kv: ("most_anomalous", kv)),
            normal | "TopNormal" >> beam.combiners.Top.PerKey(k, key=_score_key)
            | "TagNormal" >> beam.Map(lambda kv: ("highest_normal", kv)),
            anomalous | "LowAnomalous" >> beam.combiners.Top.PerKey(k, key=_low_score_key)
            | "TagAnomalous" >> beam.Map(lambda kv: ("lowest_anomalous", kv)),
            failures | "FailureTypes" >> beam.Map(lambda row: row["error_type"]) | "CountTypes" >> beam.combiners.Count.PerElement()
            | "TagTypes" >> beam.Map(lambda kv: ("failure_type", kv)),
            notes | "Listings" >> beam.Map(lambda note: ("listing", note)),
            skipped | "SkippedByCategory" >> beam.Map(lambda s: s.category) | "CountSkipped" >> beam.combiners.Count.PerElement()
            | "TagSkipped" >> beam.Map(lambda kv: ("skipped_scored", kv)),
            failures | "FailureSamples" >> beam.combiners.Top.Of(FAILURE_SAMPLES, key=_failure_key, reverse=True)
            | "TagSamples" >> beam.Map(lambda rows: ("failure_samples", rows)),
        ]
        return (
            tuple(parts)
            | "AllAggregates" >> beam.Flatten()
            | "Gather" >> beam.combiners.ToList()
            | "WriteReportData" >> beam.Map(write_report_data, self.url)
        )
