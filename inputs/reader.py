"""Read one work unit (an image file or a tar shard) into decoded `ImageElement`s, turning every
bad input into a `Failure`. No Beam: the pipeline's DoFn (`transforms.read`) and UMCI training
(`inputs.training_data`) both call `read_unit`.

Ids and URIs:
- a plain image file: ``source_uri = unit.uri``, ``image_id = make_image_id(unit.uri)``;
- a tar sample: ``source_uri = f"{shard_uri}#{key}"``,
  ``image_id = make_image_id(shard_uri, key)``;
- a whole shard that cannot be read: ``source_uri = shard_uri``,
  ``image_id = make_image_id(shard_uri)``.

A unit with a `problem` (a listing-time failure: NonUtf8Name, InvalidPath, DuplicateInput, see
`inputs.layouts`) is not read: it gives that one failure row, ``source_uri = unit.uri``, image id
``make_image_id(unit.uri)`` (``make_image_id(unit.uri, f"repeat {k}")`` for the k-th repeat of a
listing, so that no image id has two rows).

Tar shards (WebDataset convention) are streamed with ``tarfile`` mode ``r|*`` (plain, gzip, bz2,
xz), never seeked or fully buffered, twice: a first pass reads the member headers only (skipping
member data) to find keys whose members are not consecutive, a second pass reads the samples.
Members are grouped by key: the member path up to the first dot of its base name
(``a/b/000.mask.png`` → key ``a/b/000``, extension ``mask.png``). Directory members are ignored;
every other member belongs to the sample of its key, and every sample (key) gives exactly one
row, a record or a failure whose error_type is that of the sample's first problem:
- a key whose members are not consecutive (they form several runs in the shard) →
  ``DuplicateKey``: ONE failure row, at its first run, covers all its members;
- a member that is not a regular file (symbolic or hard link, FIFO, device, ...) →
  ``UnsupportedMember``; the same member name twice in a run → ``DuplicateMember``; a member
  name that is not valid UTF-8 → ``NonUtf8Name`` (the key and URI show such bytes as ``\\xNN``);
- a member larger than `DecodeLimits.member_bytes` (derived from the pixel limit) →
  ``MemberTooLarge``, checked on the member header: its bytes are skipped, never read into
  memory; an image member whose first 64 KiB already show more pixels than the limit →
  ``ImageTooLarge`` without reading the rest (the same header check as for image files).
Per sample without such a problem:
- the image is the one member whose extension ends in an image suffix (``png``, ``jpg``,
  ``rgb.png``, ...) and is not a mask; none → ``NoImageInSample``, several (or several masks)
  → ``AmbiguousSample``;
- optional ``mask.<image suffix>``: ground truth; label = 1 if any mask pixel is set, else 0;
  without a mask, label and gt_mask are None;
- optional ``category.txt`` or ``cls`` (UTF-8 text): the sample's category, else the unit's.
A shard that is missing gives ``FileNotFound``; a valid archive without any non-directory
member gives ``EmptyShard``; one that breaks while streaming (corrupt, truncated, or cut inside a
member header: an archive must end with its end-of-archive zero block, which tarfile's stream
mode does not check by itself) gives ONE ``UnreadableShard`` failure for the shard plus the
samples completed before the break (the sample being assembled when it broke, and any after it,
are covered by that one failure row, since their number cannot be known).
"""
from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from .decode import (
    DEFAULT_MIN_SIDE,
    DEFAULT_PIXEL_LIMIT,
    FILE_NOT_FOUND,
    READ_ERROR,
    DecodeError,
    JpegDraft,
    check_image_header,
    decode_frame,
    decode_mask,
)
from .elements import STAGE_DECODE, STAGE_READ, Failure, ImageElement, known_ground_truth, make_image_id
from .layouts import IMAGE_EXTENSIONS, KIND_IMAGE, NON_UTF8_NAME, InputUnit
from .uris import is_utf8, open_binary, printable

