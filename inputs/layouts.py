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
  category = `category` or ``"object"`` (a shard's samples may name their own, see read.py).

For ``mvtec`` and ``visa``, `category` selects one category instead of naming it.
Unit URIs are canonical fsspec URLs (``file:///abs/path`` for local files), so the same data
reached as ``./data`` or ``/abs/data`` gets the same image ids.
"""
from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass
from typing import Optional

import fsspec
from fsspec import AbstractFileSystem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LAYOUTS = ("auto", "folder", "mvtec", "visa", "tar")
DEFAULT_CATEGORY = "object"
VISA_CSV = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}

KIND_IMAGE = "image"
KIND_TAR = "tar"


@dataclass(frozen=True, order=True)
class InputUnit:
    """One piece of reading work: a single image file or a whole tar shard.

    Frozen, hashable and ordered (by kind, then uri, ...), so unit lists from several inputs
    can be merged and de-duplicated deterministically; small and picklable for `beam.Create`.

    uri: canonical fsspec URL of the file.
    category: the image's category; for a shard, the default for samples that name none.
    label: 1 anomalous, 0 normal, None unknown. With label 0 and no mask_uri the ground truth is
        an all-False mask; with label 1 the mask at mask_uri is required.
    mask_uri: ground-truth mask URL, or None.
    """

    kind: str
    uri: str
    category: str
    label: Optional[int] = None
    mask_uri: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in (KIND_IMAGE, KIND_TAR):
            raise ValueError(f"unknown unit kind {self.kind!r}")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def is_tar_path(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def list_inputs(
    url: str,
    layout: str = "auto",
    category: Optional[str] = None,
    split: Optional[str] = "test",
) -> list[InputUnit]:
    """List the work units of `url`, sorted by URI. Raises ValueError for an unusable input."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    fs, path = fsspec.core.url_to_fs(url)
    if _has_magic(path):
        if layout in ("mvtec", "visa"):
            raise ValueError(f"layout {layout!r} needs a root folder, not a glob: {url!r}")
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
    if layout == "visa":
        units = _visa_units(fs, root, rels, split, url)
    elif layout == "mvtec":
        units = _mvtec_units(fs, root, rels, split, url)
    else:
        units = _file_units(fs, files, layout, category or DEFAULT_CATEGORY, url)
    if category is not None and layout in ("mvtec", "visa"):
        units = _select_category(units, category, url)
    return sorted(units, key=lambda unit: unit.uri)


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


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
    fs: AbstractFileSystem, files: list[str], layout: str, category: str, url: str
) -> list[InputUnit]:
    want_images = layout in ("files", "folder")
    want_tars = layout in ("files", "tar")
    units = [
        InputUnit(KIND_IMAGE, fs.unstrip_protocol(p), category)
        for p in files
        if want_images and is_image_path(p)
    ] + [
        InputUnit(KIND_TAR, fs.unstrip_protocol(p), category)
        for p in files
        if want_tars and is_tar_path(p)
    ]
    if not units:
        kinds = {"files": "images or tar shards", "folder": "images", "tar": "tar shards"}[layout]
        raise ValueError(f"input {url!r} holds no {kinds} ({len(files)} other files)")
    return units


def _mvtec_units(
    fs: AbstractFileSystem, root: Optional[str], rels: list[str], split: Optional[str], url: str
) -> list[InputUnit]:
    """Units of an MVTec-AD root, one category (`<root>/<split>/...`) or many."""
    split = split or "test"
    parts = [r.split("/") for r in rels]
    single_category = any(len(p) == 3 and p[0] == split for p in parts)
    depth = 3 if single_category else 4
    units = []
    for p in parts:
        if len(p) != depth or p[-3] != split or not is_image_path(p[-1]):
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
    return units


def _visa_units(
    fs: AbstractFileSystem, root: Optional[str], rels: list[str], split: Optional[str], url: str
) -> list[InputUnit]:
    """Units of a VisA root, from `split_csv/1cls.csv`; referenced files are not checked here
    (a missing one becomes a FileNotFound / MissingMask failure when read)."""
    if VISA_CSV not in rels:
        raise ValueError(f"input {url!r} is not a VisA root: no {VISA_CSV}")
    csv_path = posixpath.join(root, VISA_CSV)
    reader = csv.DictReader(io.StringIO(fs.cat_file(csv_path).decode("utf-8-sig")))
    missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{fs.unstrip_protocol(csv_path)}: missing columns {missing}")
    units = []
    for line, row in enumerate(reader, start=2):
        if split is not None and row["split"].strip() != split:
            continue
        label = VISA_LABELS.get(row["label"].strip())
        if label is None:
            raise ValueError(
                f"{fs.unstrip_protocol(csv_path)} line {line}: label {row['label']!r} is not "
                f"one of {sorted(VISA_LABELS)}"
            )
        mask_rel = row["mask"].strip()
        mask = fs.unstrip_protocol(posixpath.join(root, mask_rel)) if mask_rel and label else None
        image = fs.unstrip_protocol(posixpath.join(root, row["image"].strip()))
        units.append(InputUnit(KIND_IMAGE, image, row["object"].strip(), label, mask))
    if not units:
        raise ValueError(f"{fs.unstrip_protocol(csv_path)}: no rows with split {split!r}")
    return units


def _select_category(units: list[InputUnit], category: str, url: str) -> list[InputUnit]:
    selected = [u for u in units if u.category == category]
    if not selected:
        found = sorted({u.category for u in units})
        raise ValueError(f"input {url!r} has no category {category!r}; found {found}")
    return selected
