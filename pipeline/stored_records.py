"""Reading a finished run's records back, for the CLIs that work from stored maps (`evaluate`,
`threshold`)."""
from __future__ import annotations

from typing import Iterator

import fsspec
import numpy as np
import pyarrow.parquet as pq

from transforms.records import read_map_png

from .options import OptionError


def stored_records(records_url: str, columns: list[str], batch_rows: int = 256) -> Iterator[dict]:
    """Stream `columns` of the rows of `<records_url>/records-*.parquet` (or of one Parquet file), a
    batch at a time; OptionError naming --records when there is none."""
    fs, path = fsspec.core.url_to_fs(records_url)
    files = [path] if path.endswith(".parquet") else sorted(fs.glob(f"{path.rstrip('/')}/records-*.parquet"))
    if not files:
        raise OptionError(f"--records: no records-*.parquet under {records_url}")
    for name in files:
        with fs.open(name, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
                yield from batch.to_pylist()


def read_rows(run_dir: str, kind: str, columns: list[str] | None = None) -> list[dict]:
    """All rows of `<run_dir>/<kind>-*.parquet` (kind: records | failures), in file order: for
    tests and small runs; the CLIs stream with `stored_records`."""
    fs, path = fsspec.core.url_to_fs(run_dir)
    rows: list[dict] = []
    for name in sorted(fs.glob(f"{path.rstrip('/')}/{kind}-*.parquet")):
        with fs.open(name, "rb") as handle:
            rows.extend(pq.read_table(handle, columns=columns).to_pylist())
    return rows


def score_map(record: dict) -> np.ndarray:
    """The record's stored final map (`--store_maps`), back at the image size: float32 [H, W] in [0, 1]."""
    return read_map_png(record["anomaly_map_png"], (record["width"], record["height"]))