# error_type values produced here (decode errors, FileNotFound and ReadError come from inputs.decode).
MISSING_MASK = "MissingMask"
UNREADABLE_SHARD = "UnreadableShard"
NO_IMAGE_IN_SAMPLE = "NoImageInSample"
AMBIGUOUS_SAMPLE = "AmbiguousSample"
DUPLICATE_KEY = "DuplicateKey"
DUPLICATE_MEMBER = "DuplicateMember"
UNSUPPORTED_MEMBER = "UnsupportedMember"
MEMBER_TOO_LARGE = "MemberTooLarge"
EMPTY_SHARD = "EmptyShard"

# Tar member size bound: 8 bytes per allowed pixel (16-bit RGBA stored uncompressed, the
# largest encoding of a supported image) plus 1 MiB for headers and metadata.
MEMBER_BYTES_PER_PIXEL = 8
MEMBER_SLACK_BYTES = 1 << 20
_HEADER_PROBE_BYTES = 1 << 16  # first bytes of a larger image member checked before the rest
_END_ATTR = "_clipsam_end"  # set on a TarFile: the header error that ended its member list

_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_CATEGORY_MEMBERS = ("category.txt", "cls")
# What a damaged stream raises: tarfile's own errors, gzip/bz2/lzma (OSError, EOFError), zlib.
_SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)

Output = Union[ImageElement, Failure]


@dataclass(frozen=True)
class DecodeLimits:
    """Size limits every decoded image must meet: at most `pixel_limit` pixels (else
    `ImageTooLarge`), both sides at least `min_side` pixels (else `ImageTooSmall`); and, when
    `jpeg_draft` is set, how few pixels of a JPEG the models need (`inputs.decode.JpegDraft`)."""

    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    min_side: int = DEFAULT_MIN_SIDE
    jpeg_draft: Optional[JpegDraft] = None

    @property
    def member_bytes(self) -> int:
        """Largest tar member read into memory (`pixel_limit` × 8 bytes + 1 MiB); a larger one is
        a `MemberTooLarge` failure, detected on its header and never read."""
        return self.pixel_limit * MEMBER_BYTES_PER_PIXEL + MEMBER_SLACK_BYTES


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
    if unit.problem:
        yield _listing_failure(unit)
    elif unit.kind == KIND_IMAGE:
        yield _read_image_file(unit, limits)
    else:
        yield from _read_tar_shard(unit, limits)


def _listing_failure(unit: InputUnit) -> Failure:
    return Failure(unit.uri, unit.image_id, STAGE_READ, unit.problem, unit.detail or f"{unit.uri}: {unit.problem}")


def decode_input(encoded: EncodedInput, limits: DecodeLimits) -> Output:
    """Decode image (+ mask) into an ImageElement, or a decode Failure with its error_type."""
    try:
        image, notes, frame = decode_frame(encoded.data, encoded.source_uri, limits.pixel_limit, limits.min_side,
                                           limits.jpeg_draft)
        mask = None
        if encoded.mask_data is not None:
            mask = decode_mask(encoded.mask_data, encoded.mask_uri or encoded.source_uri, frame)
    except DecodeError as err:
        return Failure(encoded.source_uri, encoded.image_id, STAGE_DECODE, err.error_type, err.message)
    return ImageElement(encoded.image_id, encoded.source_uri, encoded.category, image,
                        known_ground_truth(mask, encoded.label, frame), encoded.label, notes,
                        hashlib.sha256(encoded.data).hexdigest(), None if frame == image.shape[:2] else frame)


