"""Commit time and launcher peak RSS of one night against a table that already holds N nights.

    python benchmarks/table_commit.py [--rows 10000] [--nights 30] [--at 0,10,20,30] [--shards 4] [--dir DIR]

Builds a local `--table` night by night: `--rows` synthetic records per night (RECORD_SCHEMA plus
`content_sha256`, every column set), in `--shards` record files, one failures file and one
metrics file, written as the pipeline's sinks write them and committed with
`pipeline.table.commit_run`. Whenever the table holds N nights (N in --at), a fresh process
commits one more night of `--rows` records (three commits: failures, metrics, records) and
reports its wall time, its RSS after the imports (baseline) and its peak RSS (VmHWM). The
files are written before the process starts: only the commit step of the launcher is measured.
Then, on the full table, a fresh process reruns the last night (a replacing commit) and one
reads `scored_keys` (which reads every night's keys, so it does grow with the table).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """VmHWM: this process's peak RSS. Not ru_maxrss, which execve keeps from the parent (Linux),
    so a child of a large parent would report the parent's size."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: import, measure the baseline, do one step, measure."""
    from pipeline import table as tbl

    baseline = _rss_bytes()
    start = time.perf_counter()
    if args.child == "commit":
        spec = json.loads(Path(args.spec).read_text())
        result = tbl.commit_run(spec["table"], spec["scan_date"], spec["files"], spec["metadata"])
    else:
        spec = json.loads(Path(args.spec).read_text())
        result = tbl.scored_keys(spec["table"], spec["metadata"]["model_digests"], None).num_rows
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "baseline_rss": baseline, "peak_rss": _peak_rss_bytes(), "result": result}))


