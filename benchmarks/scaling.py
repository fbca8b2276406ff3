"""How the launcher and the local runner scale with the number of images: 1×, 4× and 16×.

    python benchmarks/scaling.py [--base 32] [--scales 1,4,16] [--size 32] [--mode multi_processing]
        [--workers 2] [--threads 1] [--repeats 1] [--store DIR] [--profile tiny] [--append]

For each scale s, `--base` × s seeded synthetic images of `--size` px (MVTec-AD layout, a
`--anomalous_fraction` of them with defects; 32 px, the smallest side the pipeline accepts, by
default: the models resize every image to their own input size, so small files keep decoding and
I/O out of the way and the run short) are scored by `pipeline.run.run([...])` in a fresh
process, the launcher, on FnApiRunner with `--eval=off --report=off --write_overlays=none`.

`--mode multi_processing` (default): `--direct_running_mode=multi_processing
--direct_num_workers=W`, so the models run in W SDK worker processes, like cluster workers, and
the launcher process holds only what the launcher and the runner's control and data planes hold
(FnApiRunner keeps every fusion break's elements in the launcher's buffers). Its peak RSS is
what grows with the night on one machine. `--mode in_process`: FnApiRunner in memory (workers
are threads of the launcher, which then also holds the models).

Per run, from inside the launcher (wrappers installed on the functions `pipeline.run.run`
calls; a missing one is reported as –):
- pre-run: from the call of `pipeline.run.run` to the call of `beam.Pipeline.run`, split into
  `prepare` (flags, manifest, output probe, listing) and `build_graph`;
- run: `beam.Pipeline.run` (FnApiRunner runs the job inside it: worker start-up, model loads,
  every stage) and RunSummary.elapsed_s;
- post-run: from the return of `beam.Pipeline.run` to the return of `pipeline.run.run`
  (`written_files`, `summarize_run`, `write_report`, `run_folder.finish`);
- launcher RSS after the imports, VmHWM at the start of the run, at its end, and after it
  (VmHWM reset at the end of the run through /proc/self/clear_refs);
- workers: the largest VmHWM seen per descendant process (polled every 0.1 s from /proc; the
  `/bin/sh -c` wrappers Beam starts the SDK workers through are left out).

Printed: a table per scale, the marginal wall time per image between scales, the fixed start cost
F from the 1× and 4× runs, (T(16×) − F) / (T(1×) − F) (16.0 = linear), and the 16× / 1× ratios of
the launcher's pre-run and post-run time and of its peak RSS. `--threads` sets
OMP_NUM_THREADS for the launcher and its workers (2 workers × 1 thread fill 2 cores without
oversubscription; torch's default is one thread per core in every process). `--append` appends
the tables to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import append_results, command_line, peak_rss_bytes as _hwm, reset_peak_rss as _reset_hwm, rss_bytes as _rss  # noqa: E402

MB = 2**20


class DescendantPeaks(threading.Thread):
    """Polls /proc for this process's descendants and keeps each one's largest VmHWM."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, tuple[int, str]] = {}
        self._halt = threading.Event()

    def _descendants(self) -> list[int]:
        parent_of = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        stat = handle.read()
                    parent_of[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                except (OSError, ValueError):
                    continue
        found, frontier = [], [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [child for child, parent in parent_of.items() if parent == pid]
            found += children
            frontier += children
        return found

    def poll(self) -> None:
        for pid in self._descendants():
            hwm = _hwm(pid)
            if not hwm:
                continue
            name = self.peaks.get(pid, (0, ""))[1]
            if not name:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        name = handle.read().replace(b"\0", b" ").decode(errors="replace")[:120]
                except OSError:
                    name = "?"
            self.peaks[pid] = (max(hwm, self.peaks.get(pid, (0, ""))[0]), name)

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def child(argv: list[str]) -> dict:
    """The launcher: run the pipeline in this process with timing wrappers; returns the measurements."""
    started = time.perf_counter()
    import contextlib
    import io

    import apache_beam as beam

    import pipeline.run as launcher

    imports_s = time.perf_counter() - started
    rss_imports = _rss()
    marks: dict[str, float] = {}
    parts: dict[str, float] = {}
    missing = []

    def wrap(module, name: str) -> None:
        fn = getattr(module, name, None)
        if fn is None:
            missing.append(f"{module.__name__}.{name}")
            return

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)

    for name in ("prepare", "build_graph", "summarize_run", "commit_to_table", "write_report"):
        wrap(launcher, name)
    folder = getattr(launcher, "run_folder", None)
    if folder is not None:
        for name in ("written_files", "finish"):
            wrap(folder, name)
    original_run = beam.Pipeline.run
    depth = [0]

    def pipeline_run(self, *args, **kwargs):
        # Pipeline.run may call itself (a runner API round trip): only the outermost call counts
        if depth[0] == 0:
            marks["run_start"] = time.perf_counter()
            marks["hwm_pre"] = _hwm()
        depth[0] += 1
        try:
            return original_run(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                marks["run_end"] = time.perf_counter()
                marks["hwm_run"] = _hwm()
                marks["reset"] = _reset_hwm()  # so that the post-run peak is its own

    beam.Pipeline.run = pipeline_run
    sampler = DescendantPeaks()
    sampler.start()
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        summary = launcher.run(argv)
    end = time.perf_counter()
    hwm_post = _hwm()
    sampler.poll()
    sampler.stop()
    # the `/bin/sh -c` wrappers Beam starts its SDK workers through are left out
    workers = [{"pid": pid, "hwm": hwm, "cmd": cmd} for pid, (hwm, cmd) in sorted(sampler.peaks.items())
               if not cmd.startswith(("/bin/sh ", "sh "))]
    return {
        "imports_s": imports_s, "rss_imports": rss_imports, "total_s": end - start,
        "pre_s": marks["run_start"] - start, "run_s": marks["run_end"] - marks["run_start"], "post_s": end - marks["run_end"],
        "elapsed_s": summary.elapsed_s, "parts": parts, "missing": missing,
        "hwm_pre": marks["hwm_pre"], "hwm_run": marks["hwm_run"], "hwm_post": hwm_post, "reset": marks.get("reset", False),
        "workers": workers, "records": summary.num_records, "failures": summary.num_failures,
        "sam_encoder_images": summary.counters.get("sam_encoder_images"), "lost": summary.lost,
    }


def launch(argv: list[str], threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True,
                          cwd=REPO, env=env, check=False)
    if done.returncode:
        sys.exit(f"launcher failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MB:,.0f}"


def _s(parts: dict, *names: str) -> str:
    values = [parts.get(name) for name in names]
    return " + ".join("–" if v is None else f"{v:.2f}" for v in values)


def tables(rows: list[tuple[int, int, dict]], all_walls: dict[int, list[float]]) -> str:
    lines = [
        ("| scale | images | launcher wall s (imports) | pre-run s: prepare + build_graph (all) | run s (elapsed_s) | "
        "post-run s: written_files + summarize_run + write_report + finish (all) | launcher RSS MiB: imports / peak pre-run / "
        "peak run / peak post-run | worker peak RSS MiB (each) | records / failures / SAM encoder |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, n, r in rows:
        workers = ", ".join(_mib(w["hwm"]) for w in r["workers"]) or "none"
        post = _mib(r["hwm_post"]) if r["reset"] else f"{_mib(r['hwm_post'])} (not reset)"
        lines.append(
            f"| {scale}× | {n} | {r['total_s']:.2f} ({r['imports_s']:.2f}) | {_s(r['parts'], 'prepare', 'build_graph')} "
            f"({r['pre_s']:.2f}) | {r['run_s']:.2f} ({r['elapsed_s']:.2f}) | "
            f"{_s(r['parts'], 'written_files', 'summarize_run', 'write_report', 'finish')} ({r['post_s']:.2f}) | "
            f"{_mib(r['rss_imports'])} / {_mib(r['hwm_pre'])} / {_mib(r['hwm_run'])} / {post} | {workers} | "
            f"{r['records']} / {r['failures']} / {r['sam_encoder_images']} |")
    (s1, n1, r1), (s4, n4, r4), (s16, n16, r16) = rows[0], rows[len(rows) // 2], rows[-1]
    w1, w4, w16 = r1["total_s"], r4["total_s"], r16["total_s"]
    m14 = (w4 - w1) / (n4 - n1)
    m416 = (w16 - w4) / (n16 - n4)
    fixed = w1 - m14 * n1
    launcher1 = r1["pre_s"] + r1["post_s"]
    launcher16 = r16["pre_s"] + r16["post_s"]
    worker_peak = lambda r: max((w["hwm"] for w in r["workers"]), default=0)
    lines += [
        "",
        "| growth | value |",
        "|---|---|",
        f"| marginal wall ms / image, {s1}× → {s4}× | {m14 * 1000:.1f} |",
        f"| marginal wall ms / image, {s4}× → {s16}× | {m416 * 1000:.1f} |",
        f"| ratio of the two (1.00 = linear) | {m416 / m14:.2f} |",
        f"| fixed start cost F = T({s1}×) − n·marginal({s1}×→{s4}×) | {fixed:.2f} s |",
        f"| (T({s16}×) − F) / (T({s1}×) − F) (ideal {n16 / n1:.1f}) | {(w16 - fixed) / (w1 - fixed):.2f} |",
        f"| launcher time pre + post, {s1}× → {s16}× | {launcher1:.2f} s → {launcher16:.2f} s (× {launcher16 / launcher1:.2f}) |",
        (f"| launcher pre-run (prepare + graph), {s1}× → {s16}× | {r1['pre_s']:.2f} s → {r16['pre_s']:.2f} s "
        f"(× {r16['pre_s'] / r1['pre_s']:.2f}) |"),
        (f"| launcher post-run, {s1}× → {s16}× | {r1['post_s']:.2f} s → {r16['post_s']:.2f} s "
        f"(× {r16['post_s'] / r1['post_s']:.2f}) |"),
        (f"| launcher peak RSS, {s1}× → {s16}× | {_mib(max(r1['hwm_run'], r1['hwm_post']))} → "
        f"{_mib(max(r16['hwm_run'], r16['hwm_post']))} MiB (× "
        f"{max(r16['hwm_run'], r16['hwm_post']) / max(r1['hwm_run'], r1['hwm_post']):.2f}); above imports: "
        f"{_mib(max(r1['hwm_run'], r1['hwm_post']) - r1['rss_imports'])} → "
        f"{_mib(max(r16['hwm_run'], r16['hwm_post']) - r16['rss_imports'])} MiB |"),
        f"| largest worker peak RSS, {s1}× → {s16}× | {_mib(worker_peak(r1))} → {_mib(worker_peak(r16))} MiB |",
    ]
    if any(len(walls) > 1 for walls in all_walls.values()):
        lines += ["", "every run's launcher wall s: " + "; ".join(
            f"{scale}× {', '.join(f'{w:.2f}' for w in walls)}" for scale, walls in all_walls.items())]
    missing = sorted({m for _, _, r in rows for m in r["missing"]})
    if missing:
        lines += ["", f"not found, so not timed: {', '.join(missing)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--store", help="model store root (default: copy the shipped tiny profile into a temp dir)")
    parser.add_argument("--base", type=int, default=32, help="images at 1×")
    parser.add_argument("--scales", default="1,4,16", help="comma-separated multiples of --base (at least 3)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (>= 32)")
    parser.add_argument("--anomalous_fraction", type=float, default=0.05)
    parser.add_argument("--categories", type=int, default=4)
    parser.add_argument("--mode", default="multi_processing", choices=("multi_processing", "in_process"))
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers in multi_processing mode")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the launcher and workers; 0: unset")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=1, help="runs per scale, interleaved; the fastest is kept")
    parser.add_argument("--pipeline_flag", action="append", default=[], help="extra pipeline flag (repeatable)")
    parser.add_argument("--work_dir", help="where data and outputs go (default: a temp dir, removed)")
    parser.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    scales = [int(s) for s in args.scales.split(",")]
    if len(scales) < 3 or scales != sorted(set(scales)) or args.size < 32 or args.base < 1:
        parser.error("--scales: at least 3 increasing multiples; --size >= 32; --base >= 1")

    from throughput import pick_categories, work_area, write_dataset

    tmp, version = work_area(args, parser, "clipsam-scaling-")
    try:
        categories = pick_categories(args.categories)
        for scale in scales:
            write_dataset(tmp / "data" / f"x{scale}", args.base * scale, args.size, args.anomalous_fraction, categories)

        def flags(scale: int, run_id: str) -> list[str]:
            mode = (["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
                    if args.mode == "multi_processing" else ["--direct_running_mode=in_memory"])
            return [f"--input={tmp / 'data' / f'x{scale}'}", f"--output={tmp / 'out'}", f"--model_store={args.store}",
                    f"--profile={args.profile}", "--layout=mvtec", "--runner=FnApiRunner", "--eval=off", "--report=off",
                    "--write_overlays=none", f"--run_id={run_id}", f"--device={args.device}", *mode, *args.pipeline_flag]

        warm = launch(flags(scales[0], "warm"), args.threads)  # page cache, verified weight cache, bytecode
        print(f"warm-up run ({args.base * scales[0]} images): {warm['total_s']:.2f} s", flush=True)
        results: dict[int, list[dict]] = {scale: [] for scale in scales}
        for r in range(args.repeats):
            for scale in scales:
                result = launch(flags(scale, f"x{scale}-{r}"), args.threads)
                results[scale].append(result)
                print(f"[{r}] {scale}× ({args.base * scale} images): {result['total_s']:.2f} s, launcher peak "
                      f"{_mib(max(result['hwm_run'], result['hwm_post']))} MiB", flush=True)
        rows = [(scale, args.base * scale, min(results[scale], key=lambda x: x["total_s"])) for scale in scales]
        for scale, n, row in rows:
            if row["records"] + row["failures"] != n or row["failures"] or row["lost"]:
                print(f"WARNING: {scale}×: {row['records']} records, {row['failures']} failures for {n} images")
        header = (f"profile {args.profile} on {args.device}, {args.size}-px images ({args.anomalous_fraction:.0%} "
                  f"anomalous, {len(categories)} categories), FnApiRunner "
                  + (f"multi_processing with {args.workers} worker processes" if args.mode == "multi_processing"
                     else "in memory (workers are threads of the launcher)")
                  + f", OMP_NUM_THREADS={args.threads or 'unset'}, --eval=off --report=off --write_overlays=none, "
                  f"fastest of {args.repeats}; each scale in a fresh launcher process")
        body = tables(rows, {scale: [x["total_s"] for x in results[scale]] for scale in scales})
        print()
        print(header)
        print()
        print(body)
        if args.append:
            append_results(f"scaling: launcher and local runner at {', '.join(f'{s}×' for s in scales)} images, "
                           f"{args.profile}", command_line(__file__, argv), f"{header}\n\n{body}", version=version)
    finally:
        if not args.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
