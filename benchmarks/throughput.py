"""Per-image cost of the full pipeline on the local runner against the bare model loop.

    python benchmarks/throughput.py [--profile tiny] [--store DIR] [--device cpu] [--dtype bf16]
        [--images 64] [--size 512] [--anomalous_fraction 0.05] [--repeats 1] [--append]

One process, one set of seeded synthetic images (`tiny.synthetic`, MVTec-AD layout on disk, a
`--anomalous_fraction` of them with defects and masks, spread over `--categories` categories),
scored three ways:

- bare loop: `inputs.decode.decode_image` on the encoded bytes → `model.stage1` → `model.stage2`
  → `clipsam.rle.encode_mask`, in batches of `--batch_size`, with the model from
  `model_store.load_clipsam` (loaded and warmed up on one image per category before timing);
- pipeline at N and at 2N images: `pipeline.run.run([...])` on `FnApiRunner` (in memory, so
  the workers are threads of this process), `--eval=off --report=off --write_overlays=none`
  unless asked. The 2N input is the N input plus a byte-identical copy of it under another
  root, so the marginal images are the bare loop's images. Marginal cost per image
  (T(2N) − T(N)) / N, fixed cost 2·T(N) − T(2N), and marginal / bare (acceptance: ≤ 1.10 for
  tiny, 512 px, ≥ 64 images on CPU). A short warm-up run (4 images) goes first, so the first
  timed run does not pay this process's one-time Beam start-up.

Also printed: decode alone in ms per megapixel for the PNG files and for JPEG (quality 90) copies,
whole and with the profile's `--jpeg_draft` reduction (`pipeline.run.jpeg_draft`),
stage 1 / stage 2 / RLE per image, the mean `stage1_ms` / `stage2_ms` the pipeline's records hold,
the share of images that reached SAM's encoder (bare: `Prediction.sam_used`; pipeline: the
`sam_encoder_images` Beam counter), peak RSS per variant (VmHWM, reset before each variant through
/proc/self/clear_refs) and on CUDA `torch.cuda.max_memory_allocated`. With `--repeats R` the
variants run R times, interleaved (load + bare loop, pipeline N, pipeline 2N; the bare loop's
model is dropped before the pipeline runs), the fastest of each is kept and every run is listed
(the CPU may be shared). `--threads` sets torch's thread count for all of them.

`--dtype`: the loaders (`model_store/loading.py`) have no dtype option; they build fp32 modules
(a half-precision store is cast to fp32). On CUDA both stages run in bf16 autocast
(`clipsam.device.autocast`); fp16 / fp32 replace that autocast in this process only (a
benchmark override: the pipeline has no such flag). On the CPU there is no autocast and
`--dtype` is ignored.

Without `--store`, the tiny profile is copied into a temp dir with `tiny.build.make_tiny`
(seconds: the shipped build), and the script refuses rather than train one when the shipped
build's key does not match the checkout. For real profiles without real weights:
`python -m model_store make-random --profile clipsam-vitb-sam-b --out DIR`, then
`--store DIR --profile clipsam-vitb-sam-b`. `--append` appends the tables to
benchmarks/RESULTS.md with the date, machine, command and git commit.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import glob
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

MB = 2**20


# ----------------------------------------------------------------------------- memory


def status_kib(key: str, pid: int | str = "self") -> int:
    """A `/proc/<pid>/status` field in KiB; 0 when the process or the field is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    return status_kib("VmRSS", pid) * 1024


def peak_rss_bytes(pid: int | str = "self") -> int:
    """VmHWM (not ru_maxrss, which cannot be reset and survives execve)."""
    return status_kib("VmHWM", pid) * 1024


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Wall time, peak RSS and (on CUDA) peak allocated memory of one variant."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self) -> Self:
        gc.collect()
        self.reset = reset_peak_rss()
        self.rss_before = rss_bytes()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_peak = torch.cuda.max_memory_allocated()
        else:
            self.cuda_peak = None
        self.seconds = time.perf_counter() - self.start
        self.peak_rss = peak_rss_bytes()


