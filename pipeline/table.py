"""The nightly results table: every night's rows in three Delta Lake tables, one commit per table.

    python -m pipeline.table history --table=gs://qa/clipsam-table
    python -m pipeline.table show    --table=gs://qa/clipsam-table --scan_date=2026-12-06
    python -m pipeline.table show    --table=gs://qa/clipsam-table --image_id=bottle/test/broken_large/000
    python -m pipeline.table vacuum  --table=gs://qa/clipsam-table [--retention_hours=168] [--dry_run]
    python -m pipeline.table compact --table=gs://qa/clipsam-table [--scan_date=2026-12-06]

Layout (docs/table.md): under the table URL, `records/`, `failures/` and `metrics/` are three Delta
tables (delta-rs, the `deltalake` package), each partitioned by `scan_date` (a date). A run writes
its Parquet files straight into the partition folders (`table_layout`), with names unique to the
run and the attempt, so no file of a committed version is ever overwritten; `commit_run` then
adds exactly those files, in place, with one transaction per table that also removes every file
the night had before. Until that commit the table is exactly as it was: a run that dies leaves
only unreferenced files, which `vacuum` deletes once they are older than the retention period.

Commits are optimistic and never rebased: each attempt reads the latest version, derives the
night's remove actions from it and must land as the very next version (delta-rs's own retries,
which would reuse a stale list of removes, are off); when another commit got there first the
attempt is redone from the new version. So two nights commit side by side, and two runs of the
same night leave exactly one of them, never both or a mix.

The module imports only pyarrow, fsspec and deltalake (no Beam, no torch), so the launcher's
commit step and the command line stay light.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

LOG = logging.getLogger("clipsam.table")

KINDS = ("records", "failures", "metrics")
# Records last: once a night's records are in, every other table already holds that night.
COMMIT_ORDER = ("failures", "metrics", "records")
PARTITION_COLUMN = "scan_date"
SCORED_KEY = "content_sha256"  # records column: sha256 of the input's bytes
METADATA_KEY = "clipsam"  # commitInfo key holding the run's metadata
REQUIRED_METADATA = ("run_id", "model_profile", "model_digests", "thresholds_digest", "pipeline_version")
DEFAULT_RETENTION_HOURS = 168  # delta-rs's default for delta.deletedFileRetentionDuration
MAX_COMMIT_ATTEMPTS = 30
# A checkpoint every 10 commits: opening the table (every commit does) replays at most 10 JSON
# commits after the last checkpoint, whose size follows the live files, not the history.
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9._-]*$")  # no leading '.' or '_': readers skip such files
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Top-level columns whose Parquet min/max go into the add actions' stats (file skipping).
_STATS_TYPES = (pa.types.is_string, pa.types.is_integer)
SHOW_COLUMNS = {
    "records": ["scan_date", "image_id", "category", "image_score", "pred_label", "image_threshold",
                "anomaly_area_fraction", "gt_label", "model_profile", "run_id", "source_uri"],
    "failures": None,
    "metrics": None,
}


class TableError(RuntimeError):
    """A table operation that cannot be done; the message is one line."""


def _flat(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: delta-rs's multi-line, colored messages flattened and cut."""
    text = " ".join(_ANSI.sub("", f"{type(exc).__name__}: {exc}").replace("↳", " ").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def today_utc() -> str:
    """Today's date in UTC as YYYY-MM-DD (the default --scan_date)."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def parse_scan_date(text: str) -> str:
    """`text` if it is a calendar date written YYYY-MM-DD; TableError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise TableError(f"--scan_date must be a date written YYYY-MM-DD, got {text!r}")
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise TableError(f"--scan_date {text!r} is not a calendar date") from None
    return text


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TableError(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def _local_path(url: str) -> str:
    return os.path.abspath(url.removeprefix("file://"))


def delta_uri(table_url: str, kind: str) -> str:
    """What delta-rs opens for one kind: `<table>/<kind>` (local paths made absolute)."""
    _check_kind(kind)
    if _is_local(table_url):
        return os.path.join(_local_path(table_url), kind)
    return f"{table_url.rstrip('/')}/{kind}"


def files_url(table_url: str) -> str:
    """The table URL as fsspec (and so the Beam sinks) write it: local paths made absolute, and
    delta-rs's OpenDAL schemes (`opendal+gcs://b/t`, `opendal+s3://...`) as the plain scheme."""
    if _is_local(table_url):
        return _local_path(table_url)
    scheme, rest = table_url.split("://", 1)
    if scheme.startswith("opendal+"):
        scheme = {"gcs": "gs"}.get(scheme[len("opendal+"):], scheme[len("opendal+"):])
    return f"{scheme}://{rest.rstrip('/')}"


def _partition_dir(scan_date: str) -> str:
    return f"{PARTITION_COLUMN}={scan_date}"


@dataclass(frozen=True)
class RunLayout:
    """Where one run attempt writes its files (fsspec URLs) before `commit_run` adds them.

    folders: kind → `<table>/<kind>/scan_date=<date>`; prefixes: kind → `<folder>/<run_id>-<attempt>-<kind>`.
    Records and failures go to `transforms.write.WriteParquetShards(prefix)`
    (`<prefix>-SSSSS-of-NNNNN.parquet`), metrics to the one file `<prefix>.parquet`.
    """

    table_url: str
    scan_date: str
    run_id: str
    attempt: str
    folders: Mapping[str, str] = field(default_factory=dict)
    prefixes: Mapping[str, str] = field(default_factory=dict)

    @property
    def metrics_file(self) -> str:
        return f"{self.prefixes['metrics']}.parquet"


def table_layout(table_url: str, scan_date: str, run_id: str, attempt: str | None = None) -> RunLayout:
    """The folders and file prefixes of one run attempt of night `scan_date` (see RunLayout).

    `attempt` (default: a fresh random token) makes every launch's file names new, so a rerun
    with the same --run_id never overwrites a file that a committed version references. Raises
    TableError for a bad date or a run id / attempt that is not a plain file-name part.
    """
    parse_scan_date(scan_date)
    attempt = attempt or uuid.uuid4().hex[:12]
    for what, value in (("run id", run_id), ("attempt", attempt)):
        if not _SAFE_NAME.match(value or ""):
            raise TableError(f"{what} {value!r} cannot start a data file name (letters, digits, '.', '_' and '-', "
                             "not starting with '.' or '_')")
    root = files_url(table_url)
    folders = {kind: f"{root}/{kind}/{_partition_dir(scan_date)}" for kind in KINDS}
    prefixes = {kind: f"{folders[kind]}/{run_id}-{attempt}-{kind}" for kind in KINDS}
    return RunLayout(table_url, scan_date, run_id, attempt, folders, prefixes)


# --- inspecting the run's files ------------------------------------------------------------


@dataclass(frozen=True)
class _DataFile:
    path: str  # relative to the kind's table root
    size: int
    num_rows: int
    schema: pa.Schema
    stats: str  # Delta stats JSON


def _relative_path(url: str, root: str, kind: str, scan_date: str) -> str:
    """`url` relative to `<root>/<kind>`; TableError unless it is a Parquet file directly in the
    night's partition folder."""
    normalized = _local_path(url) if _is_local(url) else url
    folder = f"{root}/{kind}/{_partition_dir(scan_date)}/"
    if _is_local(url):
        folder = os.path.join(root, kind, _partition_dir(scan_date)) + os.sep
    name = normalized[len(folder):] if normalized.startswith(folder) else ""
    if not name or "/" in name or os.sep in name or not name.endswith(".parquet") or not _SAFE_NAME.match(name):
        raise TableError(f"{kind} file {url} is not a Parquet file directly in {folder.rstrip('/' + os.sep)}")
    return f"{_partition_dir(scan_date)}/{name}"


def _stats(meta: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta stats of one file from its Parquet footer: numRecords, and nullCount/min/max of the
    top-level string and integer columns whose every row group has exact statistics."""
    null_count: dict[str, int] = {}
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    for index in range(meta.num_columns):
        name = meta.schema.column(index).path
        if name not in schema.names or not any(test(schema.field(name).type) for test in _STATS_TYPES):
            continue
        nulls, lows, highs, counted, bounded = 0, [], [], True, True
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(index).statistics
            if stats is None or not stats.has_null_count:
                counted = bounded = False
                break
            nulls += stats.null_count
            if stats.has_min_max and getattr(stats, "is_min_value_exact", True) \
                    and getattr(stats, "is_max_value_exact", True):
                lows.append(stats.min)
                highs.append(stats.max)
            elif meta.row_group(group).num_rows > stats.null_count:
                bounded = False  # values without exact bounds: no bounds for the file
        if counted:
            null_count[name] = nulls
        if bounded and lows:  # no bounds either when every value is null
            minimum[name], maximum[name] = min(lows), max(highs)
    return json.dumps({"numRecords": meta.num_rows, "nullCount": null_count, "minValues": minimum,
                       "maxValues": maximum})


def _inspect(url: str, relative: str) -> _DataFile:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            meta, schema = parquet.metadata, parquet.schema_arrow.remove_metadata()
        size = int(fs.size(path))
    except FileNotFoundError:
        raise TableError(f"file {url} does not exist") from None
    except Exception as exc:  # fsspec back ends and the Parquet reader raise many types
        raise TableError(f"cannot read the Parquet footer of {url}: {_flat(exc)}") from None
    return _DataFile(relative, size, meta.num_rows, schema, _stats(meta, schema))


def _inspect_all(urls: Sequence[str], root: str, kind: str, scan_date: str) -> list[_DataFile]:
    relative = [_relative_path(url, root, kind, scan_date) for url in urls]
    if len(set(relative)) != len(relative):
        raise TableError(f"{kind}: the same file is listed twice")
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        return list(pool.map(_inspect, urls, relative))


# --- schemas -----------------------------------------------------------------------------


def _table_schema(file_schema: pa.Schema) -> pa.Schema:
    """The Delta table's schema: the files' columns, then the partition column."""
    if PARTITION_COLUMN in file_schema.names:
        raise TableError(f"the files already have a {PARTITION_COLUMN!r} column; it must only be the partition")
    return file_schema.append(pa.field(PARTITION_COLUMN, pa.date32(), nullable=False))


def _delta_fields(schema) -> dict[str, dict]:
    from deltalake import Schema as DeltaSchema

    if isinstance(schema, pa.Schema):
        schema = DeltaSchema.from_arrow(schema)
    return {f["name"]: f for f in json.loads(schema.to_json())["fields"]}


def _check_schemas(kind: str, files: list[_DataFile]) -> pa.Schema:
    """The one Delta-equivalent schema of all `files` (TableError naming a file that differs)."""
    first = _delta_fields(files[0].schema)
    for data_file in files[1:]:
        if _delta_fields(data_file.schema) != first:
            raise TableError(f"{kind}: {data_file.path} has other columns than {files[0].path}")
    return _table_schema(files[0].schema)


def _check_evolution(kind: str, uri: str, table_fields: dict[str, dict], run_fields: dict[str, dict]) -> None:
    """A run may add nullable columns; it may not drop or change one."""
    missing = [n for n in table_fields if n not in run_fields]
    changed = [n for n in table_fields if n in run_fields and run_fields[n] != table_fields[n]]
    required_new = [n for n in run_fields if n not in table_fields and not run_fields[n]["nullable"]]
    problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
        [f"changes {', '.join(changed)}"] if changed else []) + (
        [f"adds non-nullable {', '.join(required_new)}"] if required_new else [])
    if problems:
        raise TableError(f"{kind}: this run's files do not fit the table {uri}: the run {'; '.join(problems)}")


# --- commits -------------------------------------------------------------------------------


def _open(uri: str, storage_options: Mapping[str, str] | None, version: int | None = None):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, version=version, storage_options=dict(storage_options or {}) or None)
    except TableNotFoundError:
        return None


def _ensure_table(uri: str, schema: pa.Schema, kind: str, storage_options: Mapping[str, str] | None):
    """Open the kind's table, creating it (version 0, no data) if there is none; a concurrent
    creation by another run is fine."""
    from deltalake import CommitProperties, DeltaTable

    table = _open(uri, storage_options)
    if table is not None:
        return table
    try:  # no retries: a creation that lost the race must fail, not land again as a later version
        DeltaTable.create(uri, schema, mode="ignore", partition_by=[PARTITION_COLUMN], name=f"clipsam_{kind}",
                          description=f"ClipSAM nightly {kind}, one partition per scan_date (pipeline.table)",
                          configuration=TABLE_CONFIGURATION, storage_options=dict(storage_options or {}) or None,
                          commit_properties=CommitProperties(max_commit_retries=0))
    except Exception as exc:  # a creation race or a storage error: which one, the reopen tells
        table = _open(uri, storage_options)
        if table is None:
            raise TableError(f"cannot create the Delta table {uri}: {_flat(exc)}") from None
        return table
    table = _open(uri, storage_options)
    if table is None:
        raise TableError(f"created the Delta table {uri} but cannot open it")
    return table


def _find_commit(table, token: str, after_version: int) -> int | None:
    """Version of the commit carrying `token` among those after `after_version`, if any."""
    newer = table.version() - after_version
    if newer <= 0:
        return None
    for commit in table.history(limit=newer):
        if (commit.get(METADATA_KEY) or {}).get("commit_token") == token:
            return int(commit["version"])
    return None


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise TableError(f"commit metadata lacks {', '.join(missing)}")
    try:
        json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TableError(f"commit metadata is not plain JSON: {exc}") from None
    return dict(metadata)


def _plan(table_url: str, kind: str, scan_date: str, files: Sequence[str],
          storage_options: Mapping[str, str] | None) -> tuple[list[_DataFile], pa.Schema | None]:
    """Read the footers of a kind's files and check their schema against each other and against
    the existing table, before anything is committed; returns the files and their table schema."""
    data_files = _inspect_all(list(files), files_url(table_url), kind, scan_date)
    if not data_files:
        return data_files, None
    schema = _check_schemas(kind, data_files)
    uri = delta_uri(table_url, kind)
    table = _open(uri, storage_options)
    if table is not None:
        _check_evolution(kind, uri, _delta_fields(table.schema()), _delta_fields(schema))
    return data_files, schema


def _commit(table_url: str, kind: str, scan_date: str, data_files: list[_DataFile], schema: pa.Schema | None,
            metadata: dict[str, Any], storage_options: Mapping[str, str] | None, max_attempts: int) -> int | None:
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, CommitProperties

    uri = delta_uri(table_url, kind)
    if data_files:
        table = _ensure_table(uri, schema, kind, storage_options)
        run_fields = _delta_fields(schema)
    else:
        table = _open(uri, storage_options)
        if table is None:
            return None
        run_fields = None
    night_filter = [(PARTITION_COLUMN, "=", scan_date)]
    token = uuid.uuid4().hex
    info = {METADATA_KEY: {**metadata, "kind": kind, "scan_date": scan_date, "files": len(data_files),
                           "rows": sum(f.num_rows for f in data_files), "commit_token": token}}
    now_ms = int(time.time() * 1000)
    adds = [AddAction(f.path, f.size, {PARTITION_COLUMN: scan_date}, now_ms, True, f.stats) for f in data_files]
    first_read = None
    for attempt in range(max_attempts):
        if attempt:
            time.sleep(random.uniform(0.0, min(2.0, 0.02 * 2 ** attempt)))
            table = _open(uri, storage_options)
        read_version = table.version()
        if first_read is None:
            first_read = read_version
        elif (landed := _find_commit(table, token, first_read)) is not None:
            return landed  # an earlier attempt did land although it reported a failure
        night_now = {"/".join(live.rsplit("/", 2)[-2:])  # scan_date=<night>/<name>, as add actions name them
                     for live in table.file_uris(file_pruning_predicate=night_filter)}
        if night_now == {f.path for f in data_files}:
            return None  # already the night (a repeated commit_run): nothing to do
        if night_now & {f.path for f in data_files}:
            raise TableError(f"{kind}: night {scan_date} of {uri} already holds some of these files but not "
                             "exactly these; write a new run attempt (table_layout) instead")
        table_fields = _delta_fields(table.schema())
        commit_schema = pa.schema(table.schema().to_arrow())
        if run_fields is not None and run_fields != table_fields:
            _check_evolution(kind, uri, table_fields, run_fields)  # the table may have changed since _plan
            commit_schema = schema
        try:
            table.create_write_transaction(
                adds, "overwrite", DeltaSchema.from_arrow(commit_schema), partition_by=[PARTITION_COLUMN],
                partition_filters=night_filter,
                commit_properties=CommitProperties(custom_metadata=info, max_commit_retries=0))
        except CommitFailedError as exc:
            LOG.info("%s: commit of %s as version %d lost a race (%s); retrying", kind, scan_date, read_version + 1,
                     _flat(exc))
            continue
        except Exception as exc:  # storage and protocol errors: not a race, so not retried
            raise TableError(f"{kind}: cannot commit night {scan_date} to {uri}: {_flat(exc)}") from None
        LOG.info("%s: night %s committed as version %d of %s (%d files, %d rows)", kind, scan_date,
                 read_version + 1, uri, len(adds), info[METADATA_KEY]["rows"])
        return read_version + 1  # no rebase: the commit landed right after the version it read
    raise TableError(f"{kind}: night {scan_date} could not be committed to {uri} in {max_attempts} attempts "
                     "(other commits kept landing first)")


def commit_kind(table_url: str, kind: str, scan_date: str, files: Sequence[str], metadata: Mapping[str, Any], *,
                storage_options: Mapping[str, str] | None = None,
                max_attempts: int = MAX_COMMIT_ATTEMPTS) -> int | None:
    """Make `files` the whole of night `scan_date` in the `kind` table, in one commit; returns
    its version, or None when there was nothing to do (the night already holds exactly these
    files, so a repeated call is harmless; or no files, and the night holds none).

    Every file must lie directly in the night's partition folder (`table_layout`) and share one
    schema; the table is created on first use with that schema plus `scan_date`, and a later run
    may add nullable columns but not drop or change one. The commit adds the files in place
    (no copy) and removes every file the night held. Conflicts with concurrent commits are
    retried from the newest version, up to `max_attempts` attempts. The commit's info carries
    `metadata` (REQUIRED_METADATA at least) under "clipsam", with the kind, night, file and row
    counts and a token that makes an attempt whose outcome was unknown safe to retry.
    """
    _check_kind(kind)
    parse_scan_date(scan_date)
    metadata = _check_metadata(metadata)
    data_files, schema = _plan(table_url, kind, scan_date, files, storage_options)
    return _commit(table_url, kind, scan_date, data_files, schema, metadata, storage_options, max_attempts)


def files_by_kind(layout: RunLayout, urls: Iterable[str]) -> dict[str, list[str]]:
    """The URLs a run wrote (e.g. `.written-files.json`'s list) that belong to the table, by
    kind: those named with the layout's prefixes; any other URL is left out."""
    def local(url: str) -> str:
        return _local_path(url) if _is_local(url) else url

    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for url in urls:
        for kind in KINDS:
            prefix = local(layout.prefixes[kind])
            name = local(url)
            if name == f"{prefix}.parquet" or (name.startswith(f"{prefix}-") and name.endswith(".parquet")):
                found[kind].append(url)
    return {kind: sorted(found[kind]) for kind in KINDS}


def commit_run(table_url: str, scan_date: str, files: Mapping[str, Sequence[str]], metadata: Mapping[str, Any], *,
               storage_options: Mapping[str, str] | None = None,
               max_attempts: int = MAX_COMMIT_ATTEMPTS) -> dict[str, int | None]:
    """Commit one run's files as night `scan_date` of every table (as `commit_kind`, one commit
    per table), failures and metrics first and records last; returns kind → version (None:
    nothing to do). Every file and schema is checked before the first commit.

    A kind missing from `files` counts as an empty list: that night's earlier rows of that kind
    are removed. The three commits are not one transaction: a launcher that dies between them
    leaves some tables with the new night and others with the old one, each table consistent,
    until the night is rerun.
    """
    unknown = sorted(set(files) - set(KINDS))
    if unknown:
        raise TableError(f"unknown table kind(s) {', '.join(unknown)}; expected {', '.join(KINDS)}")
    metadata = _check_metadata(metadata)
    parse_scan_date(scan_date)
    plans = {kind: _plan(table_url, kind, scan_date, list(files.get(kind, ())), storage_options)
             for kind in COMMIT_ORDER}
    return {kind: _commit(table_url, kind, scan_date, *plans[kind], metadata, storage_options, max_attempts)
            for kind in COMMIT_ORDER}


# --- reading -------------------------------------------------------------------------------


def _digest_mask(column: pa.MapArray, digests: Mapping[str, str]) -> pa.Array:
    """True where the map `column` equals `digests` exactly (same roles, same values)."""
    offsets = column.offsets  # of this (possibly sliced) array: one more than its length
    lengths = pc.subtract(offsets.slice(1), offsets.slice(0, len(offsets) - 1))
    mask = pc.equal(lengths, len(digests))
    for role, digest in digests.items():
        mask = pc.and_(mask, pc.equal(pc.map_lookup(column, role, "first"), digest))
    return pc.fill_null(mask, False)


def iter_scored_keys(table_url: str, model_digests: Mapping[str, str], thresholds_digest: str | None, *,
                     excluding_scan_date: str | None = None, since: str | None = None,
                     storage_options: Mapping[str, str] | None = None) -> Iterator[pa.Array]:
    """The `content_sha256` values of the records scored with exactly `model_digests` and
    `thresholds_digest` (None: records made without a thresholds file), one string array per
    batch read: streamed, a value may repeat (an image scored on several nights).

    `excluding_scan_date`: leave that night out; a rerun of a night must pass its own date, or
    the rerun would skip the night's images and then replace the night without them. `since`
    (YYYY-MM-DD): only nights from that date on. Both prune partitions before any file is read;
    of the other files only three columns are read, and files whose statistics rule out
    `thresholds_digest` are skipped. No records table yet: nothing.
    """
    table = _open(delta_uri(table_url, "records"), storage_options)
    if table is None:
        return
    if SCORED_KEY not in pa.schema(table.schema().to_arrow()).names:
        raise TableError(f"the records table {delta_uri(table_url, 'records')} has no {SCORED_KEY} column")
    pruning = []  # tuple filters: delta-rs's SQL-string predicates can abort the process at exit
    if excluding_scan_date:
        pruning.append((PARTITION_COLUMN, "!=", parse_scan_date(excluding_scan_date)))
    if since:
        pruning.append((PARTITION_COLUMN, ">=", parse_scan_date(since)))
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=pruning or None)
    digest_field = pds.field("thresholds_digest")
    row_filter = digest_field.is_null() if thresholds_digest is None else digest_field == thresholds_digest
    for batch in dataset.to_batches(columns=[SCORED_KEY, "model_digests"], filter=row_filter):
        if batch.num_rows:
            keys = batch.column(SCORED_KEY).filter(_digest_mask(batch.column("model_digests"), model_digests))
            if len(keys):
                yield keys


def scored_keys(table_url: str, model_digests: Mapping[str, str], thresholds_digest: str | None, *,
                excluding_scan_date: str | None = None, since: str | None = None,
                storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """`iter_scored_keys` gathered: the distinct values, as a one-column table `content_sha256`
    (empty when there is no records table yet)."""
    keys = list(iter_scored_keys(table_url, model_digests, thresholds_digest, excluding_scan_date=excluding_scan_date,
                                 since=since, storage_options=storage_options))
    values = pc.unique(pa.chunked_array(keys, pa.string())) if keys else pa.array([], pa.string())
    return pa.table({SCORED_KEY: values})


def show(table_url: str, *, kind: str = "records", scan_date: str | None = None, image_id: str | None = None,
         columns: Sequence[str] | None = None, limit: int | None = None,
         storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """Rows of one kind, optionally of one night and/or one image, sorted by night and image;
    `columns` (default all) picks columns, `limit` keeps the first rows. The night prunes
    partitions; the image id is filtered row by row (and prunes files by their statistics)."""
    uri = delta_uri(table_url, kind)
    table = _open(uri, storage_options)
    if table is None:
        raise TableError(f"no Delta table at {uri}")
    dataset = table.to_pyarrow_dataset(
        file_pruning_predicate=[(PARTITION_COLUMN, "=", parse_scan_date(scan_date))] if scan_date else None)
    names = dataset.schema.names
    unknown = [c for c in columns or () if c not in names]
    if unknown:
        raise TableError(f"{kind} has no column(s) {', '.join(unknown)}")
    if image_id is not None and "image_id" not in names:
        raise TableError(f"{kind} has no image_id column")
    rows = dataset.to_table(columns=list(columns) if columns else None,
                            filter=(pds.field("image_id") == image_id) if image_id is not None else None)
    order = [(c, "ascending") for c in (PARTITION_COLUMN, "image_id", "category", "stage") if c in rows.column_names]
    rows = rows.sort_by(order) if order else rows
    return rows.slice(0, limit) if limit is not None else rows


def history(table_url: str, *, kind: str = "records", limit: int | None = None,
            storage_options: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The kind's commits, newest first: version, timestamp (ISO, UTC), operation, and for a
    run's commit the run metadata stored by `commit_kind`. Only commits still in the Delta log
    are listed (delta.logRetentionDuration, 30 days unless the table sets it)."""
    uri = delta_uri(table_url, kind)
    table = _open(uri, storage_options)
    if table is None:
        raise TableError(f"no Delta table at {uri}")
    commits = []
    for commit in table.history(limit=limit):
        stamp = commit.get("timestamp")
        entry = {"version": commit["version"],
                 "timestamp": dt.datetime.fromtimestamp(stamp / 1000, dt.timezone.utc).isoformat(
                     timespec="seconds") if stamp is not None else None,
                 "operation": commit.get("operation")}
        run = commit.get(METADATA_KEY)
        if run:
            entry.update({k: v for k, v in run.items() if k != "commit_token" and k not in entry})
        elif commit.get("operationParameters"):
            entry["parameters"] = commit["operationParameters"]
        commits.append(entry)
    return commits


# --- maintenance -------------------------------------------------------------------------


def _existing(table_url: str, kinds: Iterable[str], storage_options: Mapping[str, str] | None) -> dict:
    tables = {}
    for kind in kinds:
        table = _open(delta_uri(table_url, _check_kind(kind)), storage_options)
        if table is not None:
            tables[kind] = table
    if not tables:
        raise TableError(f"no Delta table under {table_url} (expected {', '.join(f'{k}/' for k in KINDS)})")
    return tables


def vacuum(table_url: str, *, retention_hours: int | None = None, dry_run: bool = False,
           enforce_retention: bool = True, kinds: Sequence[str] = KINDS,
           storage_options: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Delete, in each existing table, every file no version of the retained history needs and
    older than `retention_hours` (default: the table's delta.deletedFileRetentionDuration, one
    week unless set): files of replaced nights and files of runs that never committed. Returns
    kind → the files deleted (listed only, with `dry_run`).

    The retention is what keeps a run's files safe between their writing and its commit: it
    must exceed the longest run. A shorter one than the table's setting is refused unless
    `enforce_retention` is False.
    """
    deleted = {}
    for kind, table in _existing(table_url, kinds, storage_options).items():
        try:
            deleted[kind] = sorted(table.vacuum(retention_hours=retention_hours, dry_run=dry_run, full=True,
                                                enforce_retention_duration=enforce_retention))
        except Exception as exc:  # delta-rs reports a too-short retention and storage errors alike
            raise TableError(f"{kind}: vacuum failed: {_flat(exc)}") from None
    return deleted


def compact(table_url: str, *, kinds: Sequence[str] = KINDS, scan_date: str | None = None,
            target_size: int | None = None, storage_options: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Delta optimize (compaction) of each existing table, or of one night: the small files of a
    partition are rewritten into files of about `target_size` bytes (default: the table's
    delta.targetFileSize or 100 MB) in one commit; the replaced files stay until `vacuum`.
    Returns kind → delta-rs's optimize metrics."""
    from deltalake import CommitProperties

    filters = [(PARTITION_COLUMN, "=", parse_scan_date(scan_date))] if scan_date else None
    results = {}
    for kind, table in _existing(table_url, kinds, storage_options).items():
        try:
            results[kind] = table.optimize.compact(
                partition_filters=filters, target_size=target_size,
                commit_properties=CommitProperties(custom_metadata={METADATA_KEY: {"command": "compact"}}))
        except Exception as exc:
            raise TableError(f"{kind}: compaction failed: {_flat(exc)}") from None
    return results


# --- command line ------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _rows_as_json(rows: pa.Table) -> Iterable[str]:
    maps = [f.name for f in rows.schema if pa.types.is_map(f.type)]
    for row in rows.to_pylist():
        for name in maps:
            if row[name] is not None:
                row[name] = dict(row[name])
        yield json.dumps(row, default=_json_value, sort_keys=False)


def _history_line(entry: Mapping[str, Any]) -> str:
    head = f"v{entry['version']}  {entry['timestamp']}  {entry['operation']}"
    if "run_id" in entry:
        digests = ",".join(f"{k}:{str(v)[:12]}" for k, v in sorted((entry.get("model_digests") or {}).items()))
        thresholds = str(entry.get("thresholds_digest"))[:12] if entry.get("thresholds_digest") else "none"
        return (f"{head}  scan_date={entry.get('scan_date')} run={entry['run_id']} files={entry.get('files')} "
                f"rows={entry.get('rows')} profile={entry.get('model_profile')} models={digests} "
                f"thresholds={thresholds} version={entry.get('pipeline_version')}")
    # Other operations (CREATE TABLE, OPTIMIZE, VACUUM ...): their parameters, each cut short
    # (a creation's carries the whole schema; `--json` prints everything).
    extra = {k: v for k, v in entry.items() if k not in ("version", "timestamp", "operation")}
    shown = json.dumps(extra, default=str)
    return f"{head}  {shown[:200]}{' ...' if len(shown) > 200 else ''}" if extra else head


def _storage_options(pairs: Sequence[str] | None) -> dict[str, str] | None:
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TableError(f"--storage_option must be KEY=VALUE, got {pair!r}")
        options[key] = value
    return options or None


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--table", required=True, help="the table URL given to `run --table`")
    common.add_argument("--storage_option", action="append", metavar="KEY=VALUE",
                        help="a delta-rs storage option (repeatable), e.g. google_service_account_path=/key.json")
    parser = argparse.ArgumentParser(prog="python -m pipeline.table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("history", parents=[common], help="commits with their run metadata, newest first")
    cmd.add_argument("--kind", choices=KINDS, default="records")
    cmd.add_argument("--limit", type=int, default=None, help="newest N commits (default all)")
    cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    cmd = commands.add_parser("show", parents=[common], help="rows of a night and/or an image, as JSON lines")
    cmd.add_argument("--kind", choices=KINDS, default="records")
    cmd.add_argument("--scan_date", default=None, help="YYYY-MM-DD")
    cmd.add_argument("--image_id", default=None)
    cmd.add_argument("--columns", default=None, help="comma-separated (default: a summary of records, all otherwise)")
    cmd.add_argument("--limit", type=int, default=100, help="at most N rows (default 100; 0: all)")
    cmd = commands.add_parser("vacuum", parents=[common],
                              help="delete files of replaced nights and of runs that never committed")
    cmd.add_argument("--retention_hours", type=int, default=None,
                     help=f"only files older than this (default: the table's setting, {DEFAULT_RETENTION_HOURS} h)")
    cmd.add_argument("--dry_run", action="store_true", help="list the files, delete nothing")
    cmd.add_argument("--force", action="store_true",
                     help="accept a retention shorter than the table's (can delete a running run's files)")
    cmd = commands.add_parser("compact", parents=[common], help="Delta optimize: rewrite small files into large ones")
    cmd.add_argument("--kind", choices=KINDS, default=None, help="one table (default all three)")
    cmd.add_argument("--scan_date", default=None, help="one night (default every night)")
    cmd.add_argument("--target_size_mb", type=int, default=None, help="target file size (default the table's, 100 MB)")
    args = parser.parse_args(argv)
    try:
        options = _storage_options(args.storage_option)
        if args.command == "history":
            for entry in history(args.table, kind=args.kind, limit=args.limit, storage_options=options):
                print(json.dumps(entry, default=str) if args.json else _history_line(entry))
        elif args.command == "show":
            columns = [c for c in args.columns.split(",") if c] if args.columns else SHOW_COLUMNS[args.kind]
            rows = show(args.table, kind=args.kind, scan_date=args.scan_date, image_id=args.image_id,
                        columns=columns, limit=args.limit or None, storage_options=options)
            for line in _rows_as_json(rows):
                print(line)
        elif args.command == "vacuum":
            deleted = vacuum(args.table, retention_hours=args.retention_hours, dry_run=args.dry_run,
                             enforce_retention=not args.force, storage_options=options)
            verb = "would delete" if args.dry_run else "deleted"
            for kind, paths in deleted.items():
                print(f"{kind}: {verb} {len(paths)} files")
                for path in paths:
                    print(f"  {path}")
        else:
            kinds = [args.kind] if args.kind else list(KINDS)
            size = args.target_size_mb * (1 << 20) if args.target_size_mb else None
            for kind, result in compact(args.table, kinds=kinds, scan_date=args.scan_date, target_size=size,
                                        storage_options=options).items():
                print(f"{kind}: {result.get('numFilesRemoved', 0)} files rewritten into "
                      f"{result.get('numFilesAdded', 0)}")
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
