"""The whole job on FnApiRunner: mixed real/VisA/tar/broken input → Parquet records, failures, metrics."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.evaluate import evaluate_records
from pipeline.options import OptionError
from pipeline.run import run
from pipeline.stored_records import read_rows
from transforms.pictures import overlay_size
from transforms.presentation import overlay_path
from transforms.records import FAILURE_SCHEMA, RECORD_SCHEMA

from .conftest import REPO, tar_bytes

VARYING = {"processed_at", "stage1_ms", "stage2_ms"}


@pytest.fixture()
def mixed_input(tmp_path, real_data_dir, visa_sample_dir, broken_inputs) -> tuple[list[str], int]:
    """Comma-separated input URLs and the number of images (and unreadable shards) they hold."""
    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(3)
    members = []
    for i in range(3):
        buffer = __import__("io").BytesIO()
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(buffer, "PNG")
        members.append((f"sample{i}.png", buffer.getvalue()))
    (shards / "line-000.tar").write_bytes(tar_bytes(members))
    mvtec = real_data_dir / "mvtec_ad_256"
    expected = (
        sum(1 for _ in mvtec.glob("*/test/*/*.png"))
        + 4  # VisA sample test split
        + 3  # tar shard samples
        + sum(len(c.failures) + c.images for c in broken_inputs.cases)
    )
    return [str(mvtec), str(visa_sample_dir), str(shards), str(broken_inputs.root)], expected


def _run(inputs: list[str], store: str, out: Path, *extra: str, run_id: str = "t1", runner: str = "FnApiRunner"):
    return run(
        [
            "--input=" + ",".join(inputs),
            f"--output={out}",
            f"--model_store={store}",
            "--profile=tiny",
            f"--runner={runner}",
            f"--run_id={run_id}",
            "--batch_size=4",
            "--store_maps",
            *extra,
        ]
    )


def _check_outputs(run_dir: Path, expected_inputs: int, summary) -> list[dict]:
    records = read_rows(str(run_dir), "records")
    failures = read_rows(str(run_dir), "failures")
    assert len(records) + len(failures) == expected_inputs
    assert len({r["image_id"] for r in records} | {f["image_id"] for f in failures}) == expected_inputs
    for path in sorted(run_dir.glob("records-*.parquet")):
        assert pq.read_schema(path).remove_metadata().equals(RECORD_SCHEMA)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(run_dir / "failures-00000-of-00001.parquet").remove_metadata().equals(FAILURE_SCHEMA)
    for record in records:
        rle = {"size": record["mask_rle"]["size"], "counts": record["mask_rle"]["counts"].encode()}
        mask = coco_mask.decode(rle)
        assert mask.shape == (record["height"], record["width"])
        assert record["anomaly_area_fraction"] == pytest.approx(mask.mean())
        assert record["sam_used"] == (len(record["sam_prompt_boxes"]) > 0)
        assert len(record["sam_prompt_points"]) == len(record["sam_prompt_boxes"])
        png = Image.open(__import__("io").BytesIO(record["anomaly_map_png"]))
        assert max(png.size) <= 256 and png.mode.startswith("I")  # 16-bit grayscale
    by_type = sorted(f["error_type"] for f in failures)
    assert by_type == sorted(
        ["EmptyFile", "NotAnImage", "NotAnImage", "TruncatedImage", "TruncatedImage", "ImageTooSmall", "ImageTooLarge", "UnreadableShard"]
    )
    metrics = summary.metrics
    assert set(metrics["categories"]) == {"hazelnut", "transistor", "candle_synth"}
    assert (run_dir / "metrics.parquet").exists() and (run_dir / "report.html").exists()
    # The SAM image encoder ran exactly for the images that had prompts (counted in the workers).
    assert summary.counters["sam_encoder_images"] == sum(r["sam_used"] for r in records)
    assert summary.lost == 0
    listed = set(json.loads((run_dir / "_SUCCESS.json").read_text())["files"])
    for record in records:
        for defect in record["defects"]:  # every per-defect RLE is at the image's size, inside the mask
            rle = defect["segmentation"]
            part = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert part.shape == (record["height"], record["width"]) and int(part.sum()) == defect["area"]
        overlay = run_dir / overlay_path(record["category"], record["image_id"])
        assert overlay.exists() == (record["pred_label"] == "NG")  # --write_overlays defaults to ng
        if overlay.exists():
            assert str(overlay) in listed
            assert Image.open(overlay).size == overlay_size(record["width"], record["height"], 512)
    return records


def test_mixed_input_in_process(mixed_input, tiny_store, tmp_path):
    inputs, expected = mixed_input
    summary = _run(inputs, tiny_store, tmp_path / "out")
    records = _check_outputs(tmp_path / "out" / "t1", expected, summary)
    assert {r["category"] for r in records} >= {"hazelnut", "transistor", "candle_synth", "object"}
    converted = [r for r in records if r["decode_notes"]]
    assert len(converted) >= 6  # 16-bit, RGBA, CMYK, palette, grey, EXIF: converted, not failed

    # Metrics recomputed from the stored 16-bit maps, without the models, agree with the run's.
    again = evaluate_records(str(tmp_path / "out" / "t1"), ",".join(inputs[:2]))
    assert again.keys() == summary.metrics["categories"].keys()
    for category, values in again.items():
        original = summary.metrics["categories"][category]
        assert values["counts"] == original["counts"]
        for metric in ("pixel_auroc", "pixel_aupro", "image_auroc"):
            assert values[metric] == pytest.approx(original[metric], abs=0.02), (category, metric)

    # Same input, same run id: same files, same rows in the same order (timings aside).
    def stable_rows(run_dir: Path) -> dict[str, list[dict]]:
        tables = {p.name: pq.read_table(p) for p in run_dir.glob("*.parquet")}
        return {name: t.drop([c for c in t.column_names if c in VARYING]).to_pylist() for name, t in tables.items()}

    first = stable_rows(tmp_path / "out" / "t1")
    _run(inputs, tiny_store, tmp_path / "out")
    second = stable_rows(tmp_path / "out" / "t1")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_mixed_input_multi_processing(mixed_input, tiny_store, tmp_path, monkeypatch):
    inputs, expected = mixed_input
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # worker processes import the project
    summary = _run(inputs, tiny_store, tmp_path / "out", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    _check_outputs(tmp_path / "out" / "t1", expected, summary)


def test_one_shared_model_copy_across_worker_processes(visa_sample_dir, tiny_store, tmp_path, monkeypatch):
    """--model_copies=1: both SDK processes call one model copy through Beam's process proxy."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    summary = _run([str(visa_sample_dir)], tiny_store, tmp_path / "out", "--model_copies=1",
                   "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert summary.num_records == 4 and summary.num_failures == 0 and summary.lost == 0
    assert summary.counters["sam_encoder_images"] == summary.sam_used


