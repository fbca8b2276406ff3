"""`python -m pipeline.train_umci`: train UMCI on labelled datasets and publish it as a profile.

    python -m pipeline.train_umci --train_data=gs://data/visa --model_store=gs://qa-models/clipsam/ \\
        --profile=clipsam-vitl-sam-h --epochs=15          # train on VisA, evaluate zero-shot on MVTec-AD
    python -m pipeline.train_umci --train_data=/data/mvtec_ad --model_store=DIR --profile=clipsam-vitl-sam-h \\
        --out_profile=clipsam-vitl-sam-h-mvtec --epochs=3  # train on MVTec-AD, evaluate on VisA

Order of work: check flags and the base profile's manifest → list every dataset root → refuse a
work dir holding another run's checkpoint → read, check and resize the images (bad ones are
skipped and counted) → load the frozen CLIP → train with a checkpoint after every epoch
(`clipsam.train`) → publish the new profile with its provenance → print a summary. Everything
before "read" is cheap and fails with exit code 2 and a message naming the flag.

Training data (DESIGN §4.2, the cross-dataset protocol): the labelled test split of MVTec-AD
(`<category>/test/<defect>/*`, masks `ground_truth/<defect>/<stem>_mask.png`, `good` = normal)
or VisA (`split_csv/1cls.csv` rows with split `test`, masks where pixels > 0), normal and
defective images alike; `--splits=test,train` adds the normal-only train splits.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from clipsam.config import ClipSAMConfig
from clipsam.train import CHECKPOINT_NAME, TrainConfig, UMCITrainer
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.store import ModelStore, sha256_file
from model_store.training import INITS, base_summary, publish_trained_umci, require_umci, training_mapper
from inputs.layouts import InputUnit
from inputs.training_data import DatasetListing, TrainingData, limit_per_category, list_dataset, read_training_images

from .logs import show_progress

LOG = logging.getLogger("clipsam.train_umci")
SPLITS = ("test", "train")
DEVICES = ("auto", "cpu", "cuda")
RUN_FILE = "run.json"  # in --work_dir: what the checkpoint there was trained on (checked on --resume)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train_umci",
        description="Train ClipSAM's UMCI (CLIP frozen) on labelled MVTec-AD / VisA datasets and publish it "
                    "to a model store as a profile.",
        epilog="Exit codes: 0 done, 1 no usable training image, 2 invalid flags / store / work dir.",
    )
    add = parser.add_argument
    add("--train_data", required=True, type=_csv,
        help="comma-separated MVTec-AD or VisA roots (any fsspec URL: local, gs://, s3://, memory://); "
             "a root without labelled images is skipped with a warning")
    add("--splits", default=["test"], type=_csv,
        help="dataset splits to train on, comma-separated from {test, train} (default: test = the labelled "
             "test split, normal and defective images with masks; train adds normal-only train images)")
    add("--categories", default=None, type=_csv, help="only these categories (comma-separated; default: all)")
    add("--max_per_category", type=int, default=0,
        help="at most N images per category, evenly spaced over each category's sorted list (default 0: all)")
    add("--model_store", required=True, help="model store root URL")
    add("--profile", default="tiny",
        help="base profile: its frozen CLIP, tokenizer and method config are trained with (default: tiny)")
    add("--out_profile", default=None,
        help="profile to publish (default: the base profile, whose UMCI file is replaced); another name gets "
             "a copy of the base's CLIP and SAM files")
    add("--init", default="fresh", choices=INITS,
        help="fresh: a new UMCI seeded with --seed (default); profile: start from the base profile's UMCI")
    add("--epochs", type=int, default=15, help="epochs (default 15: DESIGN uses 15 on VisA, 3 on MVTec-AD)")
    add("--image_size", type=int, default=None,
        help="square CLIP input side in px, a multiple of the CLIP patch size (default: the profile's "
             "clip.input_size); the published profile runs CLIP at this size")
    add("--batch_size", type=int, default=8, help="images per optimiser step (default 8)")
    add("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3; betas 0.5, 0.999)")
    add("--mosaic_p", type=float, default=0.2, help="probability of the 2x2 mosaic augmentation (default 0.2)")
    add("--seed", type=int, default=0, help="seed of the UMCI init, data order and augmentation (default 0)")
    add("--work_dir", default=None,
        help="local folder of the per-epoch checkpoint (default: .cache/train_umci/<out_profile>)")
    add("--resume", action="store_true",
        help="continue from --work_dir's checkpoint (refused if it was trained with other settings or data)")
    add("--device", default="auto", choices=DEVICES, help="auto (CUDA when available, default), cpu or cuda")
    add("--log_every", type=int, default=20, help="batches between progress log lines (default 20)")
    add("--feature_cache_mb", type=int, default=2048,
        help="memory for frozen CLIP tokens kept between epochs (default 2048; beyond it images are re-encoded)")
    return parser


@dataclass
class TrainPlan:
    """Everything resolved before the first image is read."""

    args: argparse.Namespace
    base: Manifest
    config: TrainConfig
    device: str
    work_dir: Path
    listings: list[DatasetListing]
    units: list[InputUnit]
    fingerprint: dict[str, Any]


@dataclass
class TrainSummary:
    """What a training run did; `text()` is printed at the end."""

    manifest_url: str
    profile: str
    categories: dict[str, dict[str, int]]
    skipped: dict[str, int]
    skipped_datasets: list[str]
    epoch_losses: list[float]
    umci_sha256: str
    resumed: bool
    seconds: float
    image_size: int

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.categories.values())

    def text(self) -> str:
        per_category = ", ".join(f"{name} {c['normal']}+{c['anomalous']}" for name, c in self.categories.items())
        skipped = ", ".join(f"{k} {v}" for k, v in self.skipped.items()) or "none"
        lines = [
            f"UMCI training {'resumed and ' if self.resumed else ''}finished in {self.seconds:.0f}s",
            f"  images used: {self.images} (normal+anomalous per category: {per_category})",
            f"  images skipped: {sum(self.skipped.values())} ({skipped})",
            f"  dataset roots skipped: {len(self.skipped_datasets)}",
            *[f"    {problem}" for problem in self.skipped_datasets],
            f"  epoch mean losses: {', '.join(f'{x:.4f}' for x in self.epoch_losses)}",
            f"  published profile {self.profile} (CLIP at {self.image_size} px, umci sha256 {self.umci_sha256[:16]}…)",
            f"  manifest: {self.manifest_url}",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ planning


def plan(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> TrainPlan:
    """Parse and check flags, the base profile, the datasets and the work dir; exits 2 on a problem."""
    parser = parser or build_parser()
    args = parser.parse_args(list(argv))
    args.out_profile = args.out_profile or args.profile
    _check_flags(parser, args)
    try:
        base = ModelStore(args.model_store).read_manifest(args.profile)
        if args.init == "profile":
            require_umci(base, args.model_store)
    except (ModelStoreError, OSError) as exc:
        parser.error(f"--model_store/--profile: {exc}")
    config = _train_config(parser, args, base)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: no CUDA device is available")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    listings, units = _list_datasets(parser, args)
    work_dir = Path(args.work_dir or Path(".cache", "train_umci", args.out_profile))
    fingerprint = {  # what a checkpoint must share with the run resuming it (the store may move)
        "clip_sha256": base.files["clip"].sha256 if "clip" in base.files else None,
        "umci_config": base.clipsam_config.get("umci"),
        "init": args.init,
        "train_config": _jsonable(config.resume_key()),
        "units": len(units),
        "units_sha256": hashlib.sha256("\n".join(f"{u.uri} {u.label} {u.category}" for u in units).encode()).hexdigest(),
    }
    _check_work_dir(parser, work_dir, args.resume, fingerprint, config)
    return TrainPlan(args, base, config, device, work_dir, listings, units, fingerprint)


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.train_data:
        parser.error("--train_data is empty")
    bad_splits = sorted(set(args.splits) - set(SPLITS))
    if not args.splits or bad_splits:
        parser.error(f"--splits must be a comma-separated subset of {SPLITS}, got {args.splits}")
    if args.categories is not None and not args.categories:
        parser.error("--categories is empty")
    for flag in ("profile", "out_profile"):
        if not _NAME.fullmatch(getattr(args, flag)):
            parser.error(f"--{flag} may only hold letters, digits, '.', '_' and '-', got {getattr(args, flag)!r}")
    for flag, value, low in (("epochs", args.epochs, 1), ("batch_size", args.batch_size, 1), ("seed", args.seed, 0),
                             ("max_per_category", args.max_per_category, 0), ("log_every", args.log_every, 1),
                             ("feature_cache_mb", args.feature_cache_mb, 0)):
        if value < low:
            parser.error(f"--{flag} must be >= {low}, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0.0 <= args.mosaic_p <= 1.0:
        parser.error(f"--mosaic_p must be in [0, 1], got {args.mosaic_p}")


def _train_config(parser: argparse.ArgumentParser, args: argparse.Namespace, base: Manifest) -> TrainConfig:
    """The TrainConfig of the flags; --image_size defaults to the profile's and must fit CLIP's patches."""
    size = args.image_size or ClipSAMConfig.from_dict(base.clipsam_config).clip.input_size
    patch = base.clip_config.get("vision_cfg", {}).get("patch_size")
    if size < 32 or (patch and size % patch):
        parser.error(f"--image_size must be >= 32 and a multiple of the CLIP patch size {patch}, got {size}")
    try:
        return TrainConfig(epochs=args.epochs, image_size=size, batch_size=args.batch_size, lr=args.lr,
                           mosaic_p=args.mosaic_p, seed=args.seed, feature_cache_mb=args.feature_cache_mb,
                           log_every=args.log_every)
    except ValueError as exc:
        parser.error(f"--image_size/--mosaic_p: {exc}")
        raise  # unreachable: parser.error exits


def _list_datasets(parser: argparse.ArgumentParser, args: argparse.Namespace
                   ) -> tuple[list[DatasetListing], list[InputUnit]]:
    """List every root; skip (with a warning) the ones without labelled images; de-duplicate
    (first root wins); keep --categories; cap --max_per_category."""
    listings = [list_dataset(url, args.splits) for url in args.train_data]
    for listing in listings:
        if listing.problem:
            LOG.warning("skipping dataset root: %s", listing.problem)
    seen: set[InputUnit] = set()
    units = []
    for listing in listings:
        for unit in listing.units:
            if unit not in seen:
                seen.add(unit)
                units.append(unit)
    if not units:
        parser.error("--train_data: no labelled images in any root: " + "; ".join(l.problem or "" for l in listings))
    if args.categories is not None:
        found = sorted({unit.category for unit in units})
        missing = sorted(set(args.categories) - set(found))
        if missing:
            parser.error(f"--categories: {missing} not found in --train_data (it has {found})")
        units = [unit for unit in units if unit.category in args.categories]
    if args.max_per_category:
        units = limit_per_category(units, args.max_per_category)
    return listings, units


def _check_work_dir(parser: argparse.ArgumentParser, work_dir: Path, resume: bool, fingerprint: dict[str, Any],
                    config: TrainConfig) -> None:
    """Never overwrite a checkpoint by accident, never resume one trained on something else.

    The checkpoint itself records the training settings (`TrainConfig.resume_key`); run.json
    beside it records the base profile, the init and the listed data.
    """
    checkpoint, run_file = work_dir / CHECKPOINT_NAME, work_dir / RUN_FILE
    if not checkpoint.exists():
        return
    if not resume:
        parser.error(f"--work_dir {work_dir} already holds a checkpoint ({checkpoint}); pass --resume to continue "
                     "it, or choose another --work_dir")
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        previous["train_config"], done = state["config"], int(state["epoch"])
    except Exception as exc:  # torch.load raises many unrelated types on a damaged file
        parser.error(f"--resume: cannot read the checkpoint {checkpoint}: {exc}")
    if done > config.epochs:
        parser.error(f"--epochs={config.epochs}: the checkpoint in {work_dir} already has {done} epochs")
    differing = sorted(k for k in fingerprint if k in previous and _jsonable(previous[k]) != fingerprint[k])
    if differing:
        details = "; ".join(f"{k}: checkpoint {_jsonable(previous[k])!r}, now {fingerprint[k]!r}" for k in differing)
        parser.error(f"--resume: the checkpoint in {work_dir} was trained with other settings or data ({details}); "
                     "use another --work_dir to start a new training")


def _jsonable(value: Any) -> Any:
    """Tuples → lists etc., so values read from a checkpoint compare equal to their JSON form."""
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------------------ training


class TrainError(RuntimeError):
    """A run that cannot go on after its data was read; `code` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def train(prepared: TrainPlan) -> TrainSummary:
    """Read the data, train, publish. Raises TrainError when no image is usable (code 1) or the
    checkpoint to resume was trained on another number of usable images (code 2)."""
    args, config = prepared.args, prepared.config
    start = time.monotonic()
    LOG.info("reading %d images from %d dataset roots at %d px", len(prepared.units), len(prepared.listings),
             config.image_size)
    data = read_training_images(prepared.units, config.image_size)
    if not data.samples:
        raise TrainError(f"no usable training image: all {len(prepared.units)} were skipped "
                         f"({data.skipped_counts()}, see the messages above)", 1)
    LOG.info("training on %d images (%s), skipped %d", len(data.samples), data.category_counts(), len(data.skipped))
    checkpoint = prepared.work_dir / CHECKPOINT_NAME
    resumed = args.resume and checkpoint.exists()
    if resumed:
        trained_on = torch.load(checkpoint, map_location="cpu", weights_only=True)["num_samples"]
        if trained_on != len(data.samples):
            raise TrainError(f"--resume: the checkpoint {checkpoint} was trained on {trained_on} usable images, "
                             f"the data now gives {len(data.samples)}; use another --work_dir", 2)
    run_record = _run_record(prepared, resumed)
    mapper = training_mapper(args.model_store, prepared.base, prepared.device, args.init, args.seed)
    trainer = UMCITrainer(mapper, data.samples, config)
    losses = trainer.fit(prepared.work_dir, resume=args.resume, log=LOG.info)
    provenance = _provenance(prepared, data, losses, run_record)
    published = publish_trained_umci(args.model_store, prepared.base, args.out_profile, mapper.umci,
                                     config.image_size, provenance)
    return TrainSummary(
        manifest_url=ModelStore(args.model_store).url(args.out_profile, "manifest.json"),
        profile=args.out_profile,
        categories=data.category_counts(),
        skipped=data.skipped_counts(),
        skipped_datasets=[l.problem for l in prepared.listings if l.problem],
        epoch_losses=losses,
        umci_sha256=published.files["umci"].sha256,
        resumed=resumed,
        seconds=time.monotonic() - start,
        image_size=config.image_size,
    )