# ----------------------------------------------------------------------------- data


@dataclass
class Item:
    path: str
    data: bytes
    category: str
    anomalous: bool
    pixels: int


def anomalous_indices(n: int, fraction: float) -> set[int]:
    """round(n · fraction) indices spread evenly over range(n)."""
    k = min(n, max(0, round(n * fraction)))
    return {min(n - 1, int((j + 0.5) * n / k)) for j in range(k)}


def write_dataset(root: Path, n: int, size: int, fraction: float, categories: list[str], seed: int = 0) -> list[Item]:
    """n seeded synthetic images in the MVTec-AD layout under `root` (image i: category
    i mod len(categories); the anomalous ones under test/<defect type>/ with their masks)."""
    from tiny.synthetic import GOOD, encode_png, generate_image

    bad = anomalous_indices(n, fraction)
    items = []
    for i in range(n):
        category = categories[i % len(categories)]
        sample = generate_image(category, seed=seed, index=i, anomalous=i in bad, size=size)
        folder = root / category / "test" / sample.defect_type
        folder.mkdir(parents=True, exist_ok=True)
        data = encode_png(sample.image)
        path = folder / f"{i:05d}.png"
        path.write_bytes(data)
        if sample.defect_type != GOOD:
            masks = root / category / "ground_truth" / sample.defect_type
            masks.mkdir(parents=True, exist_ok=True)
            (masks / f"{i:05d}_mask.png").write_bytes(encode_png(sample.mask))
        items.append(Item(str(path), data, category, i in bad, size * size))
    return items


def pick_categories(count: int) -> list[str]:
    """`count` held-out synthetic categories, textures and objects alternating."""
    from tiny.synthetic import TEST_CATEGORIES

    order = list(TEST_CATEGORIES[::2]) + list(TEST_CATEGORIES[1::2])
    return [order[i % len(order)] if i < len(order) else f"{order[i % len(order)]}_{i}" for i in range(count)]


def tiny_store(tmp: Path) -> str:
    """Copy the tiny profile into `tmp/store` with make_tiny, refusing to train one."""
    from tiny.build import build_key, default_build_cache, make_tiny, shipped_key
    from tiny.recipe import TinyRecipe

    key = build_key(0, True, TinyRecipe())
    if key != shipped_key() and not (default_build_cache() / key / "tiny" / "manifest.json").exists():
        sys.exit(f"the shipped tiny build ({shipped_key()}) does not match this checkout ({key}) and no cached "
                 "build has its key: make_tiny would train for minutes; pass --store DIR")
    store = tmp / "store"
    make_tiny(str(store))
    return str(store)


# ----------------------------------------------------------------------------- dtype


def apply_dtype(device: str, dtype: str) -> str:
    """Install the autocast `dtype` asks for; returns a line saying what runs."""
    if not device.startswith("cuda"):
        return (f"--dtype {dtype} ignored on {device}: the loaders (model_store/loading.py) have no dtype option "
                "and build fp32 modules; the CPU path runs fp32 without autocast")
    if dtype == "bf16":
        return "CUDA: bf16 autocast (clipsam.device.autocast, what the pipeline does)"
    import torch

    import clipsam.stage1
    import clipsam.stage2

    target = {"fp16": torch.float16, "fp32": None}[dtype]

    def autocast(device_):
        if device_.type == "cuda" and target is not None:
            return torch.autocast("cuda", dtype=target)
        return contextlib.nullcontext()

    clipsam.stage1.autocast = autocast
    clipsam.stage2.autocast = autocast
    return (f"CUDA: {dtype} ({'fp16 autocast' if target else 'no autocast'}), a benchmark override of "
            "clipsam.device.autocast in this process (the pipeline itself always uses bf16 on CUDA)")


# ----------------------------------------------------------------------------- variants


@dataclass
class BareResult:
    seconds: float
    decode: float
    stage1: float
    stage2: float
    rle: float
    sam_used: int
    images: int
    peak_rss: int
    rss_before: int
    cuda_peak: int | None


