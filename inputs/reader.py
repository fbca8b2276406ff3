"""Read one work unit (an image file or a tar shard) into decoded `ImageElement`s, turning every
bad input into a `Failure`. No Beam: the pipeline's DoFn (`transforms.read`) and UMCI training
(`inputs.training_data`) both call `read_unit`.

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

import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import fsspec

from .decode import DEFAULT_MIN_SIDE, DEFAULT_PIXEL_LIMIT, DecodeError, decode_image, decode_mask
from .elements import STAGE_DECODE, STAGE_READ, Failure, ImageElement, known_ground_truth, make_image_id
from .layouts import IMAGE_EXTENSIONS, KIND_IMAGE, InputUnit

# error_type values produced here (decode errors come from inputs.decode).
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


@dataclass(frozen=True)
class DecodeLimits:
    """Size limits every decoded image must meet: at most `pixel_limit` pixels (else
    `ImageTooLarge`), both sides at least `min_side` pixels (else `ImageTooSmall`)."""

    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    min_side: int = DEFAULT_MIN_SIDE


@dataclass(frozen=True)
class EncodedInput:
    """One input's bytes before decoding, with what the layout says about it.

    data: the image file's bytes; mask_data: its ground-truth mask file's bytes, or None;
    mask_uri: where the mask came from (named in mask errors); label: as `InputUnit.label`.
    """

    source_uri: str
    image_id: str
    category: str
    data: bytes
    label: Optional[int] = None
    mask_data: Optional[bytes] = None
    mask_uri: Optional[str] = None


def read_unit(unit: InputUnit, limits: DecodeLimits = DecodeLimits()) -> Iterator[Output]:
    """Yield one ImageElement or Failure per image of `unit` (see the module doc for shards)."""
    if unit.kind == KIND_IMAGE:
        yield _read_image_file(unit, limits)
    else:
        yield from _read_tar_shard(unit, limits)


def decode_input(encoded: EncodedInput, limits: DecodeLimits) -> Output:
    """Decode image (+ mask) into an ImageElement, or a decode Failure with its error_type."""
    try:
        image, notes = decode_image(encoded.data, encoded.source_uri, limits.pixel_limit, limits.min_side)
        mask = None
        if encoded.mask_data is not None:
            mask = decode_mask(encoded.mask_data, encoded.mask_uri or encoded.source_uri, image.shape[:2])
    except DecodeError as err:
        return Failure(encoded.source_uri, encoded.image_id, STAGE_DECODE, err.error_type, err.message)
    return ImageElement(encoded.image_id, encoded.source_uri, encoded.category, image,
                        known_ground_truth(mask, encoded.label, image.shape[:2]), encoded.label, notes)


def _read_image_file(unit: InputUnit, limits: DecodeLimits) -> Output:
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
    encoded = EncodedInput(unit.uri, image_id, unit.category, data, unit.label, mask_data, unit.mask_uri)
    return decode_input(encoded, limits)


def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


def _read_tar_shard(unit: InputUnit, limits: DecodeLimits) -> Iterator[Output]:
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
            yield _sample_output(unit, key, members, key in seen, limits)
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


def _sample_output(unit: InputUnit, key: str, members: dict[str, bytes], duplicate: bool,
                   limits: DecodeLimits) -> Output:
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
    encoded = EncodedInput(source_uri, image_id, category, members[images[0]],
                           mask_data=members[masks[0]] if masks else None,
                           mask_uri=f"{source_uri}.{masks[0]}" if masks else None)
    element = decode_input(encoded, limits)
    if isinstance(element, ImageElement) and element.gt_mask is not None:
        element.label = int(element.gt_mask.any())
    return element
