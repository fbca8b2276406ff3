"""Deterministic Parquet output on any fsspec URL.

Beam's `WriteToParquet` assigns bundles to shards at random (one shard may get every row, and
reruns differ), and Beam's file systems do not speak fsspec (`memory://`, custom schemes). So
rows are keyed by a hash of their `image_id` into a fixed number of shards, grouped, sorted by
`image_id` and written by one DoFn per shard as `<prefix>-SSSSS-of-NNNNN.parquet` (zstd): the same
input gives the same files with the same rows in the same order, and a retried shard simply
overwrites its own file. Every shard file is written, empty ones included, so consumers can
rely on the full set.
"""
from __future__ import annotations

import json
import logging
import zlib
from typing import Any, Iterable

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

LOG = logging.getLogger(__name__)


def shard_of(image_id: str, num_shards: int) -> int:
    """Stable shard index of a row (crc32, not Python's salted hash)."""
    return zlib.crc32(image_id.encode("utf-8")) % num_shards


def shard_url(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.parquet"


def write_parquet(url: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write rows (sorted by image_id) to one Parquet file via a temporary name and a rename."""
    rows = sorted(rows, key=lambda r: (r["image_id"], r.get("stage", "")))
    table = pa.Table.from_pylist(rows, schema=schema)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = path + ".inprogress"
    with fs.open(tmp, "wb") as handle:
        pq.write_table(table, handle, compression="zstd", row_group_size=1000)
    fs.mv(tmp, path)
    LOG.info("wrote %d rows to %s", len(rows), url)


class _WriteShard(beam.DoFn):
    def __init__(self, prefix: str, num_shards: int, schema: pa.Schema) -> None:
        self.prefix, self.num_shards, self.schema = prefix, num_shards, schema

    def process(self, keyed: tuple[int, Iterable[Any]]) -> Iterable[str]:
        index, rows = keyed
        url = shard_url(self.prefix, index, self.num_shards)
        write_parquet(url, [r for r in rows if r is not None], self.schema)
        yield url


class WriteParquetShards(beam.PTransform):
    """PCollection of row dicts → `num_shards` Parquet files under `prefix`; outputs the file URLs."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 1) -> None:
        super().__init__()
        if num_shards < 1:
            raise ValueError("num_shards must be at least 1")
        self.prefix, self.schema, self.num_shards = prefix, schema, num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        n = self.num_shards
        keyed = rows | "KeyByShard" >> beam.Map(lambda r: (shard_of(r["image_id"], n), r))
        # One placeholder per shard so that empty shards are written too.
        placeholders = rows.pipeline | "EveryShard" >> beam.Create([(i, None) for i in range(n)])
        return (
            (keyed, placeholders)
            | "Together" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self.prefix, n, self.schema))
        )


WRITTEN_FILES = ".written-files.json"


def _record_written(urls: list[str], run_dir: str, run_id: str) -> str:
    listing = f"{run_dir.rstrip('/')}/{WRITTEN_FILES}"
    with fsspec.open(listing, "w", encoding="utf-8") as handle:
        json.dump({"run_id": run_id, "files": sorted(urls)}, handle, indent=2)
    LOG.info("run %s wrote %d files (listed in %s)", run_id, len(urls), listing)
    return listing


class ListWrittenFiles(beam.PTransform):
    """File URLs written by every sink → `<run_dir>/.written-files.json`, once, after all of them.

    The launcher reads it after the job to write the report and then `_SUCCESS.json`
    (`pipeline.run_folder`), which lists exactly these files. It also joins every branch of the
    graph into one final step, which runners that compute only the last transform's lineage
    (Beam's DaskRunner) need to execute every sink.
    """

    def __init__(self, run_dir: str, run_id: str) -> None:
        super().__init__()
        self.run_dir, self.run_id = run_dir, run_id

    def expand(self, urls: beam.PCollection) -> beam.PCollection:
        return (
            urls
            | "AllFiles" >> beam.combiners.ToList()
            | "ListFiles" >> beam.Map(_record_written, run_dir=self.run_dir, run_id=self.run_id)
        )