def bare_loop(model, items: list[Item], batch_size: int, cuda: bool) -> BareResult:
    """decode → stage 1 → stage 2 → RLE over `items`, in batches; seconds per part."""
    import torch

    from clipsam.rle import encode_mask
    from inputs.decode import decode_image

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    parts = dict.fromkeys(("decode", "stage1", "stage2", "rle"), 0.0)
    sam_used = 0
    with Meter(cuda) as meter:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            t0 = time.perf_counter()
            rgb = [decode_image(item.data, item.path)[0] for item in batch]
            t1 = time.perf_counter()
            rough = model.stage1(rgb, [item.category for item in batch])
            sync()
            t2 = time.perf_counter()
            predictions = model.stage2(rgb, rough)
            sync()
            t3 = time.perf_counter()
            for prediction in predictions:
                encode_mask(prediction.mask)
            t4 = time.perf_counter()
            sam_used += sum(p.sam_used for p in predictions)
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name] += seconds
    return BareResult(meter.seconds, parts["decode"], parts["stage1"], parts["stage2"], parts["rle"], sam_used,
                      len(items), meter.peak_rss, meter.rss_before, meter.cuda_peak)


@dataclass
class PipelineResult:
    images: int
    seconds: float  # wall time of pipeline.run.run
    run_seconds: float  # RunSummary.elapsed_s: pipeline.run() to wait_until_finish()
    records: int
    failures: int
    sam_encoder_images: int | None
    stage1_ms: float
    stage2_ms: float
    peak_rss: int
    rss_before: int
    cuda_peak: int | None
    counters: dict = field(default_factory=dict)


def run_pipeline(inputs: list[Path], out: Path, run_id: str, args: argparse.Namespace, cuda: bool) -> PipelineResult:
    import pyarrow.parquet as pq

    from pipeline.run import run

    argv = [f"--input={','.join(str(p) for p in inputs)}", f"--output={out}", f"--model_store={args.store}",
            f"--profile={args.profile}", "--layout=mvtec", "--runner=FnApiRunner", f"--eval={args.eval}",
            f"--report={args.report}", f"--write_overlays={args.write_overlays}", f"--run_id={run_id}",
            f"--device={'cuda' if cuda else 'cpu'}", f"--batch_size={args.batch_size}", *args.pipeline_flag]
    printed = io.StringIO()
    with Meter(cuda) as meter, contextlib.redirect_stdout(printed):
        summary = run(argv)
    records = sorted(glob.glob(str(out / run_id / "records-*.parquet")))
    table = pq.ParquetDataset(records).read(columns=["stage1_ms", "stage2_ms"]) if records else None
    mean = (lambda name: float(table.column(name).to_numpy().mean()) if table is not None and table.num_rows else 0.0)
    counters = dict(summary.counters)
    return PipelineResult(
        images=summary.num_records + summary.num_failures, seconds=meter.seconds, run_seconds=summary.elapsed_s,
        records=summary.num_records, failures=summary.num_failures,
        sam_encoder_images=counters.get("sam_encoder_images"), stage1_ms=mean("stage1_ms"),
        stage2_ms=mean("stage2_ms"), peak_rss=meter.peak_rss, rss_before=meter.rss_before,
        cuda_peak=meter.cuda_peak, counters=counters,
    )


# ----------------------------------------------------------------------------- report