def night_files(table: str, scan_date: str, run_id: str, base, failures, metrics, shards: int, night: int):
    """Write one night's files under the table (sinks' names and format); returns kind → URLs."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline import table as tbl
    from transforms.write import shard_of, shard_url

    layout = tbl.table_layout(table, scan_date, run_id)
    rows = base.num_rows
    ids = pa.array([f"bench/test/n{night:03d}-{i:06d}" for i in range(rows)])
    hashes = pa.array([f"{night:08x}{i:056x}" for i in range(rows)])
    records = (base.set_column(base.schema.get_field_index("image_id"), "image_id", ids)
               .set_column(base.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * rows))
               .set_column(base.schema.get_field_index("content_sha256"), "content_sha256", hashes))
    shard = pa.array([shard_of(i, shards) for i in ids.to_pylist()])
    files = {"records": [], "failures": [], "metrics": []}
    for folder in layout.folders.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        part = records.filter(pc.equal(shard, index)).sort_by("image_id")
        url = shard_url(layout.prefixes["records"], index, shards)
        pq.write_table(part, url, compression="zstd", row_group_size=1000)
        files["records"].append(url)
    url = shard_url(layout.prefixes["failures"], 0, 1)
    pq.write_table(failures.set_column(failures.schema.get_field_index("run_id"), "run_id",
                                       pa.array([run_id] * failures.num_rows)), url, compression="zstd")
    files["failures"].append(url)
    pq.write_table(metrics, layout.metrics_file, compression="zstd")
    files["metrics"].append(layout.metrics_file)
    return files


def synthetic_tables(rows: int):
    """(records, failures, metrics) pyarrow tables of one night with realistic column contents."""
    import datetime as dt

    import pyarrow as pa

    from transforms.evaluate import METRICS_SCHEMA
    from transforms.records import FAILURE_SCHEMA, RECORD_SCHEMA

    schema = RECORD_SCHEMA
    digests = sorted({"clip": "c1" * 32, "sam": "5a" * 32, "umci": "0e" * 32}.items())
    rows_list = []
    for i in range(rows):
        score = (i * 7919 % 1000) / 1000
        rows_list.append({
            "image_id": "", "source_uri": f"gs://line/scans/2026-12-06/cam{i % 8}/img{i:06d}.png",
            "category": ("bottle", "screw", "capsule", "pill")[i % 4], "width": 1024, "height": 1024,
            "image_score": score, "clip_image_score": score * 0.8, "max_pixel_score": min(1.0, score + 0.05),
            "anomaly_area_fraction": score / 50, "mask_threshold": 0.5, "image_threshold": 0.5,
            "pred_label": "NG" if score >= 0.5 else "OK",
            "mask_rle": {"size": [1024, 1024], "counts": f"Y{i:x}o0Sa1" * 8},
            "defects": [{"bbox": [float(i % 900), 10.0, 40.0, 30.0], "area": 900 + i % 50, "max_score": score,
                         "mean_score": score * 0.9, "segmentation": {"size": [1024, 1024], "counts": f"a{i:x}b2"}}
                        for _ in range(i % 3)],
            "defects_truncated": False, "sam_prompt_boxes": [[10.0, 10.0, 50.0, 40.0]] * (i % 3),
            "sam_prompt_points": [[[20.0, 20.0], [30.0, 25.0]]] * (i % 3), "sam_used": i % 3 > 0,
            "anomaly_map_png": None, "gt_label": None, "decode_notes": [], "model_profile": "clipsam-vitl-sam-h",
            "model_digests": digests, "random_weights": False, "thresholds_digest": None,
            "pipeline_version": "0.1.0", "run_id": "",
            "processed_at": dt.datetime(2026, 12, 6, 3, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i),
            "stage1_ms": 35.5, "stage2_ms": 80.25, "content_sha256": ""})
    records = pa.Table.from_pylist(rows_list, schema=schema)
    failures = pa.Table.from_pylist([{"source_uri": f"gs://line/bad{k}.png", "image_id": f"bad{k}", "stage": "decode",
                                      "error_type": "DecodeError", "message": "truncated file", "run_id": ""}
                                     for k in range(max(1, rows // 1000))], schema=FAILURE_SCHEMA)
    metrics = pa.Table.from_pylist([{"category": c, **{n: 0.9 for n in METRICS_SCHEMA.names[1:]
                                                      if METRICS_SCHEMA.field(n).type == pa.float64()},
                                     **{n: rows // 4 for n in METRICS_SCHEMA.names
                                        if METRICS_SCHEMA.field(n).type == pa.int64()}, "reasons": None}
                                    for c in ("bottle", "capsule", "pill", "screw")], schema=METRICS_SCHEMA)
    return records, failures, metrics


def measure(step: str, spec: dict, workdir: Path) -> dict:
    path = workdir / f"spec-{time.time_ns()}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, __file__, "--child", step, "--spec", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {step} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="records per night (default 10000)")
    parser.add_argument("--nights", type=int, default=30, help="nights in the table at the last measurement")
    parser.add_argument("--at", default=None, help="table sizes (nights) to measure at (default 0,10,20,...,--nights)")
    parser.add_argument("--shards", type=int, default=4, help="record files per night (default 4)")
    parser.add_argument("--dir", default=None, help="build the table here and keep it (default: a temporary folder)")
    parser.add_argument("--child", choices=["commit", "scored_keys"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import datetime as dt

    from pipeline import table as tbl

    at = sorted({int(n) for n in args.at.split(",")}) if args.at else list(range(0, args.nights + 1, 10))
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="table-bench-"))
    table = str(workdir / "table")
    start = time.perf_counter()
    base, failures, metrics = synthetic_tables(args.rows)
    metadata = {"run_id": "", "model_profile": "clipsam-vitl-sam-h",
                "model_digests": {"clip": "c1" * 32, "sam": "5a" * 32, "umci": "0e" * 32}, "thresholds_digest": None,
                "pipeline_version": "0.1.0"}
    day = dt.date(2026, 1, 1)
    held = 0
    print(f"table {table}: {args.rows} records per night in {args.shards} files, + 1 failures and 1 metrics file")
    print(f"{'nights held':>11} {'commit s':>9} {'records v':>9} {'baseline MiB':>12} {'peak MiB':>9} {'peak-base':>9}")
    results = []
    for target in at:
        while held < target:
            night = (day + dt.timedelta(days=held)).isoformat()
            run_id = f"fill-{held:03d}"
            files = night_files(table, night, run_id, base, failures, metrics, args.shards, held)
            tbl.commit_run(table, night, files, {**metadata, "run_id": run_id})
            held += 1
        night = (day + dt.timedelta(days=held)).isoformat()
        run_id = f"probe-{held:03d}"
        files = night_files(table, night, run_id, base, failures, metrics, args.shards, held)
        out = measure("commit", {"table": table, "scan_date": night, "files": files,
                                 "metadata": {**metadata, "run_id": run_id}}, workdir)
        held += 1  # the probe night stays: the next size includes it
        results.append(out)
        print(f"{target:>11} {out['seconds']:>9.3f} {out['result']['records']:>9} {out['baseline_rss'] / 2**20:>12.0f} "
              f"{out['peak_rss'] / 2**20:>9.0f} {(out['peak_rss'] - out['baseline_rss']) / 2**20:>9.0f}")
    rerun_night = (day + dt.timedelta(days=held - 1)).isoformat()
    files = night_files(table, rerun_night, "rerun", base, failures, metrics, args.shards, held - 1)
    out = measure("commit", {"table": table, "scan_date": rerun_night, "files": files,
                             "metadata": {**metadata, "run_id": "rerun"}}, workdir)
    print(f"rerun of {rerun_night} on {held} nights (replace): {out['seconds']:.3f} s, "
          f"peak RSS {out['peak_rss'] / 2**20:.0f} MiB (baseline {out['baseline_rss'] / 2**20:.0f})")
    out = measure("scored_keys", {"table": table, "metadata": metadata}, workdir)
    print(f"scored_keys on {held} nights: {out['result']} keys in {out['seconds']:.3f} s, "
          f"peak RSS {out['peak_rss'] / 2**20:.0f} MiB (baseline {out['baseline_rss'] / 2**20:.0f})")
    if args.dir:
        print(f"total {time.perf_counter() - start:.0f} s; table left in {table}")
    else:
        shutil.rmtree(workdir)
        print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