def _read_image_file(unit: InputUnit, limits: DecodeLimits) -> Output:
    image_id = make_image_id(unit.uri)

    def fail(stage: str, error_type: str, message: str) -> Failure:
        return Failure(unit.uri, image_id, stage, error_type, message)

    try:
        data = _read_bytes(unit.uri)
    except FileNotFoundError:
        return fail(STAGE_READ, FILE_NOT_FOUND, f"{unit.uri}: no such file")
    except (OSError, ValueError) as err:  # ValueError: a path the OS refuses (embedded NUL, ...)
        return fail(STAGE_READ, READ_ERROR, f"{unit.uri}: {type(err).__name__}: {err}")
    mask_data = None
    if unit.label == 1:
        if unit.mask_uri is None:
            return fail(STAGE_READ, MISSING_MASK, f"{unit.uri}: anomalous image without a mask")
        try:
            mask_data = _read_bytes(unit.mask_uri)
        except FileNotFoundError:
            return fail(STAGE_READ, MISSING_MASK, f"{unit.uri}: mask {unit.mask_uri} not found")
        except (OSError, ValueError) as err:
            return fail(STAGE_READ, READ_ERROR, f"{unit.mask_uri}: {type(err).__name__}: {err}")
    encoded = EncodedInput(unit.uri, image_id, unit.category, data, unit.label, mask_data, unit.mask_uri)
    return decode_input(encoded, limits)


def _read_bytes(uri: str) -> bytes:
    with open_binary(uri) as f:
        return f.read()


def _read_tar_shard(unit: InputUnit, limits: DecodeLimits) -> Iterator[Output]:
    def shard_failure(error_type: str, message: str) -> Failure:
        return Failure(
            unit.uri, make_image_id(unit.uri), STAGE_READ, error_type, f"{unit.uri}: {message}"
        )

    try:
        scan = _scan_shard(unit.uri)
    except FileNotFoundError:
        yield shard_failure(FILE_NOT_FOUND, "no such file")
        return
    except _SHARD_ERRORS as err:
        yield shard_failure(UNREADABLE_SHARD, f"{type(err).__name__}: {err} (after 0 samples)")
        return
    if scan.members == 0:
        if scan.error is None:
            yield shard_failure(EMPTY_SHARD, "the archive holds no file members")
        else:
            yield shard_failure(UNREADABLE_SHARD, f"{scan.error} (after 0 samples)")
        return
    samples = _stream_samples(unit.uri, limits, scan.split_keys)
    seen: set[str] = set()
    try:
        while True:
            try:
                sample = next(samples)
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
            if sample.key in seen:
                continue  # a later run of a split key: its first run's DuplicateKey row covers it
            seen.add(sample.key)
            yield _sample_output(unit, sample, sample.key in scan.split_keys, limits)
    finally:
        samples.close()


