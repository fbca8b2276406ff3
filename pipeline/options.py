"""The job's flags, as a Beam `PipelineOptions` subclass, and their validation.

Every flag is checked before any work starts (before listing inputs or loading models): a
nightly job that dies an hour in because of a typo in `--mask_threshold` costs a night.
Errors name the flag.
"""
from __future__ import annotations

import datetime as dt
import os
import re

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.presentation import OVERLAY_MODES

from .table import TableError, parse_scan_date, today_utc

LAYOUTS = ("auto", "folder", "mvtec", "visa", "tar")
DEVICES = ("auto", "cpu", "cuda")


class OptionError(ValueError):
    """An invalid flag value; the message names the flag."""


class ClipSAMOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 (Beam's argparse wrapper)
        add = parser.add_argument
        add("--input", help="(required) images to score: a folder/glob of images, tar shards, an MVTec-AD root or a VisA root "
            "(any fsspec URL; several URLs separated by commas)")
        add("--output", help="(required) output root URL; results go to <output>/<run_id>/")
        add("--model_store", help="(required) model store root URL (see `python -m model_store`)")
        add("--profile", default="tiny", help="model profile in the store (default: tiny)")
        add("--layout", default="auto", choices=LAYOUTS, help="input layout; auto detects MVTec-AD, VisA, tar shards or plain images")
        add("--split", default="test", choices=("test", "train"),
            help="which split of an MVTec-AD or VisA root to score (default test; train holds normal images only)")
        add("--category", default=None, help="category of every image when the layout does not say (default: from the layout, else 'object')")
        add("--mask_threshold", type=float, default=None, help="final-map threshold of the defect mask (default: the profile's τ; 0.5, tiny 0.1)")
        add("--prompt_threshold", type=float, default=None, help="rough-map threshold τ for SAM prompts (default: the profile's; 0.5, tiny 0.1)")
        add("--alpha", type=float, default=None, help="weight of SAM in the final map (default: the profile's; 0.5, tiny 0.3)")
        add("--tile", default="auto",
            help="tiled scoring of large frames (line-scan cameras): auto (default) tiles frames whose long side "
                 "exceeds the profile's multiple of the CLIP input size (2048 px tiny and ViT-B, 2072 px ViT-L), "
                 "off scores every frame whole, <px> tiles every frame larger than one tile with tiles of <px> "
                 "source pixels (the profile's tile: 128 px tiny, native 512/518 px ViT-B/ViT-L). SAM then refines "
                 "each defect in a window of the frame shown at the tiles' magnification (README \"Large frames\")")
        add("--tile_overlap", type=float, default=None,
            help="fraction of a tile's side shared with each neighbour, 0 to 0.9 (default: the profile's, 0.25)")
        add("--jpeg_draft", default="on", choices=("on", "off"),
            help="decode a JPEG at 1/2, 1/4 or 1/8 scale where the models need fewer pixels than it has (an "
                 "untiled image at least twice CLIP's input on each side and twice SAM's on the long side; records, "
                 "maps and masks stay in the full frame, a decode note says so); off: decode every JPEG whole "
                 "(default on)")
        add("--batch_size", type=int, default=8,
            help="maximum images per model batch (default 8); an image over 4 MiP (2048 × 2048) counts as one "
                 "image per started 4 MiP, so large frames batch fewer at a time")
        add("--store_maps", action="store_true", default=False, help="keep the final anomaly map as a PNG (<= 256 px) in each record")
        add("--eval", dest="evaluate", default="auto", choices=("auto", "on", "off"),
            help="per-category metrics: auto = when the layout has ground truth (default)")
        add("--eval_bins", type=int, default=65536, help="histogram bins of the metric accumulators (default 2^16)")
        add("--run_id", default=None, help="name of this run's output folder (default: UTC timestamp); rerunning with the same id rewrites the same files")
        add("--num_shards", type=int, default=0, help="record files to write (default: one per 5,000 images)")
        add("--pixel_limit", type=int, default=64_000_000, help="images with more pixels become 'ImageTooLarge' failures (default 64 MP)")
        add("--device", default="auto", choices=DEVICES, help="where the models run (default: CUDA when available)")
        add("--torch_threads", type=int, default=-1,
            help="torch CPU threads per SDK process; -1 (default): cores / --direct_num_workers for local "
                 "multi-processing, 1 on Dataflow (one SDK process per vCPU), else torch's default; 0: torch's default")
        add("--spread_images", default="auto", choices=("auto", "on", "off"),
            help="reshuffle decoded images over workers so one tar shard's images do not all run where it was read; "
                 "auto: on, except on the local runner in one process")
        add("--model_copies", type=int, default=0,
            help="share this many model copies per machine across SDK processes (0: one per process). Use 1 on GPU workers")
        add("--report", default="on", choices=("on", "off"), help="write report.html next to the records (default on)")
        add("--write_overlays", default="ng", choices=OVERLAY_MODES,
            help="overlay JPEGs (image | heat map | mask and ground-truth contours) under <run>/overlays/<category>/: "
                 "ng = images judged NG (default), all, none")
        add("--overlay_max_side", type=int, default=512,
            help="long side of each of the overlay's three panels, pixels; smaller images keep their size (default 512)")
        add("--gallery_size", type=int, default=8,
            help="images per gallery of the report: most anomalous, highest-scoring normal, lowest-scoring anomalous "
                 "parts per category (default 8)")
        add("--thresholds", default=None,
            help="thresholds file URL (python -m pipeline.threshold): per category the mask and OK/NG thresholds "
                 "(default: the profile's mask threshold for both)")
        add("--allow_threshold_mismatch", action="store_true", default=False,
            help="apply --thresholds even when it was calibrated for other model digests")
        add("--calibrate_on", default=None,
            help="normal (good) images to calibrate on first (every image of a folder or shards; the train split "
                 "of an MVTec-AD or VisA root): scored into <output>/<run_id>/calibration/, "
                 "thresholds written to <output>/<run_id>/thresholds.json, then --input is scored with them")
        add("--table", default=None,
            help="results table URL (Delta Lake, local folder or gs://...): records, failures and metrics of this run "
                 "become night --scan_date of <table>/{records,failures,metrics} in one commit per table; a rerun "
                 "of a night replaces it (python -m pipeline.table, README \"The nightly results table\")")
        add("--scan_date", default=None, help="the night this run is, YYYY-MM-DD (default: today, UTC); with --table")
        add("--skip_scored", action="store_true", default=False,
            help="with --table: leave out every image whose content the table already holds, scored with the same "
                 "model and thresholds digests (other nights only); counted in the summary and report")
        add("--graph_only", action="store_true", default=False,
            help="build and check the job graph, print it, and exit without running (works offline, any runner)")


def absolute_local(url: str) -> str:
    """A local path relative to the caller's working directory → absolute; URLs with a scheme
    (gs://, s3://, file://, memory://, ...) unchanged. Worker processes may start elsewhere."""
    if "://" in url or not url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def default_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def validate(options: ClipSAMOptions) -> None:
    """Raise OptionError for the first invalid flag; fills defaults that depend on others."""
    for flag in ("input", "output", "model_store"):
        if not getattr(options, flag):
            raise OptionError(f"--{flag} is required")
    options.input = ",".join(absolute_local(part.strip()) for part in options.input.split(",") if part.strip())
    options.output = absolute_local(options.output)
    options.model_store = absolute_local(options.model_store)
    if options.thresholds and options.calibrate_on:
        raise OptionError("--thresholds and --calibrate_on exclude each other (--calibrate_on makes the thresholds)")
    if options.thresholds:
        options.thresholds = absolute_local(options.thresholds)
    if options.calibrate_on:
        options.calibrate_on = ",".join(absolute_local(p.strip()) for p in options.calibrate_on.split(",") if p.strip())
    for flag in ("mask_threshold", "prompt_threshold", "alpha"):
        value = getattr(options, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            raise OptionError(f"--{flag} must be in [0, 1], got {value}")
    if options.tile not in ("auto", "off") and not (options.tile.isdigit() and int(options.tile) >= 32):
        raise OptionError(f"--tile must be auto, off or a tile side in pixels (at least 32), got {options.tile!r}")
    if options.tile_overlap is not None and not 0.0 <= options.tile_overlap <= 0.9:
        raise OptionError(f"--tile_overlap must be in [0, 0.9], got {options.tile_overlap}")
    if options.batch_size < 1:
        raise OptionError(f"--batch_size must be at least 1, got {options.batch_size}")
    if options.num_shards < 0:
        raise OptionError(f"--num_shards must be >= 0, got {options.num_shards}")
    if options.eval_bins < 2:
        raise OptionError(f"--eval_bins must be at least 2, got {options.eval_bins}")
    if options.pixel_limit < 32 * 32:
        raise OptionError(f"--pixel_limit must be at least 1024, got {options.pixel_limit}")
    if options.overlay_max_side < 16:
        raise OptionError(f"--overlay_max_side must be at least 16, got {options.overlay_max_side}")
    if not 0 <= options.gallery_size <= 100:
        raise OptionError(f"--gallery_size must be in [0, 100], got {options.gallery_size}")
    if options.torch_threads < -1:
        raise OptionError(f"--torch_threads must be -1 (auto), 0 (torch's default) or more, got {options.torch_threads}")
    if options.model_copies < 0:
        raise OptionError(f"--model_copies must be >= 0, got {options.model_copies}")
    if options.table:
        options.table = absolute_local(options.table)
        try:
            options.scan_date = parse_scan_date(options.scan_date or today_utc())
        except TableError as exc:
            raise OptionError(str(exc)) from None
    elif options.scan_date or options.skip_scored:
        raise OptionError(f"--{'scan_date' if options.scan_date else 'skip_scored'} needs --table")
    if options.run_id is None:
        options.run_id = default_run_id()
    if not re.fullmatch(r"[A-Za-z0-9._-]+", options.run_id):
        raise OptionError(f"--run_id may only hold letters, digits, '.', '_' and '-', got {options.run_id!r}")
    if options.run_id.startswith("."):
        raise OptionError(f"--run_id must not start with '.' ('.' and '..' would write into or above --output), "
                          f"got {options.run_id!r}")


def config_overrides(options: ClipSAMOptions) -> dict[str, dict[str, object]]:
    """The method settings the user changed on the command line, as ClipSAMConfig sections
    (others keep the profile's)."""
    overrides: dict[str, dict[str, object]] = {}
    changed = {k: getattr(options, k) for k in ("mask_threshold", "prompt_threshold", "alpha")}
    changed = {k: v for k, v in changed.items() if v is not None}
    if changed:
        overrides["mmr"] = changed
    tile: dict[str, object] = {}
    if options.tile != "auto":
        tile = {"mode": "off"} if options.tile == "off" else {"mode": "on", "side": int(options.tile)}
    if options.tile_overlap is not None:
        tile["overlap"] = options.tile_overlap
    if tile:
        overrides["tile"] = tile
    return overrides
