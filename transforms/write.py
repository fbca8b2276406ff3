"""Deterministic output files (Parquet shards, per-image files) on any fsspec URL.

Beam's `WriteToParquet` assigns bundles to shards at random (one shard may get every row, and
reruns differ), and Beam's file systems do not speak fsspec (`memory://`, custom schemes). So
rows are keyed by a hash of their `image_id` into a fixed number of shards, grouped, sorted by
`image_id` and written by one DoFn per shard as `<prefix>-SSSSS-of-NNNNN.parquet` (zstd): the same
input gives the same files with the same rows in the same order, and a retried shard simply
overwrites its own file. Every shard file is written, empty ones included, so consumers can
rely on the full set. Other per-image files (overlay JPEGs, `WriteFileShards`) follow the same
shard rule, without the empty shards.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import zlib
from typing import Any, Callable, Iterable, Iterator, Union

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
    with _replacing(url) as handle:
        pq.write_table(table, handle, compression="zstd", row_group_size=1000)
    LOG.info("wrote %d rows to %s", len(rows), url)


@contextlib.contextmanager
def _replacing(url: str) -> Iterator[Any]:
    """A binary handle on `<url>.inprogress`, renamed to `url` when the block ends without error:
    readers never see half a file, and a retried write replaces the file whole."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = path + ".inprogress"
    with fs.open(tmp, "wb") as handle:
        yield handle
    fs.mv(tmp, path)


def write_file(url: str, data: bytes) -> None:
    """Write one file whole (`_replacing`)."""
    with _replacing(url) as handle:
        handle.write(data)


class _WriteParquetShard(beam.DoFn):
    def __init__(self, prefix: str, schema: pa.Schema) -> None:
        self.prefix, self.schema = prefix, schema

    def process(self, keyed: tuple[int, Iterable[Any]], num_shards: int) -> Iterable[str]:
        index, rows = keyed
        url = shard_url(self.prefix, index, num_shards)
        write_parquet(url, [r for r in rows if r is not None], self.schema)
        yield url


class _WriteFilesOfShard(beam.DoFn):
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def process(self, keyed: tuple[int, Iterable[tuple[str, str, bytes]]]) -> Iterable[str]:
        for _, relative, data in sorted(keyed[1], key=lambda item: item[1]):
            url = f"{self.root}/{relative}"
            write_file(url, data)
            yield url


ShardCount = Union[int, beam.PCollection]  # a fixed count, or a one-element PCollection (`shards_for`)


def shards_for(rows: beam.PCollection, rows_per_shard: int) -> beam.PCollection:
    """The shard count for `rows`, computed in the pipeline: ceil(rows / rows_per_shard), at least 1."""
    return (rows
            | "CountRows" >> beam.combiners.Count.Globally()
            | "ShardsForRows" >> beam.Map(lambda n: max(1, math.ceil(n / rows_per_shard))))


def _count_pcollection(pipeline: beam.Pipeline, num_shards: ShardCount) -> beam.PCollection:
    if isinstance(num_shards, beam.PCollection):
        return num_shards
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    return pipeline | "ShardCount" >> beam.Create([num_shards])


def _by_shard(elements: beam.PCollection, count: beam.PCollection, image_id: Callable[[Any], str]) -> beam.PCollection:
    return elements | "KeyByShard" >> beam.Map(lambda e, n: (shard_of(image_id(e), n), e),
                                                 n=beam.pvalue.AsSingleton(count))


class WriteParquetShards(beam.PTransform):
    """PCollection of row dicts → `num_shards` Parquet files under `prefix`; outputs the file URLs.
    `num_shards`: an int, or a one-element PCollection of it (`shards_for`)."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: ShardCount = 1) -> None:
        super().__init__()
        if isinstance(num_shards, int) and num_shards < 1:
            raise ValueError("num_shards must be at least 1")
        self.prefix, self.schema, self.num_shards = prefix, schema, num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        count = _count_pcollection(rows.pipeline, self.num_shards)
        keyed = _by_shard(rows, count, lambda r: r["image_id"])
        # One placeholder per shard so that empty shards are written too.
        placeholders = count | "EveryShard" >> beam.FlatMap(lambda n: [(i, None) for i in range(n)])
        return (
            (keyed, placeholders)
            | "Together" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteParquetShard(self.prefix, self.schema), beam.pvalue.AsSingleton(count))
        )


class WriteFileShards(beam.PTransform):
    """PCollection of (image_id, relative path, bytes) → one file each at `<root>/<relative path>`,
    grouped into `num_shards` shards by the same image-id hash as the Parquet shards (one DoFn
    call per shard, files in path order); outputs the file URLs. Relative paths must be made of
    safe names (`safe_name`): they are joined to `root` as they are."""

    def __init__(self, root: str, num_shards: ShardCount = 1) -> None:
        super().__init__()
        if isinstance(num_shards, int) and num_shards < 1:
            raise ValueError("num_shards must be at least 1")
        self.root, self.num_shards = root, num_shards

    def expand(self, files: beam.PCollection) -> beam.PCollection:
        return (
            _by_shard(files, _count_pcollection(files.pipeline, self.num_shards), lambda f: f[0])
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(_WriteFilesOfShard(self.root))
        )


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str) -> str:
    """`name` as one harmless path segment: characters other than letters, digits, '.', '_' and
    '-' become '_', leading dots are dropped, and a name that had to change gets the crc32 of the
    original appended, so that different names stay different files."""
    cleaned = _SAFE.sub("_", name).lstrip(".")
    if cleaned == name and cleaned:
        return name
    return f"{cleaned[:80] or '_'}-{zlib.crc32(name.encode('utf-8', 'surrogateescape')):08x}"


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
