"""Write a seeded synthetic dataset in the MVTec-AD layout to any fsspec URL.

    python -m pipeline.make_synthetic --out ./synthetic --split train
    python -m pipeline.make_synthetic --out gs://bucket/synthetic --categories washer,my_part
    python -m pipeline.make_synthetic --out ./line_scan --line_scan 8192x1024 --defect_sides 8,30

The images come from :mod:`tiny.synthetic` (square images, ``--size``) or, with
``--line_scan WIDTHxHEIGHT``, from :mod:`tiny.line_scan` (wide textured frames with a few small
defects, for benchmarking tiled detection; default categories then the held-out texture
categories). This module only adds file-system I/O, so the generators stay free of fsspec
(DESIGN §2). The demo and the tests use it for MVTec-AD-layout inputs on disk; the tiny profile
build generates its images in memory instead.
"""
from __future__ import annotations

import argparse
import posixpath
import re
from collections.abc import Iterable, Sequence

import fsspec

from tiny.line_scan import (
    DEFAULT_DEFECT_SIDES,
    LINE_SCAN_CATEGORIES,
    MIN_FRAME_SIDE,
    line_scan_layout,
)
from tiny.synthetic import (
    TEXTURE_KINDS,
    categories_for_split,
    get_category,
    mvtec_layout,
)


def write_files(out_url: str, files: Iterable[tuple[str, bytes]], n_categories: int) -> dict[str, int]:
    """Write each (relative_path, bytes) of ``files`` under ``out_url``; return the counts.

    Returns ``{"categories": n_categories, "images": ..., "masks": ...}``: masks counts the
    paths ending in ``_mask.png``, images every other file. Folders are made as needed.
    """
    fs, root = fsspec.core.url_to_fs(out_url)
    root = root.rstrip("/")
    made_dirs: set[str] = set()
    counts = {"categories": n_categories, "images": 0, "masks": 0}
    for relative_path, data in files:
        path = f"{root}/{relative_path}"
        parent = posixpath.dirname(path)
        if parent not in made_dirs:  # local file systems need the folders; object stores ignore it
            fs.makedirs(parent, exist_ok=True)
            made_dirs.add(parent)
        with fs.open(path, "wb") as f:
            f.write(data)
        counts["masks" if relative_path.endswith("_mask.png") else "images"] += 1
    return counts


def write_synthetic_dataset(out_url: str, categories: Sequence[str], *, seed: int = 0,
                            size: int = 256, n_train_good: int = 10, n_test_good: int = 5,
                            n_test_defect: int = 3) -> dict[str, int]:
    """Write ``categories`` under ``out_url`` in the MVTec-AD layout; return the counts.

    ``n_test_defect`` is per defect type of each category. Returns
    ``{"categories": ..., "images": ..., "masks": ...}`` where images counts every image
    PNG (train and test) and masks the ground-truth PNGs. Category names are checked before
    anything is written.
    """
    for name in categories:
        get_category(name)
    return write_files(out_url, mvtec_layout(categories, seed=seed, n_train_good=n_train_good,
                                             n_test_good=n_test_good, n_test_defect=n_test_defect,
                                             size=size), len(categories))


def write_line_scan_dataset(out_url: str, categories: Sequence[str], *, width: int, height: int,
                            seed: int = 0, n_train_good: int = 10, n_test_good: int = 5,
                            n_test_defect: int = 3,
                            defect_sides: tuple[int, int] = DEFAULT_DEFECT_SIDES) -> dict[str, int]:
    """Write line-scan frames (``width`` x ``height`` pixels) of ``categories`` under ``out_url``
    in the MVTec-AD layout (:func:`tiny.line_scan.line_scan_layout`); return the counts as
    :func:`write_synthetic_dataset` does.

    ``n_test_defect`` is the number of defective frames per category in total, each filed under
    its own drawn defect type. Category names are checked before anything is written.
    """
    for name in categories:
        get_category(name)
    return write_files(out_url, line_scan_layout(categories, seed=seed, n_train_good=n_train_good,
                                                 n_test_good=n_test_good, n_test_defect=n_test_defect,
                                                 width=width, height=height, defect_sides=defect_sides),
                       len(categories))


