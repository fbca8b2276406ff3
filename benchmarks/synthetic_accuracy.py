"""Does the method work? Zero-shot accuracy of the trained `tiny` profile on unseen categories.

    python benchmarks/synthetic_accuracy.py [--store DIR] [--split test] [--normal 8] [--anomalous 16] [--real DIR]

Scores seeded synthetic images of the held-out categories (`tiny.synthetic.TEST_CATEGORIES`:
no training step of the tiny profile saw them or, for two of them, their kind) three ways and
prints the mean over categories of pixel AUROC / AP / F1-max / AU-PRO and image AUROC:

  (a) plain CLIP: the last block's patch tokens through CLIP's own ln_post and projection,
      compared with the prompt-ensemble text matrix (softmax over normal/abnormal) — what
      frozen CLIP says without UMCI;
  (b) UMCI: the rough map M_clip of stage 1;
  (c) UMCI + MMR: the final map after SAM refinement (stage 2), i.e. what the pipeline writes.

--split validation scores 32 made-up categories instead (`tiny.build.validation_categories`:
no step of the build saw them either). Choose settings such as τ or α there; the test split only
reports, so its numbers are not tuned to.

With --real DIR (an MVTec-AD-layout folder, e.g. tests/data/real/mvtec_ad) the same three rows are printed
for those images. Without --store the trained tiny profile is built (or taken from its cache,
`$CLIPSAM_CACHE/tiny-builds`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipsam.metrics import CategoryMetricsAccumulator
from clipsam.model import ClipSAM
from tiny.synthetic import TEST_CATEGORIES, generate_image
from clipsam.clip_features import ClipFeatureTap, preprocess_images
from model_store import load_clipsam
from tiny.build import make_tiny
from tiny.recipe import validation_categories

ROWS = ("plain CLIP", "UMCI", "UMCI + MMR")
COLUMNS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "image_auroc")


@torch.inference_mode()
def plain_clip_map(model: ClipSAM, image: np.ndarray, category: str) -> np.ndarray:
    """Baseline (a): softmax(s · proj(ln_post(x_last)) · Tᵀ)[abnormal], upsampled to the image."""
    mapper = model.stage1
    visual = mapper.clip.visual
    batch = preprocess_images([image], mapper.config.clip).to(mapper.device)
    last = len(visual.transformer.resblocks)
    tap = ClipFeatureTap(mapper.clip, dataclasses.replace(mapper.config.clip, layers=(last,), tap_layernorm=True))
    tokens = tap(batch).patch_tokens[0]  # [1, h, w, C], ln_post applied
    embedded = F.normalize((tokens @ visual.proj).float(), dim=-1)
    text = F.normalize(mapper.text.stack([category]).float(), dim=-1)  # [1, 2, D]
    probs = torch.softmax(mapper.config.umci.logit_scale * torch.einsum("bhwd,bkd->bkhw", embedded, text), dim=1)
    up = F.interpolate(probs[:, 1:], size=image.shape[:2], mode="bilinear", align_corners=False)
    return up[0, 0].cpu().numpy()


def score(model: ClipSAM, samples: Sequence, log_every: int = 50) -> dict[str, dict[str, CategoryMetricsAccumulator]]:
    """Per row and category, metric accumulators over `samples` (objects with image, mask, category)."""
    accumulators: dict[str, dict[str, CategoryMetricsAccumulator]] = {row: {} for row in ROWS}
    start = time.perf_counter()
    for n, sample in enumerate(samples, start=1):
        prediction = model.predict(sample.image, sample.category)
        plain = plain_clip_map(model, sample.image, sample.category)
        label = int(sample.mask.any())
        maps = {
            ROWS[0]: (plain, float(plain.max())),
            ROWS[1]: (prediction.rough_map, prediction.max_pixel_score),
            ROWS[2]: (prediction.final_map, prediction.image_score),
        }
        for row, (pixel_map, image_score) in maps.items():
            accumulator = accumulators[row].setdefault(sample.category, CategoryMetricsAccumulator())
            accumulator.add(np.clip(pixel_map, 0.0, 1.0), sample.mask, float(np.clip(image_score, 0.0, 1.0)), label)
        if n % log_every == 0 or n == len(samples):
            print(f"  scored {n}/{len(samples)} images ({n / (time.perf_counter() - start):.1f} img/s)", flush=True)
    return accumulators


def table(accumulators: dict[str, dict[str, CategoryMetricsAccumulator]]) -> dict[str, dict[str, float]]:
    """Mean over categories of each metric, per row (categories where a metric is undefined are skipped)."""
    out = {}
    for row, per_category in accumulators.items():
        results = [acc.result() for acc in per_category.values()]
        out[row] = {c: float(np.mean([r[c] for r in results if r[c] is not None])) for c in COLUMNS}
    return out


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':>12} " + " ".join(f"{c:>13}" for c in COLUMNS))
    for row, values in rows.items():
        print(f"{row:>12} " + " ".join(f"{values[c]:13.4f}" for c in COLUMNS))


def synthetic_test_set(normal: int, anomalous: int, size: int, seed: int,
                       categories: Sequence[str] = TEST_CATEGORIES) -> list:
    samples = []
    for category in categories:
        samples += [generate_image(category, seed=seed, index=i, anomalous=False, size=size, split="bench/good")
                    for i in range(normal)]
        samples += [generate_image(category, seed=seed, index=i, anomalous=True, size=size, split="bench/defect")
                    for i in range(anomalous)]
    return samples


def real_samples(root: Path) -> list:
    """Labelled images of an MVTec-AD-layout folder (test split) as simple sample objects."""
    from types import SimpleNamespace

    from PIL import Image

    samples = []
    for image_path in sorted(root.glob("*/test/*/*.png")):
        category, defect = image_path.parts[-4], image_path.parts[-2]
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.zeros(image.shape[:2], bool)
        if defect != "good":
            mask_path = root / category / "ground_truth" / defect / f"{image_path.stem}_mask.png"
            mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        samples.append(SimpleNamespace(image=image, mask=mask, category=category))
    return samples


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pick the model store and the synthetic images, shared by the benchmarks of this folder."""
    parser.add_argument("--store", help="model store root holding the tiny profile (default: build/cached)")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--normal", type=int, default=8, help="normal images per held-out category")
    parser.add_argument("--anomalous", type=int, default=16, help="anomalous images per held-out category")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1234, help="seed of the evaluation images")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test: the held-out TEST categories (report these); validation: 32 made-up "
                             "categories no build step saw, for choosing MMR settings (tune there, not on test)")