class _EndRecordingTarInfo(tarfile.TarInfo):
    """Records on the TarFile the header error that ends its member list: in stream mode tarfile
    ends quietly on a truncated or invalid header after the first member, exactly as on the
    end-of-archive zero block, so `_check_end` tells them apart."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as err:
            setattr(tar, _END_ATTR, err)
            raise


def _open_tar(fileobj) -> tarfile.TarFile:
    return tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_EndRecordingTarInfo)


def _check_end(tar: tarfile.TarFile) -> None:
    """Raise tarfile.ReadError unless the member list ended on an end-of-archive zero block."""
    end = getattr(tar, _END_ATTR, None)
    if not isinstance(end, tarfile.EOFHeaderError):
        reason = f"{type(end).__name__}: {end}" if end is not None else "no end-of-archive block"
        raise tarfile.ReadError(f"archive cut short at byte {tar.offset} ({reason})")


@dataclass(frozen=True)
class _ShardScan:
    """First pass over a shard: non-directory members before the end (or the damage), keys whose
    members form several runs, and the damage found (None for a complete archive)."""

    members: int
    split_keys: frozenset[str]
    error: Optional[str]


def _scan_shard(uri: str) -> _ShardScan:
    members = 0
    runs: dict[str, int] = {}
    last: Optional[str] = None
    error = None
    with open_binary(uri, decompress=True) as f, _open_tar(f) as tar:
        try:
            for info in tar:  # member data is skipped, not read into memory
                if info.isdir():
                    continue
                members += 1
                key = _split_member(printable(info.name))[0]
                if key != last:
                    runs[key] = runs.get(key, 0) + 1
                    last = key
            _check_end(tar)
        except _SHARD_ERRORS as err:
            error = f"{type(err).__name__}: {err}"
    return _ShardScan(members, frozenset(k for k, n in runs.items() if n > 1), error)


@dataclass
class _Sample:
    """One run of consecutive members of a key: their bytes by extension (until a problem is
    found) and the first problem, (stage, error_type, message)."""

    key: str
    names: list[str] = field(default_factory=list)
    members: dict[str, bytes] = field(default_factory=dict)
    problem: Optional[tuple[str, str, str]] = None


def _stream_samples(uri: str, limits: DecodeLimits, skip_keys: frozenset[str]) -> Iterator[_Sample]:
    """Yield one `_Sample` per run of consecutive members, holding one sample in memory at a
    time; the bytes of members of `skip_keys` or after a sample's first problem are not read.
    Raises (shard errors) when the archive breaks or does not end properly; the sample being
    assembled then is not yielded."""
    with open_binary(uri, decompress=True) as f, _open_tar(f) as tar:
        sample: Optional[_Sample] = None
        for info in tar:
            if info.isdir():
                continue
            name = printable(info.name)
            key, ext = _split_member(name)
            if sample is not None and key != sample.key:
                yield sample
                sample = None
            if sample is None:
                sample = _Sample(key)
            sample.names.append(name)
            if key in skip_keys or sample.problem is not None:
                continue
            sample.problem = _member_problem(info, name, ext, sample, limits, uri)
            if sample.problem is None:
                try:
                    sample.members[ext] = _read_member(tar, info, ext, limits, f"{uri}#{name}")
                except DecodeError as err:
                    sample.problem = (STAGE_DECODE, err.error_type, err.message)
        _check_end(tar)
        if sample is not None:
            yield sample


_MEMBER_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
}


def _member_problem(info: tarfile.TarInfo, name: str, ext: str, sample: _Sample,
                    limits: DecodeLimits, uri: str) -> Optional[tuple[str, str, str]]:
    where = f"{uri}#{sample.key}: member {name}"
    if not is_utf8(info.name):
        return STAGE_READ, NON_UTF8_NAME, f"{where}: name is not valid UTF-8 (bytes shown as \\xNN)"
    if not info.isfile():
        kind = _MEMBER_KINDS.get(info.type, f"member of type {info.type!r}")
        return STAGE_READ, UNSUPPORTED_MEMBER, f"{where} is a {kind}, not a regular file"
    if ext in sample.members:
        return STAGE_READ, DUPLICATE_MEMBER, f"{where} appears twice in the sample"
    if info.size > limits.member_bytes:
        return STAGE_READ, MEMBER_TOO_LARGE, (
            f"{where} has {info.size} bytes, more than {limits.member_bytes} "
            f"({MEMBER_BYTES_PER_PIXEL} bytes per pixel of the pixel limit {limits.pixel_limit} + 1 MiB)"
        )
    return None


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str, limits: DecodeLimits,
                 uri: str) -> bytes:
    """A member's bytes; an image member larger than the probe size has its header checked
    against the pixel limit first (DecodeError ImageTooLarge, the rest never read)."""
    handle = tar.extractfile(info)
    is_image = ext.endswith(_IMAGE_SUFFIXES) and not ext.startswith("mask.")
    if is_image and info.size > _HEADER_PROBE_BYTES:
        head = handle.read(_HEADER_PROBE_BYTES)
        check_image_header(head, uri, limits.pixel_limit)
        return head + handle.read()
    return handle.read()


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset split: key = path up to the first dot of the base name; ext lower-cased."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _sample_output(unit: InputUnit, sample: _Sample, split: bool, limits: DecodeLimits) -> Output:
    source_uri = f"{unit.uri}#{sample.key}"
    image_id = make_image_id(unit.uri, sample.key)

    def fail(error_type: str, message: str) -> Failure:
        return Failure(source_uri, image_id, STAGE_READ, error_type, f"{source_uri}: {message}")

    if split:
        return fail(DUPLICATE_KEY, f"the key's members are not consecutive (first run: {sample.names}, "
                                   "more later in the shard); this one row covers all of them")
    if sample.problem is not None:
        stage, error_type, message = sample.problem
        return Failure(source_uri, image_id, stage, error_type, message)
    members = sample.members
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
