"""pipeline.table: nights committed to Delta Lake tables, atomically and idempotently.

Every test works on real Delta tables (delta-rs) on disk, or on the GCS emulator, holding files
written the way the pipeline writes them (`transforms.write.write_parquet`, the real schemas
plus `content_sha256`). The crash and concurrency cases run real processes: one killed with
SIGKILL before its commit, several committing at the same moment.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipeline import table as tbl
from pipeline.table import TableError
from tests.conftest import REPO
from transforms.evaluate import METRICS_SCHEMA
from transforms.records import FAILURE_SCHEMA, RECORD_SCHEMA
from transforms.write import shard_url, write_parquet

RECORDS = RECORD_SCHEMA  # content_sha256 (tbl.SCORED_KEY) is one of its columns
DIGESTS = {"clip": "c1" * 32, "sam": "5a" * 32, "umci": "0e" * 32}
OTHER_DIGESTS = {**DIGESTS, "umci": "ff" * 32}
THRESHOLDS = "7d" * 32
NIGHT_1, NIGHT_2, NIGHT_3 = "2026-12-05", "2026-12-06", "2026-12-07"


def content_hash(image: int) -> str:
    return f"{image:064x}"


def record(image: int, run_id: str, digests=DIGESTS, thresholds_digest=None) -> dict:
    """A full record (every column set, nested ones non-empty) for synthetic image `image`."""
    score = (image % 97) / 97
    return {
        "image_id": f"bottle/test/img{image:06d}", "source_uri": f"gs://line/scans/img{image:06d}.png",
        "category": "bottle", "width": 64, "height": 48, "image_score": score, "clip_image_score": score / 2,
        "max_pixel_score": min(1.0, score + 0.1), "anomaly_area_fraction": 0.01, "mask_threshold": 0.5,
        "image_threshold": 0.5, "pred_label": "NG" if score >= 0.5 else "OK",
        "mask_rle": {"size": [48, 64], "counts": "PX1"},
        "defects": [{"bbox": [1.0, 2.0, 3.0, 4.0], "area": 12, "max_score": 0.9, "mean_score": 0.7,
                     "segmentation": {"size": [48, 64], "counts": "a1"}}],
        "defects_truncated": False, "sam_prompt_boxes": [[1.0, 2.0, 4.0, 6.0]],
        "sam_prompt_points": [[[1.5, 2.5], [3.0, 4.0]]], "sam_used": True, "anomaly_map_png": b"\x89PNG-ish",
        "gt_label": image % 2, "decode_notes": ["exif rotated"] if image % 5 == 0 else [],
        "model_profile": "tiny", "model_digests": sorted(digests.items()), "random_weights": False,
        "thresholds_digest": thresholds_digest, "pipeline_version": "0.1.0", "run_id": run_id,
        "processed_at": dt.datetime(2026, 12, 6, 3, 0, image % 60, tzinfo=dt.timezone.utc),
        "stage1_ms": 12.5, "stage2_ms": 30.25, tbl.SCORED_KEY: content_hash(image),
    }


def run_metadata(run_id: str, digests=DIGESTS, thresholds_digest=None) -> dict:
    return {"run_id": run_id, "model_profile": "tiny", "model_digests": dict(digests),
            "thresholds_digest": thresholds_digest, "pipeline_version": "0.1.0"}


def write_run(table_url: str, scan_date: str, run_id: str, images, *, shards: int = 2, failures: int = 1,
              metrics: bool = True, digests=DIGESTS, thresholds_digest=None,
              attempt: str | None = None) -> tuple[tbl.RunLayout, dict[str, list[str]]]:
    """Write a run's files where `table_layout` says, as the pipeline's sinks do; returns the
    layout and kind → file URLs (the list `commit_run` takes)."""
    layout = tbl.table_layout(table_url, scan_date, run_id, attempt)
    rows = [record(i, run_id, digests, thresholds_digest) for i in images]
    files: dict[str, list[str]] = {"records": [], "failures": []}
    for index in range(shards):
        url = shard_url(layout.prefixes["records"], index, shards)
        write_parquet(url, [r for r in rows if int(r["image_id"][-6:]) % shards == index], RECORDS)
        files["records"].append(url)
    url = shard_url(layout.prefixes["failures"], 0, 1)
    write_parquet(url, [{"source_uri": f"gs://line/bad{k}.png", "image_id": f"bad{k}", "stage": "decode",
                         "error_type": "DecodeError", "message": "truncated", "run_id": run_id}
                        for k in range(failures)], FAILURE_SCHEMA)
    files["failures"].append(url)
    if metrics:
        metric_rows = pa.Table.from_pylist([{"category": "bottle", **{n: None for n in METRICS_SCHEMA.names[1:]},
                                             **{n: len(rows) for n in METRICS_SCHEMA.names
                                                if METRICS_SCHEMA.field(n).type == pa.int64()},
                                             "pro_fpr_limit": 0.3}], schema=METRICS_SCHEMA)
        with fsspec.open(layout.metrics_file, "wb") as handle:
            pq.write_table(metric_rows, handle)
        files["metrics"] = [layout.metrics_file]
    return layout, files


def commit(table_url: str, scan_date: str, run_id: str, images, **kwargs) -> dict:
    meta = run_metadata(run_id, kwargs.get("digests", DIGESTS), kwargs.get("thresholds_digest"))
    _, files = write_run(table_url, scan_date, run_id, images, **kwargs)
    return tbl.commit_run(table_url, scan_date, files, meta)


def read(table_url: str, kind: str = "records", version: int | None = None) -> pa.Table:
    return DeltaTable(tbl.delta_uri(table_url, kind), version=version).to_pyarrow_table()


def versions(table_url: str) -> dict[str, int]:
    return {kind: DeltaTable(tbl.delta_uri(table_url, kind)).version() for kind in tbl.KINDS}


def night_rows(table_url: str, kind: str = "records") -> dict[str, list[str]]:
    """scan_date (ISO) → sorted run ids of its rows."""
    rows = read(table_url, kind).to_pylist()
    nights: dict[str, list[str]] = {}
    for row in rows:
        nights.setdefault(row["scan_date"].isoformat(), []).append(row.get("run_id", "?"))
    return {night: sorted(runs) for night, runs in nights.items()}


def data_files(table_url: str, kind: str) -> set[str]:
    root = Path(tbl.delta_uri(table_url, kind))
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


# --- layout and validation -----------------------------------------------------------------


def test_layout_puts_each_kind_in_its_partition_with_names_unique_to_the_attempt(tmp_path):
    layout = tbl.table_layout(str(tmp_path / "t"), NIGHT_2, "run-1", attempt="a1")
    assert layout.folders == {k: f"{tmp_path}/t/{k}/scan_date={NIGHT_2}" for k in tbl.KINDS}
    assert layout.prefixes["records"] == f"{tmp_path}/t/records/scan_date={NIGHT_2}/run-1-a1-records"
    assert layout.metrics_file == f"{tmp_path}/t/metrics/scan_date={NIGHT_2}/run-1-a1-metrics.parquet"
    assert tbl.table_layout("gs://b/t/", NIGHT_2, "r").folders["failures"].startswith("gs://b/t/failures/scan_date=")
    assert tbl.table_layout("opendal+gcs://b/t", NIGHT_2, "r").folders["records"].startswith("gs://b/t/records/")
    assert tbl.table_layout("t", NIGHT_2, "r").attempt != tbl.table_layout("t", NIGHT_2, "r").attempt
    with pytest.raises(TableError, match="--scan_date must be a date written YYYY-MM-DD, got '2026-12-6'"):
        tbl.table_layout("t", "2026-12-6", "r")
    with pytest.raises(TableError, match="--scan_date '2026-02-30' is not a calendar date"):
        tbl.parse_scan_date("2026-02-30")
    with pytest.raises(TableError, match="run id 'a/b' cannot start a data file name"):
        tbl.table_layout("t", NIGHT_2, "a/b")
    assert tbl.parse_scan_date(tbl.today_utc()) == dt.datetime.now(dt.timezone.utc).date().isoformat()


# --- nights: append, rerun ------------------------------------------------------------------


def test_two_nights_are_appended_one_commit_per_table_with_the_run_metadata(tmp_path):
    table = str(tmp_path / "table")
    first = commit(table, NIGHT_1, "run-a", range(30), failures=2)
    second = commit(table, NIGHT_2, "run-b", range(100, 120), failures=1, thresholds_digest=THRESHOLDS)
    # version 0 creates each table, then one commit per night and table
    assert first == {"failures": 1, "metrics": 1, "records": 1}
    assert second == {"failures": 2, "metrics": 2, "records": 2}
    records = read(table)
    assert records.num_rows == 50
    assert sorted(records.column("image_id").to_pylist()) == sorted(
        [f"bottle/test/img{i:06d}" for i in [*range(30), *range(100, 120)]])
    assert night_rows(table) == {NIGHT_1: ["run-a"] * 30, NIGHT_2: ["run-b"] * 20}
    assert night_rows(table, "failures") == {NIGHT_1: ["run-a"] * 2, NIGHT_2: ["run-b"]}
    assert night_rows_of(read(table, "metrics")) == {NIGHT_1: 1, NIGHT_2: 1}
    # the files are added in place: no copy of the data under the table
    assert data_files(table, "records") == {p.split("/records/", 1)[1] for p in
                                            DeltaTable(tbl.delta_uri(table, "records")).file_uris()}
    latest = tbl.history(table)[0]
    assert latest["version"] == 2 and latest["operation"] == "WRITE"
    assert {k: latest[k] for k in ("run_id", "scan_date", "kind", "files", "rows", "model_profile", "model_digests",
                                   "thresholds_digest", "pipeline_version")} == {
        "run_id": "run-b", "scan_date": NIGHT_2, "kind": "records", "files": 2, "rows": 20, "model_profile": "tiny",
        "model_digests": DIGESTS, "thresholds_digest": THRESHOLDS, "pipeline_version": "0.1.0"}
    assert [h["operation"] for h in tbl.history(table, kind="failures")] == ["WRITE", "WRITE", "CREATE TABLE"]
    # each file's row count and the key columns' bounds are in the log (count without reading, file skipping)
    actions = pa.table(DeltaTable(tbl.delta_uri(table, "records")).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in actions) == 50
    assert all(a["min.run_id"] == a["max.run_id"] and a["null_count.thresholds_digest"] in (0, a["num_records"])
               for a in actions)


def test_the_record_schema_survives_the_table(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(3), shards=1)
    stored = read(table).sort_by("image_id")
    expected = pa.Table.from_pylist([record(i, "run-a") for i in range(3)], schema=RECORDS)
    assert stored.schema.field("scan_date").type == pa.date32()
    assert stored.schema.field("processed_at").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_map(stored.schema.field("model_digests").type)
    for name in RECORDS.names:
        assert stored.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert set(stored.schema.names) == set(RECORDS.names) | {"scan_date"}


def test_a_rerun_of_a_night_replaces_it_in_one_commit(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(10))
    commit(table, NIGHT_2, "night2", range(50, 70))
    before, old_files = versions(table), data_files(table, "records")
    commit(table, NIGHT_2, "night2", range(50, 70))  # the same night, same --run_id, same images
    assert versions(table) == {kind: v + 1 for kind, v in before.items()}
    records = read(table)
    assert records.num_rows == 30  # rows unchanged: the night's rows were replaced, not doubled
    new_files = data_files(table, "records") - old_files
    live = {p.split("/records/", 1)[1] for p in DeltaTable(tbl.delta_uri(table, "records")).file_uris()}
    assert live == new_files | {f for f in old_files if NIGHT_1 in f}  # the old night-2 files are out
    # a rerun with other images and another run id: the old rows are gone, night 1 untouched
    commit(table, NIGHT_2, "night2-fix", range(60, 65))
    assert night_rows(table) == {NIGHT_1: ["run-a"] * 10, NIGHT_2: ["night2-fix"] * 5}
    assert night_rows(table, "failures") == {NIGHT_1: ["run-a"], NIGHT_2: ["night2-fix"]}
    # readers of an older version still see the whole old night (until vacuum)
    assert night_rows_of(read(table, version=before["records"])) == {NIGHT_1: 10, NIGHT_2: 20}
    on_disk = data_files(table, "records")
    live = {p.split("/records/", 1)[1] for p in DeltaTable(tbl.delta_uri(table, "records")).file_uris()}
    deleted = tbl.vacuum(table, retention_hours=0, enforce_retention=False)
    assert set(deleted["records"]) == on_disk - live and len(on_disk - live) == 4  # two replaced runs of 2 shards
    assert data_files(table, "records") == live
    assert night_rows(table) == {NIGHT_1: ["run-a"] * 10, NIGHT_2: ["night2-fix"] * 5}


def test_committing_the_same_files_again_does_nothing(tmp_path):
    table = str(tmp_path / "table")
    layout, files = write_run(table, NIGHT_1, "run-a", range(6), shards=3)
    written = [*files["records"], *files["failures"], *files["metrics"], f"{tmp_path}/out/run-a/report.html"]
    assert tbl.files_by_kind(layout, written) == {kind: sorted(files[kind]) for kind in tbl.KINDS}
    first = tbl.commit_run(table, NIGHT_1, files, run_metadata("run-a"))
    # a launcher retrying its last step after the commits landed
    assert tbl.commit_run(table, NIGHT_1, files, run_metadata("run-a")) == {kind: None for kind in tbl.KINDS}
    assert versions(table) == first
    # files of a committed night mixed with new ones: refused
    _, more = write_run(table, NIGHT_1, "run-b", range(6), shards=1)
    with pytest.raises(TableError, match="already holds some of these files but not exactly these"):
        tbl.commit_kind(table, "records", NIGHT_1, files["records"] + more["records"], run_metadata("run-b"))


def night_rows_of(rows: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for day in rows.column("scan_date").to_pylist():
        counts[day.isoformat()] = counts.get(day.isoformat(), 0) + 1
    return counts


def test_a_kind_without_files_clears_its_night(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(5))
    commit(table, NIGHT_2, "run-b", range(5, 10))
    metrics_version = versions(table)["metrics"]
    result = commit(table, NIGHT_2, "run-c", range(5, 10), metrics=False)  # e.g. --eval=off
    assert result["metrics"] == metrics_version + 1
    assert night_rows_of(read(table, "metrics")) == {NIGHT_1: 1}
    # nothing left to clear: no commit at all
    assert commit(table, NIGHT_2, "run-d", range(5, 10), metrics=False)["metrics"] is None
    assert versions(table)["metrics"] == metrics_version + 1


def test_bad_commits_are_refused_before_anything_is_committed(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(5))
    before = versions(table)
    _, files = write_run(table, NIGHT_2, "run-b", range(5))
    with pytest.raises(TableError, match="commit metadata lacks thresholds_digest"):
        tbl.commit_run(table, NIGHT_2, files, {k: v for k, v in run_metadata("run-b").items()
                                               if k != "thresholds_digest"})
    with pytest.raises(TableError, match=f"is not a Parquet file directly in .*/scan_date={NIGHT_1}"):
        tbl.commit_run(table, NIGHT_1, files, run_metadata("run-b"))  # files of another night
    with pytest.raises(TableError, match="unknown table kind"):
        tbl.commit_run(table, NIGHT_2, {**files, "maps": []}, run_metadata("run-b"))
    missing = {**files, "records": files["records"] + [files["records"][0].replace("-00000-", "-00009-")]}
    with pytest.raises(TableError, match="file .*-00009-of-00002.parquet does not exist"):
        tbl.commit_run(table, NIGHT_2, missing, run_metadata("run-b"))
    # a run whose records lack a column of the table: refused, naming the column
    layout = tbl.table_layout(table, NIGHT_2, "run-c")
    narrow = shard_url(layout.prefixes["records"], 0, 1)
    write_parquet(narrow, [record(1, "run-c")], RECORDS.remove(RECORDS.get_field_index("stage2_ms")))
    with pytest.raises(TableError, match="records: this run's files do not fit the table .* the run lacks stage2_ms"):
        tbl.commit_run(table, NIGHT_2, {**files, "records": [narrow]}, run_metadata("run-c"))
    assert versions(table) == before  # the failures and metrics of those runs were not committed either
    # a new nullable column is schema evolution: accepted, old rows read it as null
    wider_layout = tbl.table_layout(table, NIGHT_2, "run-d")
    wider = shard_url(wider_layout.prefixes["records"], 0, 1)
    write_parquet(wider, [{**record(7, "run-d"), "operator_note": "ok"}],
                  RECORDS.append(pa.field("operator_note", pa.string())))
    tbl.commit_kind(table, "records", NIGHT_2, [wider], run_metadata("run-d"))
    rows = read(table).sort_by("scan_date")
    assert rows.column("operator_note").to_pylist() == [None] * 5 + ["ok"]


def test_file_stats_come_from_every_row_group_of_the_footer(tmp_path):
    table = str(tmp_path / "table")
    layout = tbl.table_layout(table, NIGHT_1, "run-a")
    url = shard_url(layout.prefixes["records"], 0, 1)
    rows = [record(i, "run-a", thresholds_digest=THRESHOLDS if i >= 2000 else None) for i in range(2500)]
    rows[1500]["anomaly_map_png"] = None
    write_parquet(url, rows, RECORDS)  # row groups of 1000 rows: the last holds every thresholds digest
    assert pq.ParquetFile(url).metadata.num_row_groups == 3
    tbl.commit_kind(table, "records", NIGHT_1, [url], run_metadata("run-a"))
    (action,) = pa.table(DeltaTable(tbl.delta_uri(table, "records")).get_add_actions(flatten=True)).to_pylist()
    assert action["num_records"] == 2500
    assert (action["min.image_id"], action["max.image_id"]) == ("bottle/test/img000000", "bottle/test/img002499")
    assert (action["min.thresholds_digest"], action["max.thresholds_digest"]) == (THRESHOLDS, THRESHOLDS)
    assert action["null_count.thresholds_digest"] == 2000
    assert (action["min.gt_label"], action["max.gt_label"]) == (0, 1)
    assert action["min.processed_at"] is None  # only strings and integers get bounds
    # a filter on a column with bounds skips the file without reading it
    dataset = DeltaTable(tbl.delta_uri(table, "records")).to_pyarrow_dataset()
    assert dataset.to_table(filter=pds.field("image_id") == "zzz").num_rows == 0
    assert dataset.to_table(filter=pds.field("image_id") == "bottle/test/img001234").num_rows == 1


# --- crashes and concurrency (real processes) ----------------------------------------------

WORKER = """
import json, os, sys, time
from pipeline import table as tbl
from tests.test_table import run_metadata, write_run
table, night, run_id, first, count, mode, sync = sys.argv[1:8]
layout, files = write_run(table, night, run_id, range(int(first), int(first) + int(count)), shards=3)
open(os.path.join(sync, run_id + '.ready'), 'w').close()
if mode == 'hang':  # the run is killed here: files written, no commit
    time.sleep(600)