def work_area(args: argparse.Namespace, parser: argparse.ArgumentParser, prefix: str) -> tuple[Path, str]:
    """(the folder data and outputs go to, the code version taken now, before measuring: the
    tree may change while a benchmark runs); fills `args.store` with a copy of the tiny store
    when none was given (other profiles need --store, e.g. from make-random)."""
    version = code_version()
    tmp = Path(args.work_dir or tempfile.mkdtemp(prefix=prefix))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.store is None:
        if args.profile != "tiny":
            parser.error("--store is required for profiles other than tiny (make-random writes one)")
        args.store = tiny_store(tmp)
    return tmp, version


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark was started, for RESULTS.md: `python benchmarks/<script> <argv>` (argv:
    main's own argument list, None for the process's)."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def append_results(title: str, command: str, text: str, note: str = "", version: str | None = None) -> None:
    """Append a section to benchmarks/RESULTS.md: `title`, the date, machine, commit (`version`,
    taken before measuring; default now) and torch version (and `note`), the command, then `text`."""
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as handle:
        handle.write(
            f"\n## {title}\n\n"
            f"{dt.date.today().isoformat()}, {platform.node() or 'host'}: {os.cpu_count()} CPUs "
            f"(nproc {len(os.sched_getaffinity(0))}), {ram:.0f} GiB RAM, git {version or code_version()}, "
            f"torch {torch.__version__}{'; ' + note if note else ''}\n\n`{command}`\n\n{text}\n")