def _parse_pair(text: str, sep: str) -> tuple[int, int] | None:
    """``"A<sep>B"`` of two decimal numbers (ASCII digits only) as (A, B), else None."""
    match = re.fullmatch(rf"([0-9]+){re.escape(sep)}([0-9]+)", text)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.make_synthetic",
        description="Write seeded synthetic industrial images with defect masks in the MVTec-AD "
                    "layout (<category>/train/good, test/<type>, ground_truth/<type>).")
    parser.add_argument("--out", required=True,
                        help="destination folder URL: a local path, memory://..., gs://..., s3://...")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--categories", type=lambda s: [c for c in s.split(",") if c],
                       help="comma-separated category names; unknown names get a stable made-up look")
    which.add_argument("--split", choices=("train", "test", "all"), default=None,
                       help="write the registered categories of this zero-shot split (default: all); "
                            "with --line_scan only its texture categories (default: those of test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0); same seed, same bytes")
    parser.add_argument("--size", type=int, default=256,
                        help="image side in pixels (>= 32); not used with --line_scan")
    parser.add_argument("--n_train_good", type=int, default=10,
                        help="normal training images per category")
    parser.add_argument("--n_test_good", type=int, default=5, help="normal test images per category")
    parser.add_argument("--n_test_defect", type=int, default=3,
                        help="defective test images per defect type of each category; with --line_scan "
                             "defective frames per category in total, each under its drawn defect type")
    parser.add_argument("--line_scan", metavar="WIDTHxHEIGHT", default=None,
                        help="write line-scan frames of this size instead of square images, e.g. 8192x1024 "
                             f"(both sides >= {MIN_FRAME_SIDE}): a blended mosaic of texture images with a few "
                             "small pasted defects; --size is then not used")
    parser.add_argument("--defect_sides", metavar="MIN,MAX", default=None,
                        help="with --line_scan: inclusive range of each defect's longest mask bounding-box "
                             f"side in pixels (default: {DEFAULT_DEFECT_SIDES[0]},{DEFAULT_DEFECT_SIDES[1]})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, validate everything, write the dataset, print a one-line summary."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.size < 32:
        parser.error("--size must be >= 32")
    if min(args.n_train_good, args.n_test_good, args.n_test_defect) < 0:
        parser.error("image counts must be >= 0")
    frame = None
    sides = DEFAULT_DEFECT_SIDES
    if args.line_scan is not None:
        frame = _parse_pair(args.line_scan, "x")
        if frame is None or min(frame) < MIN_FRAME_SIDE:
            parser.error(f"--line_scan must be WIDTHxHEIGHT with both sides >= {MIN_FRAME_SIDE} "
                         f"(e.g. 8192x1024), got {args.line_scan!r}")
    if args.defect_sides is not None:
        if frame is None:
            parser.error("--defect_sides needs --line_scan")
        parsed = _parse_pair(args.defect_sides, ",")
        if parsed is None or not 1 <= parsed[0] <= parsed[1] <= min(frame):
            parser.error(f"--defect_sides must be MIN,MAX with 1 <= MIN <= MAX <= the frame's shorter "
                         f"side ({min(frame)}), got {args.defect_sides!r}")
        sides = parsed
    if args.categories is not None:
        categories = args.categories
    elif frame is not None:
        categories = list(LINE_SCAN_CATEGORIES) if args.split is None else [
            c for c in categories_for_split(args.split) if get_category(c).kind in TEXTURE_KINDS]
    else:
        categories = list(categories_for_split(args.split or "all"))
    if not categories:
        parser.error("--categories is empty")
    try:
        for name in categories:
            get_category(name)
    except ValueError as err:
        parser.error(str(err))
    if frame is None:
        counts = write_synthetic_dataset(args.out, categories, seed=args.seed, size=args.size,
                                         n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                                         n_test_defect=args.n_test_defect)
    else:
        counts = write_line_scan_dataset(args.out, categories, width=frame[0], height=frame[1], seed=args.seed,
                                         n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                                         n_test_defect=args.n_test_defect, defect_sides=sides)
    print(f"wrote {counts['images']} images and {counts['masks']} masks for "
          f"{counts['categories']} categories ({', '.join(categories)}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