deadline = time.time() + 120
while not os.path.exists(os.path.join(sync, 'go')):
    if time.time() > deadline:
        sys.exit('no go signal')
    time.sleep(0.002)
print(json.dumps(tbl.commit_run(table, night, files, run_metadata(run_id))))
"""


def start_worker(table: str, night: str, run_id: str, first: int, count: int, mode: str, sync: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WORKER, table, night, run_id, str(first), str(count), mode,
                             str(sync)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(sync: Path, run_ids, workers, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not all((sync / f"{r}.ready").exists() for r in run_ids):
        for worker in workers:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited early: {worker.communicate()[1][-2000:]}")
        assert time.time() < deadline, "workers did not get ready"
        time.sleep(0.05)


def run_at_once(table: str, runs: list[tuple[str, str, int, int]], tmp_path: Path) -> list[dict]:
    """Start one process per (night, run_id, first image, count); once all have written their
    files, release them together; returns each one's commit versions."""
    sync = tmp_path / "sync"
    sync.mkdir(exist_ok=True)
    workers = [start_worker(table, night, run_id, first, count, "commit", sync) for night, run_id, first, count in runs]
    try:
        wait_ready(sync, [r[1] for r in runs], workers)
        (sync / "go").touch()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def test_a_run_killed_before_its_commit_leaves_the_table_as_it_was(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(10))
    commit(table, NIGHT_2, "run-b", range(10, 20))
    before_versions = versions(table)
    before_rows = {kind: read(table, kind) for kind in tbl.KINDS}
    before_files = {kind: data_files(table, kind) for kind in tbl.KINDS}
    sync = tmp_path / "sync"
    sync.mkdir()
    worker = start_worker(table, NIGHT_2, "rerun-b", 10, 25, "hang", sync)
    try:
        wait_ready(sync, ["rerun-b"], [worker])
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL
    strays = {kind: data_files(table, kind) - before_files[kind] for kind in tbl.KINDS}
    assert len(strays["records"]) == 3 and len(strays["failures"]) == 1 and len(strays["metrics"]) == 1
    assert versions(table) == before_versions
    for kind in tbl.KINDS:
        assert read(table, kind).equals(before_rows[kind]), kind
    # vacuum keeps files younger than the retention (a run may still be writing them) ...
    assert tbl.vacuum(table, dry_run=True) == {kind: [] for kind in tbl.KINDS}
    # ... and deletes the strays once they are older; the table's versions and rows stay as they were
    deleted = tbl.vacuum(table, retention_hours=0, enforce_retention=False)
    assert {kind: set(paths) for kind, paths in deleted.items()} == strays
    assert {kind: data_files(table, kind) for kind in tbl.KINDS} == before_files
    for kind in tbl.KINDS:
        assert read(table, kind).equals(before_rows[kind]), kind


