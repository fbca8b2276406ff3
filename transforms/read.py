"""Read work units into decoded `ImageElement`s, turning every bad input into a `Failure`.

Graph (DESIGN §3, §9): ``Create(units) → Reshuffle → ParDo(ReadUnitFn) → Reshuffle``. The
first Reshuffle spreads units (shards) over workers; the second is a fusion break so that
per-image GPU work downstream is not pinned to the worker that happened to read the shard.

Ids and URIs:
- a plain image file: ``source_uri = unit.uri``, ``image_id = make_image_id(unit.uri)``;
- a tar sample: ``source_uri = f"{shard_uri}#{key}"``,
  ``image_id = make_image_id(shard_uri, key)``;
- a whole shard that cannot be read: ``source_uri = shard_uri``,
  ``image_id = make_image_id(shard_uri)``.

Tar shards (WebDataset convention) are streamed with ``tarfile`` mode ``r|*`` (plain, gzip, bz2,
xz), never seeked or fully buffered. Members are grouped by key: the member path up to the first
dot of its base name (``a/b/000.mask.png`` → key ``a/b/000``, extension ``mask.png``); a key's
members must be consecutive. Per sample:
- the image is the one member whose extension ends in an image suffix (``png``, ``jpg``,
  ``rgb.png``, ...) and is not a mask; none → ``NoImageInSample``, several (or several masks)
  → ``AmbiguousSample``;
- optional ``mask.<image suffix>``: ground truth; label = 1 if any mask pixel is set, else 0;
  without a mask, label and gt_mask are None;
- optional ``category.txt`` or ``cls`` (UTF-8 text): the sample's category, else the unit's.
A shard that is missing gives ``FileNotFound``; one that breaks while streaming (corrupt or
truncated) gives ONE ``UnreadableShard`` failure for the shard plus the samples completed before
the break (the sample being assembled when it broke, and any after it, are covered by that one
failure row, since their number cannot be known).
"""
from __future__ import annotations

import logging
import tarfile
import zlib
from typing import Iterator, Optional, Sequence, Union

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam.pvalue import PBegin, PCollection

from transforms.decode import (
    DEFAULT_MIN_SIDE,
    DEFAULT_PIXEL_LIMIT,
    DecodeError,
    decode_image,
    decode_mask,
)
from transforms.elements import STAGE_DECODE, STAGE_READ, Failure, ImageElement, make_image_id
from transforms.layouts import IMAGE_EXTENSIONS, KIND_IMAGE, InputUnit, list_inputs
from transforms.progress import ProgressLog
from transforms.routing import split_failures

logger = logging.getLogger(__name__)

IMAGES = "images"
FAILURES = "failures"

# error_type values produced here (decode errors come from transforms.decode).
FILE_NOT_FOUND = "FileNotFound"
READ_ERROR = "ReadError"
MISSING_MASK = "MissingMask"
UNREADABLE_SHARD = "UnreadableShard"
NO_IMAGE_IN_SAMPLE = "NoImageInSample"
AMBIGUOUS_SAMPLE = "AmbiguousSample"
DUPLICATE_KEY = "DuplicateKey"

_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_CATEGORY_MEMBERS = ("category.txt", "cls")
# What a damaged stream raises: tarfile's own errors, gzip/bz2/lzma (OSError, EOFError), zlib.
_SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)

Output = Union[ImageElement, Failure]