def split_samples(args: argparse.Namespace) -> list:
    """The seeded synthetic images of the chosen split (see `add_split_arguments`)."""
    categories = TEST_CATEGORIES if args.split == "test" else validation_categories()
    samples = synthetic_test_set(args.normal, args.anomalous, args.size, args.seed, categories)
    print(f"{args.split} split, synthetic categories ({len(categories)}): {', '.join(categories)}; {len(samples)} images")
    return samples


@contextlib.contextmanager
def benchmark_model(args: argparse.Namespace) -> Iterator[ClipSAM]:
    """The profile of --store; without it, the trained tiny profile, built (or taken from its cache)
    into a temporary store that is removed afterwards."""
    if args.store is not None:
        yield load_clipsam(args.store, args.profile)[0]
        return
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        make_tiny(store)
        print(f"tiny profile ready in {time.perf_counter() - start:.0f} s")
        yield load_clipsam(store, args.profile)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--real", type=Path, help="also score an MVTec-AD-layout folder")
    parser.add_argument("--json", type=Path, help="write the tables here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with benchmark_model(args) as model:
        key = "synthetic_held_out" if args.split == "test" else "synthetic_validation"
        tables = {key: table(score(model, split_samples(args)))}
        print_table(f"{args.split} split, mean over categories", tables[key])
        if args.real:
            real = real_samples(args.real)
            if not real:
                parser.error(f"--real {args.real}: no <category>/test/<defect>/*.png images there")
            print(f"\n{len(real)} real images from {args.real}")
            tables["real"] = table(score(model, real, log_every=10))
            print_table(f"real images ({args.real}), mean over categories", tables["real"])
    if args.json:
        args.json.write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