def code_version() -> str:
    """`<short HEAD>` plus a note when the checkout has uncommitted changes (other than untracked files)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                            check=False).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                             cwd=REPO, check=False).stdout.split("\n")
    changed = [line[3:] for line in changed if line.strip()]
    return commit + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MB:,.0f}"


def decode_rates(items: list[Item], repeats: int, draft) -> dict[str, tuple[float, float]]:
    """format → (ms per megapixel, mean encoded KiB) of the reader's decode over `items` (fastest of
    `repeats`), and for the JPEGs also with `draft` (`inputs.decode.JpegDraft`, --jpeg_draft)."""
    from PIL import Image

    from inputs.decode import decode_frame

    jpegs = []
    for item in items:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(item.data)).convert("RGB").save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    megapixels = sum(item.pixels for item in items) / 1e6
    rates = {}
    for name, blobs, rule in (("PNG", [item.data for item in items], None), ("JPEG q90", jpegs, None),
                              ("JPEG q90, --jpeg_draft (reduced where the models need less)", jpegs, draft)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for blob in blobs:
                decode_frame(blob, name, draft=rule)
            best = min(best, time.perf_counter() - start)
        rates[name] = (best * 1000 / megapixels, sum(map(len, blobs)) / len(blobs) / 1024)
    return rates


def tables(args, bare: BareResult, load_s: float, rates, warm: PipelineResult, one: PipelineResult,
           two: PipelineResult, n: int) -> str:
    per = lambda seconds, count: seconds * 1000 / count
    bare_ms = per(bare.seconds, bare.images)
    marginal_ms = (two.seconds - one.seconds) * 1000 / n
    fixed_s = 2 * one.seconds - two.seconds
    marginal_run_ms = (two.run_seconds - one.run_seconds) * 1000 / n

    def share(used, total):
        return "–" if used is None else f"{used}/{total} ({used / max(1, total):.1%})"

    lines = [
        "| variant | images | wall s | ms / image | SAM encoder | peak RSS MiB (RSS before) | CUDA peak MiB |",
        "|---|---|---|---|---|---|---|",
        (f"| bare loop (decode → stage 1 → stage 2 → RLE) | {bare.images} | {bare.seconds:.2f} | {bare_ms:.1f} | "
        f"{share(bare.sam_used, bare.images)} | {_mib(bare.peak_rss)} ({_mib(bare.rss_before)}) | {_mib(bare.cuda_peak)} |"),
    ]
    for label, result in (("pipeline warm-up (not used)", warm), ("pipeline N", one), ("pipeline 2N", two)):
        lines.append(
            f"| {label} | {result.images} | {result.seconds:.2f} | {per(result.seconds, result.images):.1f} | "
            f"{share(result.sam_encoder_images, result.records)} | {_mib(result.peak_rss)} ({_mib(result.rss_before)}) | "
            f"{_mib(result.cuda_peak)} |")
    lines += [
        "",
        "| part (bare loop) | ms / image | ms / megapixel | share of bare |",
        "|---|---|---|---|",
    ]
    mp = bare.images * args.size * args.size / 1e6
    for name, seconds in (("decode (PNG)", bare.decode), ("stage 1 (CLIP + UMCI)", bare.stage1),
                          ("stage 2 (MMR + SAM)", bare.stage2), ("RLE (encode_mask)", bare.rle)):
        lines.append(f"| {name} | {per(seconds, bare.images):.2f} | {seconds * 1000 / mp:.2f} | {seconds / bare.seconds:.1%} |")
    lines += [
        f"| model load (load_clipsam, once) | {load_s * 1000:.0f} ms in all | | |",
        "",
        "| decode alone (inputs.decode.decode_frame) | ms / megapixel | mean file KiB |",
        "|---|---|---|",
        *(f"| {name} | {ms:.2f} | {kib:.0f} |" for name, (ms, kib) in rates.items()),
        "",
        "| model time inside the pipeline (records, mean) | stage1_ms | stage2_ms |",
        "|---|---|---|",
        f"| bare loop | {per(bare.stage1, bare.images):.1f} | {per(bare.stage2, bare.images):.1f} |",
        f"| pipeline N | {one.stage1_ms:.1f} | {one.stage2_ms:.1f} |",
        f"| pipeline 2N | {two.stage1_ms:.1f} | {two.stage2_ms:.1f} |",
        "",
        "| ratio | value |",
        "|---|---|",
        f"| pipeline marginal ms / image, (T(2N) − T(N)) / N | {marginal_ms:.1f} |",
        f"| pipeline marginal ms / image, run() only (RunSummary.elapsed_s) | {marginal_run_ms:.1f} |",
        f"| pipeline fixed start cost, 2·T(N) − T(2N) | {fixed_s:.2f} s |",
        f"| bare loop ms / image | {bare_ms:.1f} |",
        f"| **marginal / bare** (target ≤ 1.10) | **{marginal_ms / bare_ms:.2f}** |",
        f"| pipeline N all-in / bare, T(N) / (N · bare) | {one.seconds * 1000 / n / bare_ms:.2f} |",
        f"| pipeline 2N all-in / bare | {two.seconds * 1000 / (2 * n) / bare_ms:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--store", help="model store root (default: copy the shipped tiny profile into a temp dir)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="CUDA only, see above")
    parser.add_argument("--images", type=int, default=64, help="N (the pipeline also runs 2N)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (>= 32)")
    parser.add_argument("--anomalous_fraction", type=float, default=0.05)
    parser.add_argument("--categories", type=int, default=4, help="number of synthetic categories")
    parser.add_argument("--batch_size", type=int, default=8, help="bare-loop batch and the pipeline's --batch_size")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved; the fastest is kept")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for everything (Beam's in-memory workers are threads of this "
                             "process and inherit it); 0: torch's default")
    parser.add_argument("--eval", default="off", choices=("auto", "on", "off"))
    parser.add_argument("--report", default="off", choices=("on", "off"))
    parser.add_argument("--write_overlays", default="none", choices=("ng", "all", "none"))
    parser.add_argument("--pipeline_flag", action="append", default=[], help="extra pipeline flag (repeatable)")
    parser.add_argument("--work_dir", help="where data and outputs go (default: a temp dir, removed)")
    parser.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.size < 32 or args.images < 1 or args.repeats < 1 or not 0 <= args.anomalous_fraction <= 1:
        parser.error("--size >= 32, --images >= 1, --repeats >= 1, 0 <= --anomalous_fraction <= 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype_line = apply_dtype(device, args.dtype)
    print(dtype_line)
    if not cuda:
        print(f"CUDA: {'available but not used' if torch.cuda.is_available() else 'not available'}; "
              "no CUDA memory figures")

    tmp, version = work_area(args, parser, "clipsam-throughput-")
    try:
        n = args.images
        categories = pick_categories(args.categories)
        start = time.perf_counter()
        items = write_dataset(tmp / "data" / "a", n, args.size, args.anomalous_fraction, categories)
        shutil.copytree(tmp / "data" / "a", tmp / "data" / "b")  # byte-identical second half of 2N
        write_dataset(tmp / "data" / "warm", 4, args.size, 0.25, categories[:2], seed=99)
        print(f"{n} images of {args.size} px ({sum(i.anomalous for i in items)} anomalous, categories "
              f"{', '.join(categories)}) written in {time.perf_counter() - start:.1f} s under {tmp / 'data'}")

        from inputs.decode import decode_image
        from model_store import load_clipsam

        warm_items = [next(i for i in items if i.category == c) for c in categories if any(i.category == c for i in items)]
        from model_store.preflight import check_profile
        from pipeline.run import jpeg_draft

        rates = decode_rates(items, args.repeats, jpeg_draft(check_profile(args.store, args.profile)))
        out = tmp / "out"
        warm = run_pipeline([tmp / "data" / "warm"], out, "warm", args, cuda)
        print(f"pipeline warm-up: {warm.seconds:.2f} s for {warm.images} images", flush=True)
        bares, loads, ones, twos = [], [], [], []
        for r in range(args.repeats):  # interleaved, so that every variant sees the same neighbours on the CPU
            start = time.perf_counter()
            model, manifest = load_clipsam(args.store, args.profile, device=device)
            loads.append(time.perf_counter() - start)
            rgb = [decode_image(i.data, i.path)[0] for i in warm_items]  # warm-up: text matrices, allocator
            model.stage2(rgb, model.stage1(rgb, [i.category for i in warm_items]))
            bares.append(bare_loop(model, items, args.batch_size, cuda))
            print(f"[{r}] bare loop: {bares[-1].seconds:.2f} s for {n} images", flush=True)
            del model, rgb
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            ones.append(run_pipeline([tmp / "data" / "a"], out, f"n{r}", args, cuda))
            print(f"[{r}] pipeline N: {ones[-1].seconds:.2f} s", flush=True)
            twos.append(run_pipeline([tmp / "data" / "a", tmp / "data" / "b"], out, f"2n{r}", args, cuda))
            print(f"[{r}] pipeline 2N: {twos[-1].seconds:.2f} s", flush=True)
        bare = min(bares, key=lambda r: r.seconds)
        load_s = min(loads)
        one = min(ones, key=lambda r: r.seconds)
        two = min(twos, key=lambda r: r.seconds)
        runs = (f"every run, s: bare {', '.join(f'{b.seconds:.2f}' for b in bares)}; pipeline N "
                f"{', '.join(f'{o.seconds:.2f}' for o in ones)}; pipeline 2N {', '.join(f'{t.seconds:.2f}' for t in twos)}; "
                f"marginal / bare per repeat {', '.join(f'{(t.seconds - o.seconds) / b.seconds:.2f}' for b, o, t in zip(bares, ones, twos))}")
        for result, expected in ((one, n), (two, 2 * n)):
            if result.records != expected or result.failures:
                print(f"WARNING: a pipeline run gave {result.records} records and {result.failures} failures "
                      f"for {expected} images")
        random = " (random weights)" if manifest.provenance.get("random") else ""
        header = (f"profile {args.profile}{random} on {device}, {n} images of {args.size} px "
                  f"({sum(i.anomalous for i in items)} anomalous, {len(categories)} categories), batch "
                  f"{args.batch_size}, FnApiRunner in memory, --eval={args.eval} --report={args.report} "
                  f"--write_overlays={args.write_overlays}, fastest of {args.repeats}; torch threads "
                  f"{torch.get_num_threads()}")
        body = tables(args, bare, load_s, rates, warm, one, two, n)
        print()
        print(header)
        print()
        print(body)
        print()
        print(runs)
        if args.append:
            command = command_line(__file__, argv)
            gpu = (f"GPU: {torch.cuda.get_device_name()}" if cuda
                   else "GPU: none used (no CUDA device on this machine), so no GPU figures")
            append_results(f"throughput: pipeline vs bare model loop, {args.profile}", command,
                           f"{header}\n\n{body}\n\n{runs}", f"{gpu}; {dtype_line}", version)
    finally:
        if not args.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