def test_processes_committing_different_nights_at_once_all_land(tmp_path):
    table = str(tmp_path / "table")  # no table yet: the processes also race to create it
    results = run_at_once(table, [(NIGHT_1, "run-1", 0, 40), (NIGHT_2, "run-2", 100, 30),
                                  (NIGHT_3, "run-3", 200, 20)], tmp_path)
    assert night_rows(table) == {NIGHT_1: ["run-1"] * 40, NIGHT_2: ["run-2"] * 30, NIGHT_3: ["run-3"] * 20}
    assert night_rows(table, "failures") == {NIGHT_1: ["run-1"], NIGHT_2: ["run-2"], NIGHT_3: ["run-3"]}
    assert night_rows_of(read(table, "metrics")) == {NIGHT_1: 1, NIGHT_2: 1, NIGHT_3: 1}
    for kind in tbl.KINDS:  # each commit is its own version, after the one creation of the table
        assert sorted(r[kind] for r in results) == [1, 2, 3]
        assert [h["operation"] for h in tbl.history(table, kind=kind)] == ["WRITE"] * 3 + ["CREATE TABLE"]


def test_processes_rerunning_the_same_night_at_once_leave_exactly_one_of_them(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-0", range(10))
    commit(table, NIGHT_2, "old", range(1000, 1007))
    run_at_once(table, [(NIGHT_2, "rerun-x", 0, 20), (NIGHT_2, "rerun-y", 500, 15)], tmp_path)
    for kind in ("records", "failures"):
        nights = night_rows(table, kind)
        assert nights[NIGHT_1] == ["run-0"] * (10 if kind == "records" else 1)
        assert nights[NIGHT_2] in (["rerun-x"] * (20 if kind == "records" else 1),
                                   ["rerun-y"] * (15 if kind == "records" else 1)), nights[NIGHT_2]
    assert night_rows_of(read(table, "metrics")) == {NIGHT_1: 1, NIGHT_2: 1}


# --- incremental scoring -------------------------------------------------------------------


def test_scored_keys_are_the_hashes_scored_with_the_same_models_and_thresholds(tmp_path):
    table = str(tmp_path / "table")
    assert tbl.scored_keys(table, DIGESTS, None).num_rows == 0  # no table yet
    commit(table, NIGHT_1, "run-a", range(10))
    commit(table, NIGHT_2, "run-b", range(5, 15), thresholds_digest=THRESHOLDS)
    commit(table, NIGHT_3, "run-c", range(20, 25), digests=OTHER_DIGESTS)
    commit(table, "2026-12-08", "run-d", range(8, 12))  # images 8 and 9 again, same models

    def keys(*args, **kwargs) -> set[str]:
        found = tbl.scored_keys(table, *args, **kwargs)
        assert found.schema == pa.schema([pa.field(tbl.SCORED_KEY, pa.string())])
        assert found.num_rows == len(set(found.column(0).to_pylist()))
        return set(found.column(0).to_pylist())

    assert keys(DIGESTS, None) == {content_hash(i) for i in range(12)}
    streamed = [key for keys_read in tbl.iter_scored_keys(table, DIGESTS, None) for key in keys_read.to_pylist()]
    assert sorted(streamed) == sorted([content_hash(i) for i in [*range(10), *range(8, 12)]])  # repeats kept
    assert keys(DIGESTS, THRESHOLDS) == {content_hash(i) for i in range(5, 15)}
    assert keys(OTHER_DIGESTS, None) == {content_hash(i) for i in range(20, 25)}
    assert keys({k: v for k, v in DIGESTS.items() if k != "umci"}, None) == set()  # fewer roles: other models
    assert keys({**DIGESTS, "extra": "0"}, None) == set()
    assert keys(DIGESTS, "0" * 64) == set()
    # a rerun of night 1 must not skip night 1's own images
    assert keys(DIGESTS, None, excluding_scan_date=NIGHT_1) == {content_hash(i) for i in range(8, 12)}
    assert keys(DIGESTS, THRESHOLDS, since=NIGHT_2) == {content_hash(i) for i in range(5, 15)}
    assert keys(DIGESTS, THRESHOLDS, since=NIGHT_3) == set()


# --- maintenance and the command line ------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.table", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_command_line_history_show_compact_vacuum(tmp_path):
    table = str(tmp_path / "table")
    commit(table, NIGHT_1, "run-a", range(12), shards=4)
    commit(table, NIGHT_2, "run-b", range(50, 53), shards=1, thresholds_digest=THRESHOLDS)

    done = cli("history", f"--table={table}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("v2  ") and "WRITE" in lines[0]
    assert f"scan_date={NIGHT_2} run=run-b files=1 rows=3 profile=tiny" in lines[0]
    assert f"thresholds={THRESHOLDS[:12]}" in lines[0] and "thresholds=none" in lines[1]
    assert "CREATE TABLE" in lines[2]
    done = cli("history", f"--table={table}", "--kind=failures", "--limit=1", "--json")
    assert json.loads(done.stdout)["run_id"] == "run-b"

    done = cli("show", f"--table={table}", f"--scan_date={NIGHT_1}")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image_id"] for r in rows] == [f"bottle/test/img{i:06d}" for i in range(12)]
    assert set(rows[0]) == set(tbl.SHOW_COLUMNS["records"]) and rows[0]["scan_date"] == NIGHT_1
    done = cli("show", f"--table={table}", "--image_id=bottle/test/img000051",
               "--columns=scan_date,image_id,model_digests,processed_at,anomaly_map_png")
    assert [json.loads(line) for line in done.stdout.splitlines()] == [{
        "scan_date": NIGHT_2, "image_id": "bottle/test/img000051", "model_digests": DIGESTS,
        "processed_at": "2026-12-06T03:00:51+00:00", "anomaly_map_png": "<8 bytes>"}]
    done = cli("show", f"--table={table}", "--kind=failures")
    assert [json.loads(line)["run_id"] for line in done.stdout.splitlines()] == ["run-a", "run-b"]
    done = cli("show", f"--table={table}", "--columns=nope")
    assert done.returncode == 2 and done.stderr.strip() == "error: records has no column(s) nope"
    done = cli("show", f"--table={tmp_path / 'nothing'}")
    assert done.returncode == 2 and done.stderr.startswith("error: no Delta table at ")

    before = read(table).sort_by("image_id")
    records_version = versions(table)["records"]
    done = cli("compact", f"--table={table}", "--kind=records", f"--scan_date={NIGHT_1}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "records: 4 files rewritten into 1"
    assert versions(table)["records"] == records_version + 1
    assert read(table).sort_by("image_id").select(before.column_names).to_pylist() == before.to_pylist()
    assert tbl.history(table, limit=1)[0]["operation"] == "OPTIMIZE"
    assert tbl.scored_keys(table, DIGESTS, None).num_rows == 12

    done = cli("vacuum", f"--table={table}", "--dry_run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["records: would delete 0 files", "failures: would delete 0 files",
                                        "metrics: would delete 0 files"]
    done = cli("vacuum", f"--table={table}", "--retention_hours=0")
    assert done.returncode == 2 and done.stderr.startswith("error: records: vacuum failed: ")
    done = cli("vacuum", f"--table={table}", "--retention_hours=0", "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "records: deleted 4 files"
    assert len(data_files(table, "records")) == 2
    assert read(table).sort_by("image_id").select(before.column_names).to_pylist() == before.to_pylist()


DOC_QUERIES = [  # as docs/table.md shows them (compared with whitespace runs collapsed)
    ("SELECT scan_date, count(*) AS images, sum(CASE WHEN pred_label = 'NG' THEN 1 ELSE 0 END) AS ng "
     "FROM records GROUP BY scan_date ORDER BY scan_date"),
    ("SELECT image_id, image_score, model_digests['clip'] AS clip_digest FROM records "
     "WHERE scan_date = DATE '2026-12-06' AND pred_label = 'NG' ORDER BY image_score DESC LIMIT 20"),
]


def emulator_options(endpoint: str) -> dict[str, str]:
    """delta-rs on fake-gcs-server: its OpenDAL GCS back end (JSON API, conditional create) with
    a static token. The native gs:// back end writes through the XML API, which the emulator
    lacks (docs/table.md, "GCS")."""
    return {"opendal.endpoint": endpoint, "opendal.token": "emulator", "opendal.disable_vm_metadata": "true",
            "opendal.disable_config_load": "true"}


def test_nights_on_the_gcs_emulator(gcs_emulator):
    table = f"opendal+gcs://{gcs_emulator.bucket}/tables/nightly-{os.getpid()}"
    options = emulator_options(gcs_emulator.endpoint)
    first_files = []
    for night, run_id, images in ((NIGHT_1, "run-a", range(8)), (NIGHT_2, "run-b", range(8, 20)),
                                  (NIGHT_2, "run-c", range(8, 14))):
        layout, files = write_run(table, night, run_id, images)
        assert layout.folders["records"].startswith(f"gs://{gcs_emulator.bucket}/tables/")
        first_files = first_files or files["records"]
        tbl.commit_run(table, night, files, run_metadata(run_id), storage_options=options)
    dataset = DeltaTable(tbl.delta_uri(table, "records"), storage_options=options).to_pyarrow_table()
    assert night_rows_of(dataset) == {NIGHT_1: 8, NIGHT_2: 6}
    assert DeltaTable(tbl.delta_uri(table, "records"), storage_options=options).version() == 3
    assert set(tbl.scored_keys(table, DIGESTS, None, storage_options=options).column(0).to_pylist()) == {
        content_hash(i) for i in range(14)}
    shown = tbl.show(table, scan_date=NIGHT_2, columns=["image_id", "run_id"], storage_options=options)
    assert set(shown.column("run_id").to_pylist()) == {"run-c"}
    assert tbl.history(table, kind="metrics", storage_options=options)[0]["run_id"] == "run-c"
    # the files stay where the run wrote them (gcsfs), added in place
    assert all(gcs_emulator.fs.exists(url) for url in first_files)
