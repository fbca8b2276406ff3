"""Turn an input URL into a sorted list of small work units, at graph-construction time.

Listing happens once, in the launcher, with fsspec (DESIGN §9): the units are then a plain
`beam.Create` input, so the work list is deterministic (sorted), visible before any worker
starts, and a URL that matches nothing fails immediately with a ValueError naming it.

Supported layouts (`layout="auto"` picks the first that matches, in this order):

- ``visa``: a root holding ``split_csv/1cls.csv`` (columns object, split, label, image, mask;
  label ``normal``/``anomaly``; paths relative to the root). Rows of `split` only (default
  ``test``; ``None`` keeps all rows). Category = ``object``.
- ``mvtec``: an MVTec-AD root ``<root>/<category>/{test,ground_truth}/`` or one category
  ``<root>/{test,ground_truth}/`` (category = the root's base name). Images
  ``<split>/<defect>/*``; label 0 for ``good``, else 1 with mask
  ``ground_truth/<defect>/<stem>_mask.png``.
- ``folder`` / ``tar``: every image (png, jpg, jpeg, bmp, tif, tiff; any case) and every tar
  shard (``.tar``, ``.tar.gz``, ``.tgz``) under a folder, recursively, or matching a glob.
  ``auto`` takes both kinds, ``folder`` only images, ``tar`` only shards. No ground truth;
  category = `category` or ``"object"`` (a shard's samples may name their own, see `inputs.reader`).

For ``mvtec`` and ``visa``, `category` selects one category instead of naming it.
Unit URIs are canonical fsspec URLs (``file:///abs/path`` for local files), so the same data
reached as ``./data`` or ``/abs/data`` gets the same image ids.

A URL that names an existing file or folder is taken literally even when it holds glob (``*?[``)
or chaining (``::``) characters (a folder ``in[1]``, a file ``a::b.png``); only a URL that names
nothing is read as a glob or an fsspec chain (see `inputs.uris`).

Nothing is dropped without a trace (README "Bad input"):
- an input that is listed but cannot be read as named becomes a unit with a `problem`, which
  the reader turns into one failure row: ``NonUtf8Name`` (a file or folder name that is not
  valid UTF-8; the URI shows the bytes as ``\\xNN``), ``InvalidPath`` (a VisA CSV path with a
  NUL byte), ``DuplicateInput`` (a file listed again, e.g. twice in a VisA CSV: the first
  listing in CSV order is read, each repeat gets this failure, with the same ``source_uri``
  and its own image id, so the number of rows equals the number of listings);
- a file left out on purpose is counted by reason in `Listing.skipped` (`scan_inputs`):
  ``SKIP_*`` below;
- a malformed listing (a VisA CSV that is not UTF-8, a row with too few or too many fields,
  an empty image cell) raises ValueError naming the CSV and its line.
"""
from __future__ import annotations

import csv
import functools
import io
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import fsspec
from fsspec import AbstractFileSystem

from .elements import make_image_id
from .uris import is_storable, is_utf8, literal_fs, printable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LAYOUTS = ("auto", "folder", "mvtec", "visa", "tar")
DEFAULT_CATEGORY = "object"
VISA_CSV = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}

KIND_IMAGE = "image"
KIND_TAR = "tar"

# Unit problems (error_type of the one failure row the reader gives such a unit).
NON_UTF8_NAME = "NonUtf8Name"
INVALID_PATH = "InvalidPath"
DUPLICATE_INPUT = "DuplicateInput"

# Reasons a listed file is left out on purpose (keys of `Listing.skipped`).
SKIP_EXTENSION = "unsupported extension"
SKIP_IMAGE_IN_TAR_LAYOUT = "image (layout 'tar')"
SKIP_TAR_IN_FOLDER_LAYOUT = "tar shard (layout 'folder')"
SKIP_MVTEC_OUTSIDE_SPLIT = "MVTec-AD image outside <split>/<defect>/"
SKIP_MVTEC_UNUSED_MASK = "MVTec-AD mask of no listed image"
SKIP_VISA_NOT_LISTED = "VisA file not named by the split's CSV rows"
SKIP_OTHER_CATEGORY = "image of another category than --category"


