"""Where stage 2 (MMR) gains or loses against the rough map, and how much it could gain.

    python benchmarks/mmr_headroom.py [--store DIR] [--split test|validation] [--normal 8] [--anomalous 16]

`synthetic_accuracy.py` says whether the final map beats the rough map; this says why not. On the
same seeded synthetic images it takes every component MMR prompts SAM with, one at a time, and
prints:

1. the components: how many touch a defect ("true", the box holds defect pixels) and how many do
   not ("false alarms"), with SAM's mean mask area (pixels ≥ 0.5) and mean best predicted IoU on
   each kind: does SAM turn down a false alarm?
2. inside the boxes of the true components, pixel precision / recall / F1 of the rough map ≥ τ and
   of SAM's map ≥ 0.5, summed over pixels: does SAM's mask fit the defect better than the
   thresholded rough map it was prompted with? (Large defects weigh more here than in
   `make-tiny`'s per-component IoU check, as they do in the pixel metrics.)
3. the mean over categories of pixel AP and F1-max of the rough map, the final map, and the final
   map with SAM's map (the union over components) replaced by
     - SAM on the true components only: perfect false-alarm rejection;
     - the ground truth inside each box: a perfect SAM for these prompts;
     - every whole ground-truth region a box touches: a perfect SAM that also reaches past loose
       boxes.
   The last two bound what MMR can add with these components and this fusion.

Without --store the trained tiny profile is built (or taken from its cache), as in
`synthetic_accuracy.py`.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from clipsam.metrics import CategoryMetricsAccumulator
from clipsam.mmr import EIGHT_CONNECTED, box_mask, extract_prompts, fuse_with_rough
from clipsam.model import ClipSAM
from clipsam.stage1 import upsample_map
from synthetic_accuracy import add_split_arguments, benchmark_model, split_samples, table

MAPS = ("rough map", "final map", "final without false alarms", "ground truth in the boxes", "whole defects")


@dataclass
class PixelCounts:
    """True positive, false positive and false negative pixels of a binary mask against a target."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: np.ndarray, target: np.ndarray) -> None:
        self.tp += int((predicted & target).sum())
        self.fp += int((predicted & ~target).sum())
        self.fn += int((~predicted & target).sum())

    def line(self) -> str:
        precision = self.tp / max(1, self.tp + self.fp)
        recall = self.tp / max(1, self.tp + self.fn)
        f1 = 2 * self.tp / max(1, 2 * self.tp + self.fp + self.fn)
        return f"precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}"


@dataclass
class Headroom:
    """Everything the report prints, accumulated image by image."""

    areas: dict[bool, list[int]] = field(default_factory=lambda: {True: [], False: []})
    best_scores: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    in_box: dict[str, PixelCounts] = field(default_factory=lambda: {"rough map ≥ τ": PixelCounts(),
                                                                     "SAM ≥ 0.5": PixelCounts()})
    metrics: dict[str, dict[str, CategoryMetricsAccumulator]] = field(default_factory=lambda: {m: {} for m in MAPS})

    def add_map(self, name: str, category: str, pixel_map: np.ndarray, mask: np.ndarray) -> None:
        accumulator = self.metrics[name].setdefault(category, CategoryMetricsAccumulator())
        accumulator.add(np.clip(pixel_map, 0.0, 1.0), mask, float(pixel_map.max()), int(mask.any()))


@torch.inference_mode()
def diagnose(model: ClipSAM, samples: list, log_every: int = 50) -> Headroom:
    config, sam = model.stage2.config, model.stage2.sam
    report = Headroom()
    start = time.perf_counter()
    for n, sample in enumerate(samples, start=1):
        mask = np.asarray(sample.mask, bool)
        rough = upsample_map(model.stage1([sample.image], [sample.category])[0].rough_map, mask.shape)
        prompts = extract_prompts(rough, config)
        unions = {name: np.zeros_like(rough) for name in MAPS[1:]}
        if prompts:
            embedding = sam.embed([sample.image])[0]
            regions, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
            for prompt in prompts:
                sam_map, scores = model.stage2.sam_map(embedding, rough, [prompt])
                box = box_mask(prompt.box, mask.shape)
                target = mask & box
                true = bool(target.any())
                report.areas[true].append(int((sam_map >= 0.5).sum()))
                report.best_scores[true].append(float(scores.max()))
                if true:
                    report.in_box["rough map ≥ τ"].add((rough >= config.prompt_threshold) & box, target)
                    report.in_box["SAM ≥ 0.5"].add((sam_map >= 0.5) & box, target)
                touched = np.unique(regions[target])
                candidates = {
                    "final map": sam_map,
                    "final without false alarms": sam_map if true else None,
                    "ground truth in the boxes": target.astype(np.float32),
                    "whole defects": np.isin(regions, touched[touched > 0]).astype(np.float32),
                }
                for name, candidate in candidates.items():
                    if candidate is not None:
                        np.maximum(unions[name], candidate, out=unions[name])
        report.add_map(MAPS[0], sample.category, rough, mask)
        for name, union in unions.items():
            final = fuse_with_rough(rough, union if prompts else None, config.alpha)
            report.add_map(name, sample.category, final, mask)
        if n % log_every == 0 or n == len(samples):
            print(f"  diagnosed {n}/{len(samples)} images ({n / (time.perf_counter() - start):.1f} img/s)", flush=True)
    return report


def print_report(report: Headroom, threshold: float) -> None:
    print("\ncomponents MMR prompts SAM with")
    for true, label in ((True, "touch a defect"), (False, "false alarms")):
        areas, scores = report.areas[true], report.best_scores[true]
        if areas:
            print(f"  {len(areas):4d} {label:<15} SAM mask {np.mean(areas):7.1f} px, best predicted IoU {np.mean(scores):.3f}")
        else:
            print(f"  {0:4d} {label}")
    print(f"\ninside the boxes of the components that touch a defect (pixels summed; τ = {threshold})")
    for name, counts in report.in_box.items():
        print(f"  {name:<14} {counts.line()}")
    print("\nmean over categories")
    print(f"  {'':<30} {'pixel AP':>9} {'F1-max':>9}")
    for name, values in table(report.metrics).items():
        print(f"  {name:<30} {values['pixel_ap']:9.4f} {values['pixel_f1_max']:9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    args = parser.parse_args()
    with benchmark_model(args) as model:
        report = diagnose(model, split_samples(args))
        print_report(report, model.stage2.config.prompt_threshold)


if __name__ == "__main__":
    main()
