"""Write a seeded synthetic dataset in the MVTec-AD layout to any fsspec URL.

    python -m pipeline.make_synthetic --out ./synthetic --split train
    python -m pipeline.make_synthetic --out gs://bucket/synthetic --categories washer,my_part

The images come from :mod:`tiny.synthetic`; this module only adds file-system I/O, so
the synthetic generator stays free of fsspec (DESIGN §2). The demo and the tests use it for
MVTec-AD-layout inputs on disk; the tiny profile build generates its images in memory instead.
"""
from __future__ import annotations

import argparse
import posixpath
from typing import Sequence

import fsspec

from tiny.synthetic import categories_for_split, get_category, mvtec_layout


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
    fs, root = fsspec.core.url_to_fs(out_url)
    root = root.rstrip("/")
    made_dirs: set[str] = set()
    counts = {"categories": len(categories), "images": 0, "masks": 0}
    for relative_path, data in mvtec_layout(categories, seed=seed, n_train_good=n_train_good,
                                            n_test_good=n_test_good, n_test_defect=n_test_defect,
                                            size=size):
        path = f"{root}/{relative_path}"
        parent = posixpath.dirname(path)
        if parent not in made_dirs:  # local file systems need the folders; object stores ignore it
            fs.makedirs(parent, exist_ok=True)
            made_dirs.add(parent)
        with fs.open(path, "wb") as f:
            f.write(data)
        counts["masks" if relative_path.endswith("_mask.png") else "images"] += 1
    return counts


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
    which.add_argument("--split", choices=("train", "test", "all"), default="all",
                       help="write the registered categories of this zero-shot split (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0); same seed, same bytes")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (>= 32)")
    parser.add_argument("--n_train_good", type=int, default=10,
                        help="normal training images per category")
    parser.add_argument("--n_test_good", type=int, default=5, help="normal test images per category")
    parser.add_argument("--n_test_defect", type=int, default=3,
                        help="defective test images per defect type of each category")
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
    categories = args.categories if args.categories is not None else list(categories_for_split(args.split))
    if not categories:
        parser.error("--categories is empty")
    try:
        for name in categories:
            get_category(name)
    except ValueError as err:
        parser.error(str(err))
    counts = write_synthetic_dataset(args.out, categories, seed=args.seed, size=args.size,
                                     n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                                     n_test_defect=args.n_test_defect)
    print(f"wrote {counts['images']} images and {counts['masks']} masks for "
          f"{counts['categories']} categories ({', '.join(categories)}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