@functools.total_ordering
@dataclass(frozen=True)
class InputUnit:
    """One piece of reading work: a single image file or a whole tar shard.

    Frozen, hashable and ordered (by kind, then uri, ...; None sorts first), so unit lists from
    several inputs can be merged and de-duplicated deterministically; small and picklable for
    `beam.Create`.

    uri: canonical fsspec URL of the file.
    category: the image's category; for a shard, the default for samples that name none.
    label: 1 anomalous, 0 normal, None unknown. With label 0 and no mask_uri the ground truth is
        an all-False mask; with label 1 the mask at mask_uri is required.
    mask_uri: ground-truth mask URL, or None.
    problem: "" for a readable unit, else the error_type of the one failure row it becomes
        (NonUtf8Name, InvalidPath, DuplicateInput); `detail` is that row's message.
    repeat: 0 for the first listing of `uri`, k for its k-th repeat (a DuplicateInput unit, whose
        image id is `make_image_id(uri, f"repeat {k}")`).
    """

    kind: str
    uri: str
    category: str
    label: Optional[int] = None
    mask_uri: Optional[str] = None
    problem: str = ""
    detail: str = ""
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (KIND_IMAGE, KIND_TAR):
            raise ValueError(f"unknown unit kind {self.kind!r}")

    @property
    def image_id(self) -> str:
        """The id of the row this listing becomes when the unit itself is the row (a listing
        problem, a unit never read): `make_image_id(uri)`, or with `f"repeat {k}"` for a repeat."""
        return make_image_id(self.uri, f"repeat {self.repeat}") if self.repeat else make_image_id(self.uri)

    def _order(self) -> tuple:
        return (self.kind, self.uri, self.category, self.label is not None, self.label or 0,
                self.mask_uri is not None, self.mask_uri or "", self.problem, self.detail, self.repeat)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, InputUnit):
            return NotImplemented
        return self._order() < other._order()


@dataclass
class Listing:
    """What `scan_inputs` found: the units to read, sorted by URI, and how many files it left
    out on purpose, by reason (`SKIP_*`; category selection counts the units it drops)."""

    units: list[InputUnit]
    skipped: dict[str, int] = field(default_factory=dict)


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def is_tar_path(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


@dataclass(frozen=True)
class InputSpec:
    """One `--input` URL and how to list it (`scan_inputs`' arguments): what the launcher hands
    the pipeline, which lists it on a worker."""

    url: str
    layout: str = "auto"
    category: Optional[str] = None
    split: Optional[str] = "test"

    def scan(self) -> Listing:
        return scan_inputs(self.url, self.layout, self.category, self.split)


def check_input(spec: InputSpec) -> None:
    """The launcher's cheap check of an input before the pipeline lists it: a literal file or
    folder must exist, a glob's folder (the path up to its first wildcard) must exist; no
    listing. Raises ValueError naming the input, as `scan_inputs` would."""
    fs, path, glob = _resolve_input(spec.url, spec.layout)
    if glob:
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0]
        if base and not fs.isdir(base):
            raise ValueError(f"input {spec.url!r} matches no files")
    elif not fs.exists(path):
        raise ValueError(f"input {spec.url!r} matches no files")


def list_inputs(
    url: str,
    layout: str = "auto",
    category: Optional[str] = None,
    split: Optional[str] = "test",
) -> list[InputUnit]:
    """List the work units of `url`, sorted by URI. Raises ValueError for an unusable input.
    `scan_inputs` gives the same units plus the counts of files left out on purpose."""
    return scan_inputs(url, layout, category, split).units


