"""Labelled training images for UMCI from MVTec-AD / VisA roots at any fsspec URL (no Beam).

Training (DESIGN §4.2) reads the same datasets the pipeline scores, so it reuses the pipeline's
listing (`inputs.layouts.list_inputs`) and reading/decoding (`inputs.reader.read_unit`):
the same image ids, the same ground-truth rules (MVTec `ground_truth/<defect>/<stem>_mask.png`,
VisA `split_csv/1cls.csv` masks where pixels > 0, `good` / `normal` = all-False mask) and the
same error types for bad files. What differs is what happens to a bad input: the pipeline writes
a failure row; training logs it, skips the image and counts it (`TrainingData.skipped`).

Why images are resized here, once: the trainer resizes every image to the square CLIP input
side S anyway (bicubic with antialias, `clipsam.clip_features.preprocess_images`; masks by
area-average ≥ 0.5, `clipsam.train.resize_mask`). Doing exactly that at load time and keeping
uint8 [S, S, 3] + bool [S, S] makes memory independent of the source resolution (~1 MB per
image at S = 518, so MVTec-AD's or VisA's test split fits in 2-3 GB) and reads a remote dataset
once instead of every epoch. Resizing an S × S image to S × S again is the identity, so the
trainer sees the same pixels up to uint8 rounding (≤ 0.5/255).
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from clipsam.clip_features import preprocess_images
from clipsam.config import ClipTapConfig
from clipsam.train import resize_mask

from .elements import Failure, ImageElement
from .layouts import InputUnit, list_inputs
from .reader import MISSING_MASK, read_unit

LOG = logging.getLogger(__name__)
TRAINING_LAYOUTS = ("mvtec", "visa")
READ_THREADS = 8  # remote stores are latency-bound; decoding releases the GIL


@dataclass(frozen=True)
class TrainingImage:
    """One usable labelled image, already at the training size S (what `clipsam.train` consumes).

    image: RGB uint8 [S, S, 3]; mask: bool [S, S] (all False for a normal image);
    label: 0 normal, 1 anomalous; source_uri: where it came from (for logs and provenance).
    """

    image: np.ndarray
    mask: np.ndarray
    category: str
    label: int
    source_uri: str


@dataclass
class DatasetListing:
    """The units of one `--train_data` root, or why it gave none.

    url: the root as given; units: labelled images (sorted by URI); problem: why the root gave
    none (no MVTec-AD/VisA images, unreadable).
    """

    url: str
    units: list[InputUnit] = field(default_factory=list)
    problem: Optional[str] = None


@dataclass
class TrainingData:
    """What reading produced: usable samples (in a deterministic order) and skipped inputs."""

    samples: list[TrainingImage]
    skipped: list[Failure]

    def category_counts(self) -> dict[str, dict[str, int]]:
        """category → {"normal": n, "anomalous": m}, categories sorted."""
        counts: dict[str, dict[str, int]] = {}
        for sample in self.samples:
            entry = counts.setdefault(sample.category, {"normal": 0, "anomalous": 0})
            entry["anomalous" if sample.label else "normal"] += 1
        return dict(sorted(counts.items()))

    def skipped_counts(self) -> dict[str, int]:
        """error_type → number of skipped images."""
        return dict(sorted(Counter(f.error_type for f in self.skipped).items()))


def list_dataset(url: str, splits: Sequence[str]) -> DatasetListing:
    """List the labelled images of one MVTec-AD or VisA root for the given splits.

    A split the root does not have is left out silently when another split gives images (MVTec
    roots without `train/`, say); a root with no labelled image at all is returned with a
    `problem` instead of raising, so one bad root among several costs only itself.
    """
    units: set[InputUnit] = set()
    problems = []
    for split in splits:
        try:
            found = list_inputs(url, layout="auto", split=split)
        except (ValueError, OSError) as exc:
            problems.append(f"split {split!r}: {exc}")
            continue
        if any(unit.label is None for unit in found):
            return DatasetListing(url, problem=f"{url!r} is not an MVTec-AD or VisA root (no ground-truth labels)")
        units.update(found)
    if not units:
        return DatasetListing(url, problem=f"no labelled images in {url!r} ({'; '.join(problems)})")
    return DatasetListing(url, sorted(units, key=lambda unit: unit.uri))


def limit_per_category(units: Sequence[InputUnit], limit: int) -> list[InputUnit]:
    """At most `limit` units per category, evenly spaced over the URI-sorted list.

    Evenly spaced (not the first `limit`) so a capped MVTec category keeps images from across
    its defect folders and `good`, not just the first folders; deterministic, so a capped run
    can be resumed.
    """
    by_category: dict[str, list[InputUnit]] = {}
    for unit in units:
        by_category.setdefault(unit.category, []).append(unit)
    kept: list[InputUnit] = []
    for members in by_category.values():
        if len(members) <= limit:
            kept.extend(members)
        else:
            kept.extend(members[i] for i in np.linspace(0, len(members) - 1, limit).round().astype(int))
    order = {unit: i for i, unit in enumerate(units)}
    return sorted(kept, key=order.__getitem__)


def to_training_size(element: ImageElement, size: int) -> TrainingImage:
    """A decoded, labelled element → TrainingImage at S × S (see the module doc for why)."""
    identity = ClipTapConfig(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels = preprocess_images([element.image], identity)[0]  # float [3, S, S] in [0, 1]
    image = pixels.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    mask = resize_mask(element.gt_mask, size).numpy()
    return TrainingImage(image, mask, element.category, int(element.label), element.source_uri)


def read_training_images(units: Sequence[InputUnit], size: int, threads: int = READ_THREADS,
                         report: Callable[[Failure], None] | None = None) -> TrainingData:
    """Read, decode, check and resize every unit; bad ones become `skipped` Failures.

    The order of `samples` is the order of `units` whatever the thread count, so the training
    data (and hence a seeded run) does not depend on I/O timing. `report` is called once per
    skipped input (default: log it, at ERROR for a missing mask since that is a dataset defect).
    """
    report = report or log_skipped

    def read_one(unit: InputUnit) -> TrainingImage | Failure:
        output = next(iter(read_unit(unit)))
        if isinstance(output, Failure):
            return output
        return to_training_size(output, size)

    samples: list[TrainingImage] = []
    skipped: list[Failure] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, result in enumerate(pool.map(read_one, units), start=1):
            if isinstance(result, Failure):
                skipped.append(result)
                report(result)
            else:
                samples.append(result)
            if done % 500 == 0 or done == len(units):
                LOG.info("read %d/%d training images (%d skipped)", done, len(units), len(skipped))
    return TrainingData(samples, skipped)


def log_skipped(failure: Failure) -> None:
    """Default report of a skipped input: the error type and the message naming the file."""
    level = logging.ERROR if failure.error_type == MISSING_MASK else logging.WARNING
    LOG.log(level, "skipping %s (%s): %s", failure.source_uri, failure.error_type, failure.message)