def _run_record(prepared: TrainPlan, resumed: bool) -> dict[str, Any]:
    """The work dir's run.json: written when a run starts, kept when it is resumed (its start stays)."""
    run_file = prepared.work_dir / RUN_FILE
    if resumed and run_file.exists():
        return json.loads(run_file.read_text())
    base = prepared.base
    record = {
        **prepared.fingerprint,
        "init_umci_sha256": base.files["umci"].sha256 if prepared.args.init == "profile" else None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    prepared.work_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def _provenance(prepared: TrainPlan, data: TrainingData, losses: list[float], run_record: dict[str, Any]
                ) -> dict[str, Any]:
    args = prepared.args
    datasets = []
    for listing in prepared.listings:
        uris = {u.uri for u in listing.units}
        datasets.append({
            "url": listing.url,
            "images": sum(s.source_uri in uris for s in data.samples),
            "skipped_images": sum(f.source_uri in uris for f in data.skipped),
            **({"skipped": listing.problem} if listing.problem else {}),
        })
    return {
        "created_by": "pipeline.train_umci",
        "base_profile": base_summary(args.model_store, prepared.base),
        "umci_training": {
            "config": prepared.config.to_dict(),
            "init": args.init,
            "init_umci_sha256": run_record.get("init_umci_sha256"),
            "seed": args.seed,
            "datasets": datasets,
            "splits": args.splits,
            "categories": data.category_counts(),
            "images": len(data.samples),
            "skipped_images": data.skipped_counts(),
            "max_per_category": args.max_per_category or None,
            "epoch_losses": losses,
            "checkpoint_sha256": sha256_file(prepared.work_dir / CHECKPOINT_NAME),
            "started_at": run_record.get("started_at"),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": prepared.device,
            "torch": torch.__version__,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    show_progress()
    prepared = plan(sys.argv[1:] if argv is None else argv)
    try:
        summary = train(prepared)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