def read_unit(
    unit: InputUnit,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Iterator[Output]:
    """Yield one ImageElement or Failure per image of `unit` (see the module doc for shards)."""
    if unit.kind == KIND_IMAGE:
        yield _read_image_file(unit, pixel_limit, min_side)
    else:
        yield from _read_tar_shard(unit, pixel_limit, min_side)


def _read_image_file(unit: InputUnit, pixel_limit: int, min_side: int) -> Output:
    image_id = make_image_id(unit.uri)

    def fail(stage: str, error_type: str, message: str) -> Failure:
        return Failure(unit.uri, image_id, stage, error_type, message)

    try:
        data = _read_bytes(unit.uri)
    except FileNotFoundError:
        return fail(STAGE_READ, FILE_NOT_FOUND, f"{unit.uri}: no such file")
    except OSError as err:
        return fail(STAGE_READ, READ_ERROR, f"{unit.uri}: {type(err).__name__}: {err}")
    mask_data = None
    if unit.label == 1:
        if unit.mask_uri is None:
            return fail(STAGE_READ, MISSING_MASK, f"{unit.uri}: anomalous image without a mask")
        try:
            mask_data = _read_bytes(unit.mask_uri)
        except FileNotFoundError:
            return fail(STAGE_READ, MISSING_MASK, f"{unit.uri}: mask {unit.mask_uri} not found")
        except OSError as err:
            return fail(STAGE_READ, READ_ERROR, f"{unit.mask_uri}: {type(err).__name__}: {err}")
    return _decode(
        unit.uri, image_id, unit.category, unit.label, data, mask_data, unit.mask_uri,
        pixel_limit, min_side,
    )


def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


def _decode(
    source_uri: str,
    image_id: str,
    category: str,
    label: Optional[int],
    data: bytes,
    mask_data: Optional[bytes],
    mask_uri: Optional[str],
    pixel_limit: int,
    min_side: int,
) -> Output:
    """Decode image (+ mask). Label 0 without a mask means a known all-normal ground truth."""
    try:
        image, notes = decode_image(data, source_uri, pixel_limit, min_side)
        gt_mask = None
        if mask_data is not None:
            gt_mask = decode_mask(mask_data, mask_uri or source_uri, image.shape[:2])
        elif label == 0:
            gt_mask = np.zeros(image.shape[:2], dtype=bool)
    except DecodeError as err:
        return Failure(source_uri, image_id, STAGE_DECODE, err.error_type, err.message)
    return ImageElement(image_id, source_uri, category, image, gt_mask, label, notes)


def _read_tar_shard(unit: InputUnit, pixel_limit: int, min_side: int) -> Iterator[Output]:
    def shard_failure(error_type: str, message: str) -> Failure:
        return Failure(
            unit.uri, make_image_id(unit.uri), STAGE_READ, error_type, f"{unit.uri}: {message}"
        )

    samples = _stream_samples(unit.uri)
    seen: set[str] = set()
    try:
        while True:
            try:
                key, members = next(samples)
            except StopIteration:
                return
            except FileNotFoundError:
                yield shard_failure(FILE_NOT_FOUND, "no such file")
                return
            except _SHARD_ERRORS as err:
                yield shard_failure(
                    UNREADABLE_SHARD, f"{type(err).__name__}: {err} (after {len(seen)} samples)"
                )
                return
            yield _sample_output(unit, key, members, key in seen, pixel_limit, min_side)
            seen.add(key)
    finally:
        samples.close()


def _stream_samples(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample, holding one sample in memory at a time."""
    with fsspec.open(uri, "rb", compression="infer") as f:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            yield from _group_members(tar)


def _group_members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    key: Optional[str] = None
    members: dict[str, bytes] = {}
    for info in tar:
        if not info.isfile():
            continue
        member_key, ext = _split_member(info.name)
        if member_key != key and key is not None:
            yield key, members
            members = {}
        key = member_key
        members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset split: key = path up to the first dot of the base name; ext lower-cased."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _sample_output(
    unit: InputUnit,
    key: str,
    members: dict[str, bytes],
    duplicate: bool,
    pixel_limit: int,
    min_side: int,
) -> Output:
    source_uri = f"{unit.uri}#{key}"
    image_id = make_image_id(unit.uri, key)

    def fail(error_type: str, message: str) -> Failure:
        return Failure(source_uri, image_id, STAGE_READ, error_type, f"{source_uri}: {message}")

    if duplicate:
        return fail(DUPLICATE_KEY, "key already seen earlier in this shard")
    masks = [ext for ext in members if ext.startswith("mask.") and ext.endswith(_IMAGE_SUFFIXES)]
    images = [ext for ext in members if ext.endswith(_IMAGE_SUFFIXES) and ext not in masks]
    if not images:
        return fail(NO_IMAGE_IN_SAMPLE, f"no image member among {sorted(members)}")
    if len(images) > 1 or len(masks) > 1:
        return fail(AMBIGUOUS_SAMPLE, f"several image or mask members: {sorted(members)}")
    category = unit.category
    for ext in _CATEGORY_MEMBERS:
        text = members.get(ext, b"").decode("utf-8", errors="replace").strip()
        if text:
            category = text
            break
    mask_data = members[masks[0]] if masks else None
    element = _decode(
        source_uri, image_id, category, None, members[images[0]], mask_data,
        f"{source_uri}.{masks[0]}" if masks else None, pixel_limit, min_side,
    )
    if isinstance(element, ImageElement) and element.gt_mask is not None:
        element.label = int(element.gt_mask.any())
    return element


class ReadUnitFn(beam.DoFn):
    """Read one unit; outputs ImageElements and Failures (see `routing.split_failures`)."""

    def __init__(self, pixel_limit: int, min_side: int):
        self._pixel_limit = pixel_limit
        self._min_side = min_side
        self._progress = ProgressLog("read")

    def process(self, unit: InputUnit) -> Iterator[Union[ImageElement, Failure]]:
        for output in read_unit(unit, self._pixel_limit, self._min_side):
            if isinstance(output, Failure):
                logger.warning("read failure %s: %s", output.error_type, output.message)
                self._progress.failed()
            else:
                self._progress.done()
            yield output


class ReadImages(beam.PTransform):
    """PBegin → {IMAGES: PCollection[ImageElement], FAILURES: PCollection[Failure]}.

    Units come from `transforms.layouts.list_inputs` (or use `from_url`), listed before the
    pipeline is built so that a bad input URL fails before any work starts.
    """

    def __init__(
        self,
        units: Sequence[InputUnit],
        pixel_limit: int = DEFAULT_PIXEL_LIMIT,
        min_side: int = DEFAULT_MIN_SIDE,
    ):
        super().__init__()
        if not units:
            raise ValueError("ReadImages needs at least one input unit")
        self._units = list(units)
        self._pixel_limit = pixel_limit
        self._min_side = min_side

    @classmethod
    def from_url(
        cls,
        url: str,
        layout: str = "auto",
        category: Optional[str] = None,
        split: Optional[str] = "test",
        pixel_limit: int = DEFAULT_PIXEL_LIMIT,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> "ReadImages":
        """List `url` now (see `list_inputs`) and read what it holds."""
        units = list_inputs(url, layout=layout, category=category, split=split)
        logger.info("input %s: %d units", url, len(units))
        return cls(units, pixel_limit=pixel_limit, min_side=min_side)

    def expand(self, pbegin: PBegin) -> dict[str, PCollection]:
        read = (
            pbegin
            | "ListedUnits" >> beam.Create(self._units)
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadUnits" >> beam.ParDo(ReadUnitFn(self._pixel_limit, self._min_side))
        )
        images, failures = split_failures(read, "Read")
        return {IMAGES: images | "SpreadImages" >> beam.Reshuffle(), FAILURES: failures}
