"""`python -m pipeline.run`: score a batch of images with ClipSAM on any Beam runner.

    python -m pipeline.run --input=gs://line-scans/2026-11-21/ --output=gs://qa/clipsam/ \\
        --model_store=gs://qa-models/clipsam/ --profile=clipsam-vitl-sam-h --runner=DataflowRunner ...

Order of work: validate flags → read the model manifest → list inputs → build the graph →
run → print a summary (and write report.html). Everything before "run" happens on the launching
machine and fails fast with a message naming the bad flag, store or input.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from model_store.errors import ModelStoreError
from model_store.store import ModelStore, join_url
from inputs.layouts import KIND_IMAGE, list_inputs
from transforms.progress import NAMESPACE
from transforms.stages import ModelSpec

from .graph import GraphSettings, build_graph, default_num_shards
from .logs import show_progress
from .options import ClipSAMOptions, OptionError, mmr_overrides, validate
from .summary import RunSummary, summarize_run

LOG = logging.getLogger("clipsam.run")


@dataclass
class PreparedRun:
    """What the launcher resolved before building the graph."""

    options: ClipSAMOptions
    beam_options: PipelineOptions
    settings: GraphSettings
    units: list


def prepare(argv: list[str]) -> PreparedRun:
    """Parse and check everything that can be checked before any work is scheduled."""
    beam_options = PipelineOptions(argv)
    options = beam_options.view_as(ClipSAMOptions)
    validate(options)
    try:
        manifest = ModelStore(options.model_store).read_manifest(options.profile)
    except ModelStoreError as exc:
        raise OptionError(f"--model_store/--profile: {exc}") from exc
    units = list_all_inputs(options.input, options.layout, options.category)
    has_truth = any(getattr(u, "label", None) is not None for u in units)
    evaluate = options.evaluate == "on" or (options.evaluate == "auto" and has_truth)
    device = None if options.device == "auto" else options.device
    settings = GraphSettings(
        run_dir=join_url(options.output, options.run_id),
        spec=ModelSpec(options.model_store, options.profile, device, mmr_overrides(options) or None),
        digests=manifest.digests(),
        run_id=options.run_id,
        batch_size=options.batch_size,
        num_shards=options.num_shards or default_num_shards(len(units)),
        store_maps=options.store_maps,
        evaluate=evaluate,
        eval_bins=options.eval_bins,
        pixel_limit=options.pixel_limit,
        model_copies=options.model_copies,
    )
    return PreparedRun(options, beam_options, settings, units)


def list_all_inputs(inputs: str, layout: str, category: str | None) -> list:
    """Units of every comma-separated input URL (each with its own layout detection), sorted."""
    units = set()
    for url in filter(None, (part.strip() for part in inputs.split(","))):
        try:
            units.update(list_inputs(url, layout=layout, category=category))
        except (ValueError, OSError) as exc:
            raise OptionError(f"--input: {exc}") from exc
    return sorted(units)


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


def run(argv: list[str]) -> RunSummary | None:
    prepared = prepare(argv)
    settings = prepared.settings
    # Without --runner, use the local batch engine directly: Beam's DirectRunner would first try to
    # download the Prism runner binary, which hangs or fails on machines without internet.
    runner = prepared.beam_options.view_as(StandardOptions).runner or "FnApiRunner"
    LOG.info(
        "run %s: %d inputs from %s, profile %s, runner %s, output %s",
        settings.run_id, len(prepared.units), prepared.options.input, settings.spec.profile, runner, settings.run_dir,
    )
    pipeline = beam.Pipeline(runner=runner, options=prepared.beam_options)
    build_graph(pipeline, prepared.units, settings)
    if prepared.options.graph_only:
        print(json.dumps({"runner": runner, "inputs": len(prepared.units), "transforms": graph_description(pipeline)}, indent=2))
        return None
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    if hasattr(result, "client"):  # DaskRunner leaves its dask.distributed client open
        result.client.close()
    summary = summarize_run(
        settings.run_dir,
        expected_uris={u.uri for u in prepared.units if u.kind == KIND_IMAGE},
        counters=beam_counters(result),
        elapsed_s=time.monotonic() - start,
        report=prepared.options.report == "on",
    )
    print(summary.text())
    return summary


def main(argv: list[str] | None = None) -> int:
    show_progress()
    try:
        summary = run(sys.argv[1:] if argv is None else argv)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if summary is not None and summary.missing else 0


if __name__ == "__main__":
    sys.exit(main())