def test_gcs_input_and_store_match_local(gcs_emulator, real_data_dir, tiny_store, tmp_path):
    local_input = real_data_dir / "mvtec_ad_256"
    gs_input = gcs_emulator.upload_tree(local_input, "inputs/mvtec_ad_256")
    gs_store = gcs_emulator.upload_tree(Path(tiny_store), "models")
    _run([gs_input], gs_store, tmp_path / "gs", run_id="gs")
    _run([str(local_input)], tiny_store, tmp_path / "local", run_id="local")

    def keyed(run_dir: Path, root: str) -> dict[str, dict]:
        rows = read_rows(str(run_dir), "records")
        return {r["source_uri"].split(root, 1)[1]: r for r in rows}

    gs_rows = keyed(tmp_path / "gs" / "gs", "inputs/mvtec_ad_256")
    local_rows = keyed(tmp_path / "local" / "local", "mvtec_ad_256")
    assert gs_rows.keys() == local_rows.keys() and len(gs_rows) == 20
    for key, row in gs_rows.items():
        other = local_rows[key]
        for column in ("category", "width", "height", "image_score", "mask_rle", "sam_prompt_boxes", "sam_used", "model_digests"):
            assert row[column] == other[column], (key, column)


def test_dask_runner_runs_every_sink_and_reports_lost_images(real_data_dir, tiny_store, tmp_path, monkeypatch):
    """Beam's DaskRunner on a 2-process dask.distributed cluster (README "Runners").

    Beam 2.77's DaskRunner drops what DoFns emit in finish_bundle, which BatchElements (so
    RunInference) relies on: some images never reach the sinks. The run must still write every
    output, and every image it lost must have a `Lost` failure row (in-pipeline accounting).
    """
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    mvtec = real_data_dir / "mvtec_ad_256"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = _run([str(mvtec)], tiny_store, tmp_path / "out", f"--dask_client_address={cluster.scheduler_address}",
                       runner="apache_beam.runners.dask.dask_runner.DaskRunner", run_id="dask")
    run_dir = tmp_path / "out" / "dask"
    for name in ("_SUCCESS.json", "records-00000-of-00001.parquet", "failures-00000-of-00001.parquet", "metrics.json"):
        assert (run_dir / name).exists(), name
    expected = {p.resolve().as_uri() for p in mvtec.glob("*/test/*/*.png")}
    records = {r["source_uri"] for r in read_rows(str(run_dir), "records")}
    lost = {f["source_uri"] for f in read_rows(str(run_dir), "failures") if f["error_type"] == "Lost"}
    assert records | lost == expected and not records & lost
    assert summary.lost == len(lost)  # counted in the pipeline
    # The failure samples come from a global Top combine, whose output this runner may drop too.
    assert set(summary.lost_examples) <= lost


