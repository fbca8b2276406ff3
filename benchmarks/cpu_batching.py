"""What one-image-per-forward-pass costs on CPU, and what batching would change in the results.

    python benchmarks/cpu_batching.py [--store DIR --profile tiny] [--images 32] [--size 512] [--batch 8]
        [--categories 4] [--repeats 3] [--append]

On CPU, `clipsam.device.forward_chunks` gives every image its own forward pass, so an image's
scores cannot depend on which images Beam put into its batch (reruns stay bit-identical). This
script runs stage 1 and stage 2 of the same images both ways, in one process with one torch
thread, interleaved and repeated, and prints:
- ms per image with one image per pass and with `--batch` images per pass, and the speed-up;
- how far batched results are from per-image results (max |Δ| of rough and final maps) and
  whether a batch of the same size but different batch-mates gives bit-identical maps (which
  a fixed micro-batch size would need).
Without `--store` it copies the shipped tiny store (never trains).
"""
from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clipsam.device as device_rules  # noqa: E402
import clipsam.sam_adapter as sam_adapter  # noqa: E402
import clipsam.stage1 as stage1  # noqa: E402
from model_store import load_clipsam  # noqa: E402
from tiny import synthetic  # noqa: E402


def chunks_of(size: int):
    def forward_chunks(items, device):
        for start in range(0, len(items), size):
            yield items[start : start + size]
    return forward_chunks


def use_chunks(function) -> None:
    """Make stage 1 and SAM's encoder use `function` to cut batches into forward passes."""
    stage1.forward_chunks = function
    sam_adapter.forward_chunks = function


def score(model, images, categories, batch: int):
    """Predictions of `images`, `batch` at a time through both stages."""
    out = []
    for start in range(0, len(images), batch):
        out += model.predict_batch(images[start : start + batch], categories[start : start + batch])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--categories", type=int, default=4, help="synthetic categories (each costs a text matrix)")
    parser.add_argument("--append", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from tiny.build import make_tiny

            store = str(Path(tmp) / "store")
            make_tiny(store)
        model, _ = load_clipsam(store, args.profile, device="cpu")
        categories = list(synthetic.TEST_CATEGORIES[: args.categories])
        samples = [synthetic.generate_image(categories[i % len(categories)], seed=1234, index=i, anomalous=(i % 4 == 0),
                                            size=args.size, split="cpu-batching") for i in range(args.images)]
        images = [s.image for s in samples]
        cats = [s.category for s in samples]
        per_image = chunks_of(1)
        batched = chunks_of(args.batch)
        use_chunks(per_image)
        score(model, images[:2], cats[:2], 2)  # warm-up (text matrices, allocations)
        times = {"per image": [], "batched": []}
        for _ in range(args.repeats):
            for name, rule in (("per image", per_image), ("batched", batched)):
                use_chunks(rule)
                start = time.perf_counter()
                result = score(model, images, cats, args.batch)
                times[name].append((time.perf_counter() - start) / len(images) * 1000)
                if name == "per image":
                    reference = result
                else:
                    batched_result = result
        use_chunks(batched)
        rotated = score(model, images[1:] + images[:1], cats[1:] + cats[:1], args.batch)  # other batch-mates
        rotated = rotated[-1:] + rotated[:-1]
    use_chunks(device_rules.forward_chunks)
    rough = max(float(np.abs(a.rough_map - b.rough_map).max()) for a, b in zip(reference, batched_result, strict=True))
    final = max(float(np.abs(a.final_map - b.final_map).max()) for a, b in zip(reference, batched_result, strict=True))
    identical = all(np.array_equal(a.final_map, b.final_map) for a, b in zip(batched_result, rotated, strict=True))
    best = {name: min(values) for name, values in times.items()}
    lines = [
        f"profile {args.profile}, {args.images} images of {args.size} px ({len(categories)} categories), "
        f"batches of {args.batch}, 1 torch thread, "
        f"fastest of {args.repeats}",
        "",
        "| forward passes | ms / image |",
        "|---|---|",
        f"| one image each (today) | {best['per image']:.1f} |",
        f"| {args.batch} images each | {best['batched']:.1f} |",
        f"| speed-up | {best['per image'] / best['batched']:.2f}× |",
        "",
        f"max |batched − per image|: rough map {rough:.2e}, final map {final:.2e}; same batch size, other "
        f"batch-mates bit-identical: {identical}",
    ]
    print("\n".join(lines))
    if args.append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        command = "python benchmarks/cpu_batching.py " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write(f"\n## CPU forward passes: one image each vs batched\n\n{dt.date.today()}, 2-core VM, git {commit}\n\n"
                         f"`{command}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
