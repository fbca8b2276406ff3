"""Small defects on line-scan frames: tiled against whole-frame scoring, rough map against final map.

    python benchmarks/resolution.py [--width 8192] [--height 1024] [--normal 2] [--defective 4]
        [--categories carbon_weave,anodized_panel,...] [--seed 0] [--quantile 0.999]
        [--store DIR] [--profile tiny] [--rss_frame 16000x2048] [--append]

Data: seeded synthetic line-scan frames (`tiny.line_scan`: a mosaic of one held-out texture
category with 2-5 pasted defects of 8-30 px), per category `--normal` good frames and
`--defective` frames with defects.

For `--tile=off` and `--tile=auto` (the profile's setting), both stages are run on every frame
through `model_store.load_clipsam` (the pipeline's own model code), and per category:
- the mask thresholds are calibrated as `pipeline.threshold` does it: the `--quantile` of the good
  frames' pixel scores (`clipsam.thresholds.NormalScoreQuantile`), for the rough and the final map;
- pixel AUROC and AU-PRO (FPR ≤ 0.3) from `clipsam.metrics` over all frames;
- per-defect recall: ground-truth defects of which the calibrated mask covers ≥ 10 %
  (`clipsam.defects.defects_found`);
- ms per megapixel of stage 1 and stage 2.
AUROC and AU-PRO are averaged over categories; recall is pooled over all defects.

`--rss_frame WxH` (default 16000x2048, "" to skip): one defective frame of that size is written
as a PNG and scored by `python -m pipeline.run` in a child process (FnApiRunner in one process,
so the worker is the launcher and holds both models, the decoded frame and its maps; overlays
and report on); its peak RSS (the child's ru_maxrss) is printed next to the same run on one
1024 × 1024 image. `--append` appends the tables to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import append_results, command_line, work_area  # noqa: E402

MODES = ("off", "auto")
MAPS = ("rough", "final")


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def score_frames(model, frames, category: str) -> list[dict]:
    """Per frame: the rough and final maps, image score and stage times (ms)."""
    out = []
    for sample in frames:
        start = time.perf_counter()
        rough = model.stage1([sample.image], [category])
        middle = time.perf_counter()
        prediction = model.stage2([sample.image], rough)[0]
        end = time.perf_counter()
        out.append({"rough": prediction.rough_map, "final": prediction.final_map, "score": prediction.image_score,
                    "max_rough": prediction.max_pixel_score, "stage1_ms": (middle - start) * 1e3,
                    "stage2_ms": (end - middle) * 1e3, "tiles": len(rough[0].tile_plan or [None])})
    return out


def evaluate(args: argparse.Namespace) -> dict:
    from clipsam.defects import defects_found
    from clipsam.metrics import CategoryMetricsAccumulator
    from clipsam.thresholds import NormalScoreQuantile
    from model_store import load_clipsam
    from tiny.line_scan import line_scan_frame

    results: dict = {mode: {"auroc": defaultdict(list), "aupro": defaultdict(list), "found": defaultdict(int),
                            "defects": defaultdict(int), "stage1_ms": 0.0, "stage2_ms": 0.0, "mp": 0.0,
                            "tiles": 0, "windows": 0, "thresholds": {}} for mode in MODES}
    auto = {"mode": "auto", **({"side": args.tile} if args.tile else {}),
            **({"sam_window": args.sam_window} if args.sam_window else {})}
    tiles = {"off": {"mode": "off"}, "auto": auto}
    models = {mode: load_clipsam(args.store, args.profile, device="cpu", overrides={"tile": tiles[mode]})[0]
              for mode in MODES}
    for category in args.categories:
        make = lambda i, bad: line_scan_frame(category, seed=args.seed, index=i, width=args.width,  # noqa: E731
                                              height=args.height, anomalous=bad)
        good = [make(i, False) for i in range(args.normal)]
        bad = [make(args.normal + i, True) for i in range(args.defective)]
        for mode, model in models.items():
            found = results[mode]
            encoded_before = model.stage2.sam.encoder_images
            good_scores, bad_scores = score_frames(model, good, category), score_frames(model, bad, category)
            found["windows"] += model.stage2.sam.encoder_images - encoded_before
            for kind in MAPS:
                quantile = NormalScoreQuantile()
                for scored in good_scores:
                    quantile.add(scored[kind])
                threshold = quantile.threshold(args.quantile)
                found["thresholds"][(category, kind)] = threshold
                metrics = CategoryMetricsAccumulator()
                for sample, scored in zip(good + bad, good_scores + bad_scores):
                    score = scored["score"] if kind == "final" else scored["max_rough"]
                    metrics.add(scored[kind], sample.mask, score, int(sample.mask.any()))
                    hits, total = defects_found(scored[kind] >= threshold, sample.mask)
                    found["found"][kind] += hits
                    found["defects"][kind] += total
                result = metrics.result()
                found["auroc"][kind].append(result["pixel_auroc"])
                found["aupro"][kind].append(result["pixel_aupro"])
            for scored, sample in zip(good_scores + bad_scores, good + bad):
                found["stage1_ms"] += scored["stage1_ms"]
                found["stage2_ms"] += scored["stage2_ms"]
                found["mp"] += sample.mask.size / 1e6
                found["tiles"] += scored["tiles"]
        print(f"  {category}: done", flush=True)
    return results


def accuracy_table(results: dict, frames: int) -> str:
    lines = ["| --tile | map | pixel AUROC | AU-PRO | per-defect recall | stage 1 ms/MP | stage 2 ms/MP "
             "| tiles/frame | SAM windows/frame |", "|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        r = results[mode]
        for kind in MAPS:
            recall = r["found"][kind] / max(1, r["defects"][kind])
            lines.append(
                f"| {mode} | {kind} | {np.mean(r['auroc'][kind]):.3f} | {np.mean(r['aupro'][kind]):.3f} "
                f"| {recall:.2f} ({r['found'][kind]}/{r['defects'][kind]}) | {r['stage1_ms'] / r['mp']:.0f} "
                f"| {r['stage2_ms'] / r['mp']:.0f} | {r['tiles'] / frames:.0f} | {r['windows'] / frames:.1f} |")
    return "\n".join(lines)


# Runs `python -m pipeline.run` and prints the process's own peak RSS (VmHWM, KiB) as it exits.
# Not ru_maxrss: Linux carries that over exec from the forked benchmark process, models and all.
_RSS_DRIVER = """import runpy, sys
sys.argv[0] = "pipeline.run"
try:
    runpy.run_module("pipeline.run", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("PEAK_RSS_KIB", peak, file=sys.stderr)
"""


def peak_rss_of_run(image_dir: Path, out: Path, store: str, profile: str) -> float:
    """Peak RSS (MiB) of `python -m pipeline.run` on `image_dir` in a fresh child process."""
    command = [sys.executable, "-c", _RSS_DRIVER, f"--input={image_dir}", f"--output={out}", f"--model_store={store}",
               f"--profile={profile}", "--runner=FnApiRunner", "--device=cpu", "--eval=off", "--write_overlays=all",
               "--run_id=rss"]
    done = subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kib = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")]
    return int(kib[-1]) / 1024


def rss_table(args: argparse.Namespace, tmp: Path) -> str:
    from PIL import Image

    from tiny.line_scan import line_scan_frame
    from tiny.synthetic import generate_image

    width, height = parse_size(args.rss_frame)
    small = tmp / "rss-small"
    large = tmp / "rss-large"
    small.mkdir()
    large.mkdir()
    Image.fromarray(generate_image(args.categories[0], seed=0, index=0, anomalous=True, size=1024).image).save(
        small / "part.png")
    frame = line_scan_frame(args.categories[0], seed=args.seed, index=0, width=width, height=height, anomalous=True)
    Image.fromarray(frame.image).save(large / "frame.png")
    del frame
    rows = []
    for name, folder in (("1024 × 1024", small), (f"{width} × {height}", large)):
        start = time.perf_counter()
        peak = peak_rss_of_run(folder, tmp / f"out-{folder.name}", args.store, args.profile)
        rows.append(f"| {name} | {peak:.0f} | {time.perf_counter() - start:.1f} |")
        print(f"  peak RSS {name}: {peak:.0f} MiB", flush=True)
    return "\n".join(["| one image of | peak RSS of the run, MiB | wall s |", "|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--normal", type=int, default=2, help="good frames per category (calibration)")
    parser.add_argument("--defective", type=int, default=4, help="frames with defects per category")
    parser.add_argument("--categories", type=lambda s: [c for c in s.split(",") if c], default=None,
                        help="default: tiny.line_scan.LINE_SCAN_CATEGORIES")
    parser.add_argument("--tile", type=int, default=None, help="tile side in px for auto (default: the profile's)")
    parser.add_argument("--sam_window", type=int, default=None, help="SAM window side in px (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantile", type=float, default=0.999, help="pixel-threshold quantile of the good frames")
    parser.add_argument("--store", default=None, help="model store (default: a copy of the tiny profile)")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--rss_frame", default="16000x2048", help="WxH of the peak-RSS run; '' skips it")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args(argv)
    from tiny.line_scan import LINE_SCAN_CATEGORIES

    args.categories = args.categories or list(LINE_SCAN_CATEGORIES)
    tmp, version = work_area(args, parser, "resolution-")
    try:
        print(f"{len(args.categories)} categories × ({args.normal} good + {args.defective} defective) frames of "
              f"{args.width} × {args.height}" + ("" if args.normal + args.defective else ": peak RSS only"),
              flush=True)
        frames = len(args.categories) * (args.normal + args.defective)
        text = accuracy_table(evaluate(args), frames) if frames else ""
        print(text)
        if args.rss_frame:
            memory = rss_table(args, tmp)
            print(memory)
            text = f"{text}\n\n{memory}".strip()
        if args.append:
            append_results(f"Resolution: tiled vs whole line-scan frames ({args.profile})", command_line(__file__, argv),
                           text, version=version)
    finally:
        if not args.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
