"""The life of `<output>/<run_id>/` on the launcher: probe, withdraw the old marker, finish.

`_SUCCESS.json` vouches for a folder: when it exists, it lists exactly the files of one run and
the folder holds no other output file. So a run (or a rerun with the same `--run_id`):
1. probes that `--output` is writable before any work (`probe_writable`);
2. deletes the previous `_SUCCESS.json` before the job writes anything (`withdraw_success`): a
   rerun killed halfway leaves no marker, never an old marker over a mix of old and new files;
3. after the job, reads the list of files this run wrote (`transforms.write.ListWrittenFiles`),
   the caller writes the report, then `finish` removes output files of earlier runs that this run
   did not rewrite (stale shards after a `--num_shards` change, `metrics.*` after `--eval=off`,
   overlays of images that are no longer NG) and writes `_SUCCESS.json` last.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import uuid

import fsspec

from model_store.store import join_url
from transforms.evaluate import CURVES_JSON, METRICS_JSON, METRICS_PARQUET
from transforms.presentation import OVERLAYS, REPORT_DATA
from transforms.write import WRITTEN_FILES

from .report import REPORT

LOG = logging.getLogger(__name__)
SUCCESS = "_SUCCESS.json"
# Names of the files a run writes into its folder; only these are ever removed as stale.
OUTPUT_PATTERNS = ("records-*.parquet", "failures-*.parquet", METRICS_JSON, METRICS_PARQUET, CURVES_JSON, REPORT,
                   REPORT_DATA, "*.inprogress", WRITTEN_FILES)
# Per-image files live below OVERLAYS/; any there that this run did not write are stale.


def probe_writable(run_dir: str) -> None:
    """Create and delete a small file in `run_dir`'s parent (the --output folder); raises OSError
    (or the file system's own error) when it cannot be written."""
    parent = run_dir.rstrip("/").rpartition("/")[0]
    fs, path = fsspec.core.url_to_fs(parent)
    fs.makedirs(path, exist_ok=True)
    probe = f"{path.rstrip('/')}/.clipsam-write-probe-{uuid.uuid4().hex}"
    with fs.open(probe, "wb") as handle:
        handle.write(b"probe")
    fs.rm(probe)


def withdraw_success(run_dir: str) -> None:
    """Delete `<run_dir>/_SUCCESS.json` if a previous run left one."""
    fs, path = fsspec.core.url_to_fs(join_url(run_dir, SUCCESS))
    if fs.exists(path):
        fs.rm(path)
        LOG.info("removed the previous run's %s before rewriting %s", SUCCESS, run_dir)


def written_files(run_dir: str) -> list[str]:
    """URLs of the files the job wrote, as the pipeline's last step listed them."""
    fs, path = fsspec.core.url_to_fs(join_url(run_dir, WRITTEN_FILES))
    return list(json.loads(fs.cat_file(path))["files"])


def finish(run_dir: str, run_id: str, files: list[str]) -> str:
    """Remove stale output files (matching OUTPUT_PATTERNS, not in `files`), then write
    `_SUCCESS.json` listing `files`; returns the marker's URL."""
    fs, path = fsspec.core.url_to_fs(run_dir)
    written = {fsspec.core.url_to_fs(url)[1] for url in files}
    keep = {name.rstrip("/").rpartition("/")[2] for name in written}
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rpartition("/")[2]
        if name not in keep and any(fnmatch.fnmatchcase(name, p) for p in OUTPUT_PATTERNS) and fs.isfile(entry):
            fs.rm(entry)
            LOG.info("removed %s (not written by run %s)", name, run_id)
    overlays = f"{path.rstrip('/')}/{OVERLAYS}"
    stale = [name for name in (fs.find(overlays) if fs.isdir(overlays) else []) if name not in written]
    for name in stale:
        fs.rm(name)
    if stale:
        LOG.info("removed %d overlay files not written by run %s", len(stale), run_id)
    marker = join_url(run_dir, SUCCESS)
    fs_marker, marker_path = fsspec.core.url_to_fs(marker)
    partial = f"{marker_path}.inprogress"
    with fs_marker.open(partial, "w", encoding="utf-8") as handle:
        json.dump({"run_id": run_id, "files": sorted(files)}, handle, indent=2)
    fs_marker.mv(partial, marker_path)
    LOG.info("run %s complete: %d files listed in %s", run_id, len(files), marker)
    return marker
