"""`python -m pipeline.run`: score a batch of images with ClipSAM on any Beam runner.

    python -m pipeline.run --input=gs://line-scans/2026-11-21/ --output=gs://qa/clipsam/ \\
        --model_store=gs://qa-models/clipsam/ --profile=clipsam-vitl-sam-h --runner=DataflowRunner ...

Order of work: check every flag (unknown ones too) and the runner → read the model manifest →
probe that --output is writable → list inputs → build the graph → withdraw an earlier
`_SUCCESS.json` → run → summary from the run's aggregates → with --table, one commit per results
table (`pipeline.table`) → report.html → `_SUCCESS.json`, last (`run_folder`).
Everything before "run" happens on the launching machine and fails fast (exit 2) with one line
naming the bad flag, store or input.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from clipsam.config import ClipSAMConfig
from clipsam.thresholds import Thresholds
from inputs.decode import JpegDraft
from inputs.layouts import InputSpec, check_input
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.preflight import check_profile
from model_store.random_store import is_random
from model_store.store import join_url
from transforms.progress import NAMESPACE
from transforms.records import PIPELINE_VERSION
from transforms.stages import ModelSpec

from . import run_folder
from .flags import check_known_flags, check_runner, check_service_locations, help_parser
from .graph import GraphSettings, build_graph
from .logs import show_progress
from .options import ClipSAMOptions, OptionError, config_overrides, validate
from .report import write_report
from .table import RunLayout, TableError, commit_run, files_by_kind, iter_scored_keys, table_layout
from .summary import RunSummary, summarize_run
from .threshold import calibrate, check_thresholds_model, read_thresholds, summary_text, write_thresholds

LOCAL_RUNNER = "FnApiRunner"

SAM_INPUT_SIDE = 1024  # segment_anything's ViT-H/L/B image encoders
LOG = logging.getLogger("clipsam.run")


@dataclass
class PreparedRun:
    """What the launcher resolved before building the graph."""

    options: ClipSAMOptions
    beam_options: PipelineOptions
    settings: GraphSettings
    inputs: list[InputSpec]  # the --input URLs, listed inside the pipeline
    argv: list[str]  # the command line, for the report
    table: Optional[RunLayout] = None  # --table: where this run's files go in the results table


def prepare(argv: list[str], overrides: dict | None = None) -> PreparedRun:
    """Parse and check everything that can be checked before any work is scheduled.
    `overrides`: option values set after parsing, before validation (the calibration run)."""
    check_known_flags(argv)
    beam_options = PipelineOptions(argv)
    options = beam_options.view_as(ClipSAMOptions)
    for name, value in (overrides or {}).items():
        setattr(options, name, value)
    validate(options)
    check_runner(runner_name(beam_options))
    check_service_locations(beam_options, runner_name(beam_options), options.graph_only)
    try:
        manifest = check_profile(options.model_store, options.profile)
    except ModelStoreError as exc:
        raise OptionError(f"--model_store/--profile: {exc}") from None
    thresholds, thresholds_digest = None, None
    if options.thresholds:
        loaded = read_thresholds(options.thresholds)
        if not check_thresholds_model(loaded, options.thresholds, options.profile, manifest.digests(),
                                      options.allow_threshold_mismatch):
            LOG.warning("--thresholds %s was calibrated for other model digests (profile %s); applying it anyway "
                        "(--allow_threshold_mismatch)", options.thresholds, loaded.profile)
        thresholds = calibrated_thresholds(loaded)
        thresholds_digest = loaded.digest()
    run_dir = join_url(options.output, options.run_id)
    if not options.graph_only:
        try:
            run_folder.probe_writable(run_dir)
        except Exception as exc:  # fsspec back ends raise many types (PermissionError, HttpError, ...)
            raise OptionError(f"--output: cannot write to {options.output}: {type(exc).__name__}: {exc}") from None
    inputs = input_specs(options.input, options.layout, options.category, options.split, check=not options.graph_only)
    device = None if options.device == "auto" else options.device
    settings = GraphSettings(
        run_dir=run_dir,
        spec=ModelSpec(options.model_store, options.profile, device, config_overrides(options) or None,
                       torch_threads(options.torch_threads, beam_options)),
        digests=manifest.digests(),
        run_id=options.run_id,
        batch_size=options.batch_size,
        num_shards=options.num_shards,
        store_maps=options.store_maps,
        evaluate=options.evaluate != "off",
        metrics_when_unlabelled=options.evaluate == "on",
        eval_bins=options.eval_bins,
        pixel_limit=options.pixel_limit,
        model_copies=options.model_copies,
        random_weights=is_random(manifest),
        thresholds=thresholds,
        thresholds_digest=thresholds_digest,
        write_overlays=options.write_overlays,
        overlay_max_side=options.overlay_max_side,
        gallery_size=options.gallery_size if options.report == "on" else 0,  # galleries are for the report
        spread_images=spreads_images(options.spread_images, beam_options),
        jpeg_draft=jpeg_draft(manifest, config_overrides(options)) if options.jpeg_draft == "on" else None,
    )
    table = None
    if options.table:
        try:
            table = table_layout(options.table, options.scan_date, options.run_id)
        except TableError as exc:
            raise OptionError(f"--table: {exc}") from None
    return PreparedRun(options, beam_options, with_table(settings, options, table), inputs, list(argv), table)


def with_table(settings: GraphSettings, options: ClipSAMOptions, table: Optional[RunLayout]) -> GraphSettings:
    """`settings` writing records, failures and metrics into the results table's night (`--table`),
    and with `--skip_scored`, skipping what the table holds for these digests (other nights)."""
    if table is None:
        return settings
    skip = None
    if options.skip_scored:
        skip = functools.partial(iter_scored_keys, options.table, settings.digests, settings.thresholds_digest,
                                 excluding_scan_date=table.scan_date)
    return dataclasses.replace(settings, records_prefix=table.prefixes["records"],
                               failures_prefix=table.prefixes["failures"], metrics_parquet=table.metrics_file,
                               skip_keys=skip)


def calibrated_thresholds(thresholds: Thresholds) -> dict[str, tuple[float, float]]:
    """category → (pixel threshold, image threshold) for the categories the file calibrates; the
    others fall back to the profile default in the records."""
    return {name: (entry.pixel_threshold, entry.image_threshold)
            for name in thresholds.categories if (entry := thresholds.calibrated(name)) is not None}


def torch_threads(requested: int, beam_options: PipelineOptions) -> int:
    """The torch CPU threads each SDK process uses (`ModelSpec.threads`; 0: torch's default).
    Auto (-1): one process per core must not each start one thread per core."""
    if requested >= 0:
        return requested
    if runner_name(beam_options) == "DataflowRunner":
        return 1
    direct = beam_options.get_all_options()
    if direct.get("direct_running_mode") == "multi_processing" and (direct.get("direct_num_workers") or 0) > 1:
        return max(1, (os.cpu_count() or 1) // direct["direct_num_workers"])
    return 0


def jpeg_draft(manifest: Manifest, overrides: Optional[dict] = None) -> JpegDraft:
    """How few pixels of a JPEG a profile's models need (`inputs.decode.JpegDraft`, --jpeg_draft):
    CLIP's and SAM's input sides, and the longest frame that is not tiled (`--tile`: auto tiles
    frames longer than the profile's multiple of the CLIP input, off none, <px> nearly all, so
    then nothing is reduced). `overrides`: ClipSAMConfig sections changed by flags."""
    config = ClipSAMConfig.from_dict(manifest.clipsam_config).replace(**(overrides or {}))
    sam = manifest.sam_config
    sam_side = int(sam["image_size"]) if sam.get("variant") == "custom" else SAM_INPUT_SIDE
    longest = {"auto": int(config.tile.auto_factor * config.clip.input_size), "off": None, "on": 0}[config.tile.mode]
    return JpegDraft(config.clip.input_size, sam_side, longest)


def spreads_images(requested: str, beam_options: PipelineOptions) -> bool:
    """--spread_images: auto spreads decoded images over workers except on Beam's local runner in
    one process (in memory or threads), where there is no other worker to spread them to."""
    if requested != "auto":
        return requested == "on"
    mode = beam_options.get_all_options().get("direct_running_mode") or "in_memory"
    return not (runner_name(beam_options) in (LOCAL_RUNNER, "DirectRunner") and mode != "multi_processing")


def input_specs(inputs: str, layout: str, category: str | None, split: str, check: bool = True) -> list[InputSpec]:
    """One InputSpec per comma-separated --input URL, each checked cheaply (`check_input`: it
    exists; nothing is listed here, the pipeline lists); OptionError naming --input otherwise.
    `check=False` (--graph_only, which must work offline) skips the check."""
    specs = []
    for url in filter(None, (part.strip() for part in inputs.split(","))):
        spec = InputSpec(url, layout, category, split)
        try:
            if check:
                check_input(spec)
        except (ValueError, OSError) as exc:
            raise OptionError(f"--input: {exc}") from None
        specs.append(spec)
    return sorted(set(specs), key=lambda s: s.url)


def graph_description(pipeline: beam.Pipeline) -> list[str]:
    """Names of the top-level transforms of a built pipeline, from its runner API proto."""
    proto = pipeline.to_runner_api()
    root = proto.components.transforms[proto.root_transform_ids[0]]
    return [proto.components.transforms[t].unique_name for t in root.subtransforms]


def beam_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's `clipsam` counters summed over steps ({} where the runner reports none)."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (NotImplementedError, KeyError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def runner_name(beam_options: PipelineOptions) -> str:
    """--runner, or the local batch engine: Beam's default DirectRunner would first try to download
    the Prism runner binary, which hangs or fails on machines without internet."""
    return beam_options.view_as(StandardOptions).runner or LOCAL_RUNNER


def run(argv: list[str]) -> RunSummary | None:
    prepared = prepare(argv)
    if prepared.options.calibrate_on:
        return run_with_calibration(argv, prepared)
    return execute(prepared)


CALIBRATION = "calibration"
THRESHOLDS_FILE = "thresholds.json"


def run_with_calibration(argv: list[str], prepared: PreparedRun) -> RunSummary | None:
    """--calibrate_on: score those images as normal (all of them, with maps; of an MVTec-AD or
    VisA root, its `train` split, which holds normal images only) into
    `<output>/<run_id>/calibration/`, write `<output>/<run_id>/thresholds.json` from them
    (`pipeline.threshold.calibrate`, q = 0.999, at least 10 normal images per category), then
    score --input with it. Both runs are checked before either starts."""
    options = prepared.options
    run_dir = prepared.settings.run_dir
    calibration = prepare(argv, {"input": options.calibrate_on, "calibrate_on": None, "output": run_dir,
                                 "run_id": CALIBRATION, "layout": "auto", "split": "train", "store_maps": True, "evaluate": "off",
                                 "write_overlays": "none", "table": None, "scan_date": None, "skip_scored": False})
    if options.graph_only:
        execute(calibration)
        return execute(prepared)
    run_folder.withdraw_success(run_dir)
    LOG.info("calibrating on %s (%d inputs, all taken as normal) into %s",
             options.calibrate_on, len(calibration.inputs), calibration.settings.run_dir)
    calibration_summary = execute(calibration)
    if calibration_summary is not None and calibration_summary.lost:
        raise OptionError(f"--calibrate_on: the calibration run lost {calibration_summary.lost} inputs; "
                          "not scoring --input with thresholds from an incomplete run")
    thresholds = calibrate(calibration.settings.run_dir, all_normal=True)
    url = join_url(run_dir, THRESHOLDS_FILE)
    write_thresholds(url, thresholds)
    LOG.info("wrote %s (sha256 %s):\n%s", url, thresholds.digest(), summary_text(thresholds))
    settings = with_table(dataclasses.replace(prepared.settings, thresholds=calibrated_thresholds(thresholds),
                                              thresholds_digest=thresholds.digest()), options, prepared.table)
    return execute(dataclasses.replace(prepared, settings=settings), thresholds_url=url, extra_files=[url])


def execute(prepared: PreparedRun, thresholds_url: str | None = None, extra_files: list[str] | None = None
            ) -> RunSummary | None:
    """Build and run the graph of a prepared run, then write its summary, report and marker
    (`extra_files`: more files of the run folder that the marker lists)."""
    settings = prepared.settings
    thresholds_url = thresholds_url or prepared.options.thresholds
    runner = runner_name(prepared.beam_options)
    LOG.info(
        "run %s: %d inputs from %s, profile %s, runner %s, output %s",
        settings.run_id, len(prepared.inputs), prepared.options.input, settings.spec.profile, runner, settings.run_dir,
    )
    if settings.random_weights:
        LOG.warning("profile %s at %s holds RANDOM weights (make-random): scores mean nothing",
                    settings.spec.profile, prepared.options.model_store)
    pipeline = beam.Pipeline(runner=runner, options=prepared.beam_options)
    build_graph(pipeline, prepared.inputs, settings)
    if prepared.options.graph_only:
        print(json.dumps({"runner": runner, "inputs": len(prepared.inputs), "transforms": graph_description(pipeline)}, indent=2))
        return None
    run_folder.withdraw_success(settings.run_dir)
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    if hasattr(result, "client"):  # DaskRunner leaves its dask.distributed client open
        result.client.close()
    files = run_folder.written_files(settings.run_dir)
    summary = summarize_run(
        settings.run_dir,
        files=files,
        counters=beam_counters(result),
        elapsed_s=time.monotonic() - start,
        random_weights=settings.random_weights,
        settings=report_settings(prepared, runner),
    )
    if thresholds_url:
        summary.thresholds = f"{thresholds_url} (sha256 {settings.thresholds_digest})"
        summary.default_threshold_categories = sorted(set(summary.categories) - set(settings.thresholds or {}))
    if prepared.table is not None:
        summary.files["records"] = f"{prepared.table.prefixes['records']}-*.parquet"
        summary.files["failures"] = f"{prepared.table.prefixes['failures']}-*.parquet"
        summary.table = commit_to_table(prepared, files)
    if prepared.options.report == "on":
        summary.files["report"] = write_report(summary)
    marker = run_folder.finish(settings.run_dir, settings.run_id,
                               files + (extra_files or []) + [v for k, v in summary.files.items() if k == "report"])
    summary.files["success"] = marker
    print(summary.text())
    return summary


def commit_to_table(prepared: PreparedRun, files: list[str]) -> str:
    """Add this run's files to the results table as night --scan_date, one commit per table
    (`pipeline.table.commit_run`); returns a line for the summary."""
    table, settings = prepared.table, prepared.settings
    metadata = {"run_id": settings.run_id, "model_profile": settings.spec.profile, "model_digests": settings.digests,
                "thresholds_digest": settings.thresholds_digest, "pipeline_version": PIPELINE_VERSION}
    versions = commit_run(table.table_url, table.scan_date, files_by_kind(table, files), metadata)
    LOG.info("committed night %s to %s: %s", table.scan_date, table.table_url, versions)
    return f"{table.table_url}, night {table.scan_date}, versions " + ", ".join(
        f"{kind} {'unchanged' if version is None else version}" for kind, version in sorted(versions.items()))


def report_settings(prepared: PreparedRun, runner: str) -> dict[str, str]:
    """What the report shows under "Run": the inputs, store, profile, digests and every flag given."""
    options, settings = prepared.options, prepared.settings
    return {
        "input": options.input,
        "model store": f"{options.model_store} (profile {settings.spec.profile})",
        "model digests": ", ".join(f"{role} {digest[:12]}" for role, digest in sorted(settings.digests.items())),
        "runner": runner,
        "flags": " ".join(prepared.argv),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        help_parser("python -m pipeline.run (or ./run_pipeline.sh)", __doc__).print_help()
        return 0
    show_progress()
    try:
        summary = run(argv)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TableError as exc:
        print(f"error: the run's files are written but not committed to --table (rerun the night): {exc}",
              file=sys.stderr)
        return 1
    return 1 if summary is not None and summary.lost else 0


if __name__ == "__main__":
    sys.exit(main())
