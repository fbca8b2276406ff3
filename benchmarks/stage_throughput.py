"""Throughput of the two model stages, and what skipping SAM on unprompted images saves.

    python benchmarks/stage_throughput.py [--store DIR] [--profile tiny] [--images 32] [--device cpu]

Prints images/s of stage 1 (CLIP + UMCI) and stage 2 (MMR + SAM) on the same images twice:
once as they come (SAM only where the rough map has a component) and once with every image
forced through SAM (prompt threshold 0), plus the ratio. Uses seeded synthetic 256-px images;
without --store it builds the tiny profile in a temporary folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tiny.synthetic import TEST_CATEGORIES, generate_image
from model_store.loading import load_stage1, load_stage2


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="model store root (default: build the tiny profile in a temp dir)")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    store = args.store
    if store is None:
        from tiny.build import make_tiny

        store = tempfile.mkdtemp(prefix="clipsam-bench-")
        make_tiny(store)
    samples = [
        generate_image(TEST_CATEGORIES[i % len(TEST_CATEGORIES)], seed=1, index=i, anomalous=i % 4 == 0)
        for i in range(args.images)
    ]
    images = [s.image for s in samples]
    categories = [s.category for s in samples]
    mapper, _ = load_stage1(store, args.profile, args.device)
    refiner, _ = load_stage2(store, args.profile, args.device)
    forced, _ = load_stage2(store, args.profile, args.device, overrides={"mmr": {"prompt_threshold": 0.0}})
    mapper(images[:2], categories[:2])  # warm-up: text matrices, allocator

    rough, t1 = [], 0.0
    for start in range(0, len(images), args.batch_size):
        out, dt = timed(mapper, images[start : start + args.batch_size], categories[start : start + args.batch_size])
        rough.extend(out)
        t1 += dt
    _, t2 = timed(refiner, images, rough)
    _, t2_forced = timed(forced, images, rough)
    used = refiner.sam.encoder_images
    n = len(images)
    print(f"profile {args.profile} on {args.device}, {n} images of 256 px, batch {args.batch_size}")
    print(f"stage 1 (CLIP + UMCI):            {n / t1:8.1f} images/s")
    print(f"stage 2, SAM where prompted:      {n / t2:8.1f} images/s  (SAM encoder ran on {used}/{n} images)")
    print(f"stage 2, SAM on every image:      {n / t2_forced:8.1f} images/s")
    print(f"speed-up from skipping SAM:       {t2_forced / t2:8.2f}x")


if __name__ == "__main__":
    main()