def scan_inputs(
    url: str,
    layout: str = "auto",
    category: Optional[str] = None,
    split: Optional[str] = "test",
) -> Listing:
    """List `url` (see the module doc): units sorted by URI (the repeats of one URI in listing
    order) and skipped files counted by reason. Raises ValueError for an unusable input."""
    fs, path, glob = _resolve_input(url, layout)
    if glob:
        files = _glob_files(fs, path)
        root = None
    else:
        root = path.rstrip("/") or path
        files = sorted(fs.find(root))
    if not files:
        raise ValueError(f"input {url!r} matches no files")
    rels = [_relative(p, root) for p in files] if root is not None else []
    if layout == "auto":
        layout = _detect_layout(rels)
    skipped: Counter = Counter()
    if layout == "visa":
        units = _visa_units(fs, root, rels, split, url, skipped)
    elif layout == "mvtec":
        units = _mvtec_units(fs, root, rels, split, url, skipped)
    else:
        units = _file_units(fs, files, layout, category or DEFAULT_CATEGORY, url, skipped)
    if category is not None and layout in ("mvtec", "visa"):
        units = _select_category(units, category, url, skipped)
    units = [_checked_names(unit) for unit in units]
    return Listing(sorted(units, key=lambda unit: unit.uri), dict(sorted(skipped.items())))


