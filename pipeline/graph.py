"""The job graph (DESIGN §3): read → stage 1 → stage 2 → records / failures / metrics.

    units ─► ReadImages ─┬─► RunInference(CLIP+UMCI) ─► RunInference(SAM+MMR) ─┬─► records-*.parquet
                         │                                                      ├─► metrics.json/.parquet, curves.json
                         │                                                      ├─► overlays/<category>/<image_id>.jpg
                         └─► failures (read, stage 1, stage 2) ─┬─────────────────┼─► failures-*.parquet
                                                                 └─► aggregates ◄─┘─► report-data.json

Every element that enters the graph leaves it as exactly one record or one failure row; listed
inputs that a runner loses on the way become `Lost` failure rows (`transforms.accounting`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from model_store.store import join_url
from inputs.decode import JpegDraft
from transforms.evaluate import EvaluatePerCategory, eval_items
from transforms.read import FAILURES, IMAGES, NOTES, PRODUCED, ReadImages
from transforms.records import FAILURE_SCHEMA, RECORD_SCHEMA, ToRecord
from transforms.routing import split_failures
from transforms.stages import CountResults, ModelSpec, Scored, Stage1Handler, Stage2Handler, Stage2Input, batch_slots
from transforms.accounting import LostRows
from transforms.skip_scored import SkipScored, split_skipped
from transforms.presentation import REPORT_DATA, Present, RunAggregates, split_presentation
from transforms.write import ListWrittenFiles, WriteFileShards, WriteParquetShards, shards_for

LOG = logging.getLogger(__name__)
IMAGES_PER_SHARD = 5000


@dataclass(frozen=True)
class GraphSettings:
    """Everything the graph needs, resolved from the options before construction."""

    run_dir: str
    spec: ModelSpec
    digests: dict[str, str]
    run_id: str
    batch_size: int
    num_shards: int  # record files; 0: one per IMAGES_PER_SHARD records, counted in the pipeline
    store_maps: bool
    evaluate: bool  # add the evaluation branch (metrics for the images with ground truth)
    eval_bins: int
    pixel_limit: int
    model_copies: int
    metrics_when_unlabelled: bool = False  # --eval=on: write metrics files even when no image has ground truth
    random_weights: bool = False  # the store holds make-random weights: scores mean nothing
    thresholds: Optional[dict[str, tuple[float, float]]] = None  # category → (pixel, image), from --thresholds
    thresholds_digest: Optional[str] = None  # sha256 of that file's canonical JSON
    write_overlays: str = "ng"  # which images get an overlay file: ng | all | none
    overlay_max_side: int = 512  # long side of each overlay panel, pixels
    gallery_size: int = 8  # images per report gallery and category
    spread_images: bool = True  # Reshuffle decoded images over workers (`transforms.read.ReadImages`)
    jpeg_draft: Optional[JpegDraft] = None  # decode JPEGs at reduced scale where the models need fewer pixels
    # --table: where records, failures and metrics go instead of the run folder (`pipeline.table.table_layout`)
    records_prefix: Optional[str] = None
    failures_prefix: Optional[str] = None
    metrics_parquet: Optional[str] = None
    skip_keys: Optional[Callable[[], Any]] = None  # --skip_scored: reads the table's content hashes to skip


def _handler_kwargs(settings: GraphSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"min_batch_size": 1, "max_batch_size": settings.batch_size,
                              "element_size_fn": batch_slots}
    if settings.model_copies:
        kwargs["model_copies"] = settings.model_copies
    return kwargs


def build_graph(pipeline: beam.Pipeline, source: list, settings: GraphSettings,
                tap: Optional[beam.PTransform] = None) -> dict[str, beam.PCollection]:
    """Add the whole job to `pipeline`; returns the main PCollections (for tests and metrics).
    `source`: the inputs (`InputSpec`s, listed in the pipeline) or units listed already.
    `tap` (tests only): a transform applied to the scored images before anything is written,
    e.g. one that drops an image, to check that accounting turns it into a Lost row."""
    read = pipeline | "ReadImages" >> ReadImages(source, pixel_limit=settings.pixel_limit,
                                                 spread_images=settings.spread_images, jpeg_draft=settings.jpeg_draft)
    images, read_failures = read[IMAGES], read[FAILURES]
    skipped = pipeline | "NoneSkipped" >> beam.Create([])
    if settings.skip_keys is not None:
        images, skipped = split_skipped(images | "SkipScored" >> SkipScored(settings.skip_keys))

    stage1, stage1_failures = split_failures(
        images
        | "Stage1_CLIP_UMCI" >> RunInference(Stage1Handler(settings.spec, **_handler_kwargs(settings)))
        | "CountStage1" >> beam.ParDo(CountResults("stage1", Stage2Input)),
        "Stage1",
    )
    stage2, stage2_failures = split_failures(
        stage1
        | "Stage2_SAM_MMR" >> RunInference(Stage2Handler(settings.spec, **_handler_kwargs(settings)))
        | "CountStage2" >> beam.ParDo(CountResults("stage2", Scored)),
        "Stage2",
    )
    if tap is not None:
        stage2 = stage2 | "Tap" >> tap
    records = stage2 | "ToRecord" >> beam.ParDo(
        ToRecord(run_id=settings.run_id, profile=settings.spec.profile, digests=settings.digests, store_maps=settings.store_maps,
                 random_weights=settings.random_weights, thresholds=settings.thresholds,
                 thresholds_digest=settings.thresholds_digest)
    )
    failures = (
        (read_failures, stage1_failures, stage2_failures)
        | "AllFailures" >> beam.Flatten()
        | "FailureRows" >> beam.Map(lambda f, run_id: f.to_row(run_id), run_id=settings.run_id)
    )
    skipped_rows = skipped | "SkippedRows" >> beam.Map(lambda s: {"image_id": s.image_id})
    lost = (read[PRODUCED], records, failures, skipped_rows) | "Accounting" >> LostRows(settings.run_id)
    failures = (failures, lost) | "FailuresAndLost" >> beam.Flatten()
    gallery, overlays = split_presentation(stage2 | "Present" >> beam.ParDo(
        Present(settings.thresholds, settings.write_overlays, settings.overlay_max_side, settings.gallery_size)))
    shards = settings.num_shards or shards_for(records, IMAGES_PER_SHARD)
    files = [
        records | "WriteRecords" >> WriteParquetShards(settings.records_prefix or join_url(settings.run_dir, "records"),
                                                       RECORD_SCHEMA, shards),
        failures | "WriteFailures" >> WriteParquetShards(settings.failures_prefix or join_url(settings.run_dir, "failures"),
                                                         FAILURE_SCHEMA, 1),
        overlays | "WriteOverlays" >> WriteFileShards(settings.run_dir, shards),
        (gallery, failures, skipped, read[NOTES]) | "RunAggregates" >> RunAggregates(join_url(settings.run_dir, REPORT_DATA),
                                                                        settings.gallery_size),
    ]
    if settings.evaluate:
        files.append(
            stage2
            | "EvalItems" >> beam.FlatMap(eval_items)
            | "Evaluate" >> EvaluatePerCategory(settings.run_dir, bins=settings.eval_bins, curves=True,
                                                parquet_url=settings.metrics_parquet,
                                                write_empty=settings.metrics_when_unlabelled)
        )
    listing = tuple(files) | "AllWrittenFiles" >> beam.Flatten() | "ListWrittenFiles" >> ListWrittenFiles(settings.run_dir, settings.run_id)
    return {"images": images, "records": records, "failures": failures, "listing": listing}
