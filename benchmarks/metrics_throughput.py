"""Throughput and memory of the binned metrics accumulator as the pixel count grows.

The claim under test (DESIGN §6): evaluation state is O(bins), so feeding 10x more pixels
costs 10x time and no extra memory. The script feeds `--pixels` pixels (default 10^9) as
1024x1024 maps into one CategoryMetricsAccumulator, reusing a few pre-generated maps and
masks so the generator does not dominate, and prints pixels/s and peak RSS at every decade
from 10^8 on, then the RSS ratio between the last and the first checkpoint.

    python benchmarks/metrics_throughput.py [--pixels 1e9] [--bins 65536] [--size 1024]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from clipsam.metrics import DEFAULT_BINS, CategoryMetricsAccumulator  # noqa: E402

FIRST_CHECKPOINT = 10**8
MEMORY_BUDGET_MB = 200.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Sample = tuple[np.ndarray, np.ndarray, float, int]


def sample_images(size: int, count: int, seed: int = 0) -> list[Sample]:
    """`count` (score map, mask, image score, label) tuples; every other one has defects."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        mask = np.zeros((size, size), dtype=bool)
        if index % 2:
            for _ in range(rng.integers(1, 6)):
                y, x = rng.integers(0, size - size // 8, 2)
                mask[y : y + rng.integers(4, size // 8), x : x + rng.integers(4, size // 8)] = True
        blurred = ndimage.gaussian_filter(mask.astype(np.float32), size / 200)
        scores = np.clip(0.5 * blurred + 0.5 * rng.random((size, size), dtype=np.float32), 0, 1)
        images.append((scores, mask, float(scores.max()), int(mask.any())))
    return images


def checkpoints(total: int) -> list[int]:
    """10^8, 10^9, ... up to `total`, and `total` itself."""
    marks = []
    mark = FIRST_CHECKPOINT
    while mark < total:
        marks.append(mark)
        mark *= 10
    return marks + [total]


def run(total_pixels: int, bins: int, size: int) -> list[tuple[int, float, float]]:
    """Feed images until `total_pixels`; (pixels, pixels/s, peak RSS MB) at each checkpoint."""
    images = sample_images(size, count=4)
    accumulator = CategoryMetricsAccumulator(bins)
    print(f"setup (imports, {len(images)} maps, accumulator): peak RSS {peak_rss_mb():.1f} MB")
    marks = checkpoints(total_pixels)
    rows = []
    fed = 0
    started = time.perf_counter()
    index = 0
    while marks:
        accumulator.add(*images[index % len(images)])
        index += 1
        fed += size * size
        if fed >= marks[0]:
            elapsed = time.perf_counter() - started
            rows.append((fed, fed / elapsed, peak_rss_mb()))
            rate, rss = fed / elapsed, rows[-1][2]
            print(f"{fed:>14,d} pixels  {rate:>14,.0f} pixels/s  peak RSS {rss:7.1f} MB", flush=True)
            while marks and fed >= marks[0]:
                marks.pop(0)
    result = accumulator.result()
    print(f"metrics: pixel AUROC {result['pixel_auroc']:.4f}, AU-PRO {result['pixel_aupro']:.4f}, "
          f"{result['counts']['n_images']} images, {result['counts']['n_regions']} regions")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", type=float, default=1e9, help="pixels to feed (>= 1e8)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS)
    parser.add_argument("--size", type=int, default=1024, help="side of the square maps")
    args = parser.parse_args()
    if args.pixels < FIRST_CHECKPOINT:
        parser.error(f"--pixels must be at least {FIRST_CHECKPOINT:.0e}")
    rows = run(int(args.pixels), args.bins, args.size)
    first, last = rows[0], rows[-1]
    ratio = last[2] / first[2]
    print(f"pixels x{last[0] / first[0]:.1f} -> peak RSS x{ratio:.3f} "
          f"({first[2]:.1f} MB -> {last[2]:.1f} MB); budget {MEMORY_BUDGET_MB:.0f} MB: "
          f"{'OK' if last[2] < MEMORY_BUDGET_MB else 'EXCEEDED'}")


if __name__ == "__main__":
    main()