def _resolve_input(url: str, layout: str) -> tuple[AbstractFileSystem, str, bool]:
    """(fs, path, glob) of an input URL for `layout`: glob is True when the URL names nothing
    literally and is read as a wildcard pattern. ValueError for an unknown layout, or a glob given
    to a layout that needs a root folder."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    fs, path, literal = _resolve(url)
    glob = not literal and _has_magic(path)
    if glob and layout in ("mvtec", "visa"):
        raise ValueError(f"layout {layout!r} needs a root folder, not a glob: {url!r}")
    return fs, path, glob


def _resolve(url: str) -> tuple[AbstractFileSystem, str, bool]:
    """(fs, path, literal): an existing file or folder named by `url` literally wins over
    reading `url` as a glob or an fsspec chain."""
    if "::" in url or _has_magic(url):
        try:
            fs, path = literal_fs(url)
            if fs.exists(path):
                return fs, path, True
        except (ImportError, ValueError, OSError):
            pass  # not a usable single-file-system URL: read it as fsspec syntax below
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path, False


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _checked_names(unit: InputUnit) -> InputUnit:
    """A unit whose URI or mask URI cannot be stored as text, or whose category is not valid
    UTF-8 (an MVTec folder name), becomes a problem unit (NonUtf8Name / InvalidPath) with those
    shown by `printable`."""
    texts = [unit.uri, unit.mask_uri or "", unit.category]
    if is_storable(unit.uri) and is_storable(unit.mask_uri or "") and is_utf8(unit.category):
        return unit  # a NUL in a category (a VisA cell) is only data: it is stored as is
    uri, mask_uri = printable(unit.uri), (None if unit.mask_uri is None else printable(unit.mask_uri))
    if unit.problem:
        problem, detail = unit.problem, unit.detail
    elif not all(is_utf8(text) for text in texts):
        problem = NON_UTF8_NAME
        if not is_utf8(unit.uri):
            detail = f"{uri}: file name is not valid UTF-8 (undecodable bytes shown as \\xNN)"
        elif not is_utf8(unit.mask_uri or ""):
            detail = f"{uri}: its mask's name is not valid UTF-8: {mask_uri}"
        else:
            detail = f"{uri}: category {printable(unit.category)!r} is not valid UTF-8"
    else:
        problem = INVALID_PATH
        detail = f"{uri}: path holds a NUL byte" if not is_storable(unit.uri) else \
            f"{uri}: mask path {mask_uri} holds a NUL byte"
    return InputUnit(unit.kind, uri, printable(unit.category), unit.label, mask_uri, problem, detail,
                     unit.repeat)


def _glob_files(fs: AbstractFileSystem, pattern: str) -> list[str]:
    """Files matching a glob; a matched folder contributes every file below it."""
    files: list[str] = []
    for path, info in fs.glob(pattern, detail=True).items():
        files.extend(fs.find(path) if info.get("type") == "directory" else [path])
    return sorted(set(files))


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if path.startswith(root) else path


def _detect_layout(rels: list[str]) -> str:
    if VISA_CSV in rels:
        return "visa"
    parts = [r.split("/") for r in rels]
    single = {p[0] for p in parts if len(p) > 1}
    if {"test", "ground_truth"} <= single:
        return "mvtec"
    per_category: dict[str, set[str]] = {}
    for p in parts:
        if len(p) > 2:
            per_category.setdefault(p[0], set()).add(p[1])
    if any({"test", "ground_truth"} <= dirs for dirs in per_category.values()):
        return "mvtec"
    return "files"


def _file_units(
    fs: AbstractFileSystem, files: list[str], layout: str, category: str, url: str, skipped: Counter
) -> list[InputUnit]:
    want_images = layout in ("files", "folder")
    want_tars = layout in ("files", "tar")
    units = []
    for p in files:
        if is_image_path(p):
            if want_images:
                units.append(InputUnit(KIND_IMAGE, fs.unstrip_protocol(p), category))
            else:
                skipped[SKIP_IMAGE_IN_TAR_LAYOUT] += 1
        elif is_tar_path(p):
            if want_tars:
                units.append(InputUnit(KIND_TAR, fs.unstrip_protocol(p), category))
            else:
                skipped[SKIP_TAR_IN_FOLDER_LAYOUT] += 1
        else:
            skipped[SKIP_EXTENSION] += 1
    if not units:
        kinds = {"files": "images or tar shards", "folder": "images", "tar": "tar shards"}[layout]
        raise ValueError(f"input {url!r} holds no {kinds} ({len(files)} other files)")
    return units


def _mvtec_units(
    fs: AbstractFileSystem, root: Optional[str], rels: list[str], split: Optional[str], url: str,
    skipped: Counter,
) -> list[InputUnit]:
    """Units of an MVTec-AD root, one category (`<root>/<split>/...`) or many."""
    split = split or "test"
    parts = [r.split("/") for r in rels]
    single_category = any(len(p) == 3 and p[0] == split for p in parts)
    depth = 3 if single_category else 4
    units = []
    left_out = []
    for p in parts:
        if not is_image_path(p[-1]):
            skipped[SKIP_EXTENSION] += 1
            continue
        if len(p) != depth or p[-3] != split:
            left_out.append(posixpath.join(root, *p))
            continue
        prefix = p[:-3]
        category = prefix[0] if prefix else posixpath.basename(root)
        defect, name = p[-2], p[-1]
        image = posixpath.join(root, *p)
        if defect == "good":
            units.append(InputUnit(KIND_IMAGE, fs.unstrip_protocol(image), category, 0))
            continue
        stem = posixpath.splitext(name)[0]
        mask = posixpath.join(root, *prefix, "ground_truth", defect, f"{stem}_mask.png")
        units.append(
            InputUnit(
                KIND_IMAGE, fs.unstrip_protocol(image), category, 1, fs.unstrip_protocol(mask)
            )
        )
    if not units:
        raise ValueError(f"input {url!r}: no MVTec-AD images under '{split}/<defect>/'")
    masks = {unit.mask_uri for unit in units}
    for path in left_out:
        if fs.unstrip_protocol(path) in masks:
            continue  # read as the ground truth of a listed image
        in_ground_truth = "ground_truth" in path[len(root):].split("/")
        skipped[SKIP_MVTEC_UNUSED_MASK if in_ground_truth else SKIP_MVTEC_OUTSIDE_SPLIT] += 1
    return units


def _visa_units(
    fs: AbstractFileSystem, root: Optional[str], rels: list[str], split: Optional[str], url: str,
    skipped: Counter,
) -> list[InputUnit]:
    """Units of a VisA root, from `split_csv/1cls.csv`; referenced files are not checked here
    (a missing one becomes a FileNotFound / MissingMask failure when read). A path with a NUL
    byte becomes an InvalidPath unit; a file named again by a later row a DuplicateInput unit."""
    if VISA_CSV not in rels:
        raise ValueError(f"input {url!r} is not a VisA root: no {VISA_CSV}")
    csv_path = posixpath.join(root, VISA_CSV)
    csv_url = fs.unstrip_protocol(csv_path)
    try:
        text = fs.cat_file(csv_path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = fs.cat_file(csv_path)[: err.start].count(b"\n") + 1
        raise ValueError(f"{csv_url} line {line}: not UTF-8 text ({err.reason})") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
    except csv.Error as err:
        raise ValueError(f"{csv_url} line {reader.line_num}: {err}") from None
    if missing:
        raise ValueError(f"{csv_url}: missing columns {missing}")
    units = []
    first: dict[str, tuple[int, InputUnit]] = {}  # image URI → (line, unit) of its first listing
    repeats: Counter = Counter()
    referenced = {VISA_CSV}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"{csv_url} line {reader.line_num}: {err}") from None
        line = reader.line_num
        if None in row or any(row.get(c) is None for c in VISA_COLUMNS):
            fields = len(reader.fieldnames) + len(row.get(None) or []) - sum(v is None for v in row.values())
            raise ValueError(
                f"{csv_url} line {line}: {fields} fields, the header has {len(reader.fieldnames)}"
            )
        if split is not None and row["split"].strip() != split:
            continue
        label = VISA_LABELS.get(row["label"].strip())
        if label is None:
            raise ValueError(
                f"{csv_url} line {line}: label {row['label']!r} is not one of {sorted(VISA_LABELS)}"
            )
        image_rel, mask_rel = row["image"].strip(), row["mask"].strip()
        if not image_rel:
            raise ValueError(f"{csv_url} line {line}: empty image path")
        referenced.update({posixpath.normpath(image_rel), posixpath.normpath(mask_rel) if mask_rel else ""})
        mask = fs.unstrip_protocol(posixpath.normpath(posixpath.join(root, mask_rel))) if mask_rel and label else None
        image = fs.unstrip_protocol(posixpath.normpath(posixpath.join(root, image_rel)))
        unit = InputUnit(KIND_IMAGE, image, row["object"].strip(), label, mask)
        if "\x00" in image_rel or (label and "\x00" in mask_rel):
            which = "image" if "\x00" in image_rel else "mask"
            unit = InputUnit(KIND_IMAGE, printable(image), unit.category, label,
                             None if mask is None else printable(mask), INVALID_PATH,
                             f"{printable(image)}: {which} path holds a NUL byte ({csv_url} line {line})")
        elif image in first:
            first_line, kept = first[image]
            repeats[image] += 1
            unit = InputUnit(
                KIND_IMAGE, image, unit.category, label, mask, DUPLICATE_INPUT,
                f"{image}: listed again at {csv_url} line {line} (label {row['label'].strip()}); "
                f"read once, as listed at line {first_line} (label "
                f"{'anomaly' if kept.label else 'normal'})", repeats[image],
            )
        else:
            first[image] = (line, unit)
        units.append(unit)
    if not units:
        raise ValueError(f"{csv_url}: no rows with split {split!r}")
    for rel in rels:
        if rel not in referenced:
            skipped[SKIP_VISA_NOT_LISTED if is_image_path(rel) else SKIP_EXTENSION] += 1
    return units


def _select_category(units: list[InputUnit], category: str, url: str, skipped: Counter) -> list[InputUnit]:
    selected = [u for u in units if u.category == category]
    if not selected:
        found = sorted({u.category for u in units})
        raise ValueError(f"input {url!r} has no category {category!r}; found {found}")
    if len(units) > len(selected):
        skipped[SKIP_OTHER_CATEGORY] += len(units) - len(selected)
    return selected