def test_dataflow_graph_builds_offline(real_data_dir, tiny_store, tmp_path, capsys):
    # The gs:// input is not looked at: the graph holds input URLs, the pipeline lists them.
    result = run(
        [
            f"--input={real_data_dir / 'mvtec_ad_256'},gs://fake-bucket/line-scans/2026-12-06/",
            f"--output={tmp_path}",
            f"--model_store={tiny_store}",
            "--runner=DataflowRunner",
            "--project=fake-project",
            "--region=us-central1",
            "--temp_location=gs://fake-bucket/tmp",
            "--graph_only",
        ]
    )
    assert result is None
    printed = capsys.readouterr().out
    for step in ("ReadImages", "Stage1_CLIP_UMCI", "Stage2_SAM_MMR", "WriteRecords", "WriteFailures", "Evaluate"):
        assert step in printed
    assert '"inputs": 2' in printed
    assert not list(tmp_path.iterdir())  # nothing ran


def test_cli_shows_its_progress_lines_but_not_beams(real_data_dir, tiny_store, tmp_path):
    # A fresh interpreter, as a user runs it: importing Beam installs a bare root handler that
    # made logging.basicConfig a no-op, and the run's INFO lines never reached the console.
    command = [sys.executable, "-m", "pipeline.run", f"--input={real_data_dir / 'mvtec_ad_256'}",
               f"--output={tmp_path}", f"--model_store={tiny_store}", "--graph_only"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"\d{4}-\d\d-\d\d [\d:,]+ INFO clipsam.run: run \S+: \d+ inputs from ", done.stderr), done.stderr
    assert " INFO apache_beam" not in done.stderr


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--mask_threshold=1.5", "--mask_threshold must be in [0, 1]"),
        ("--batch_size=0", "--batch_size must be at least 1"),
        ("--run_id=a/b", "--run_id may only hold"),
        ("--tile=big", "--tile must be auto, off or a tile side in pixels"),
        ("--tile=8", "--tile must be auto, off or a tile side in pixels (at least 32)"),
        ("--tile_overlap=0.95", "--tile_overlap must be in [0, 0.9]"),
        ("--profile=nope", "--model_store/--profile: no manifest for profile 'nope'"),
    ],
)
def test_invalid_options_fail_before_any_work(flag, message, real_data_dir, tiny_store, tmp_path):
    with pytest.raises(OptionError, match=re.escape(message)):
        run([f"--input={real_data_dir / 'mvtec_ad_256'}", f"--output={tmp_path}", f"--model_store={tiny_store}", flag])
    assert not list(tmp_path.iterdir())


def test_input_that_matches_nothing(tiny_store, tmp_path):
    with pytest.raises(OptionError, match=f"--input: input '{tmp_path / 'nothing'}' matches no files"):
        run([f"--input={tmp_path / 'nothing'}", f"--output={tmp_path / 'o'}", f"--model_store={tiny_store}"])
