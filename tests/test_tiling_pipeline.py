"""--tile in the Beam pipeline (DESIGN §13): line-scan frames are tiled with every coordinate of the
records in the frame, and MVTec-AD-sized inputs give the same records with --tile=auto and off."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.make_synthetic import write_line_scan_dataset
from pipeline.run import run
from pipeline.stored_records import read_rows

VARYING = {"processed_at", "stage1_ms", "stage2_ms", "run_id"}


def _run(input_dir, store, out, run_id, *flags) -> None:
    run([f"--input={input_dir}", f"--output={out}", f"--model_store={store}", "--runner=FnApiRunner",
         f"--run_id={run_id}", "--report=off", *flags])


def test_mvtec_sized_records_are_identical_with_tile_auto_and_off(real_data_dir, tiny_store, tmp_path):
    for mode in ("auto", "off"):
        _run(real_data_dir / "mvtec_ad", tiny_store, tmp_path, mode, f"--tile={mode}", "--write_overlays=none")
    tables = {mode: pq.read_table(tmp_path / mode / "records-00000-of-00001.parquet") for mode in ("auto", "off")}
    rows = {mode: t.drop([c for c in t.column_names if c in VARYING]).to_pylist() for mode, t in tables.items()}
    assert len(rows["auto"]) == 8 and rows["auto"] == rows["off"]
    metrics = {mode: json.loads((tmp_path / mode / "metrics.json").read_text()) for mode in ("auto", "off")}
    assert metrics["auto"]["categories"] == metrics["off"]["categories"]


def test_a_line_scan_frame_is_tiled_and_recorded_in_its_own_frame(tiny_store, tmp_path):
    width, height = 3072, 384
    write_line_scan_dataset(str(tmp_path / "scan"), ["anodized_panel"], width=width, height=height,
                            n_train_good=0, n_test_good=1, n_test_defect=2)
    _run(tmp_path / "scan", tiny_store, tmp_path / "out", "r", "--write_overlays=all")
    run_dir = tmp_path / "out" / "r"
    records = read_rows(str(run_dir), "records")
    assert len(records) == 3 and not read_rows(str(run_dir), "failures")
    for record in records:
        assert (record["width"], record["height"]) == (width, height)
        assert record["mask_rle"]["size"] == [height, width]
        mask = coco_mask.decode({"size": record["mask_rle"]["size"], "counts": record["mask_rle"]["counts"].encode()})
        assert mask.shape == (height, width)
        for x0, y0, x1, y1 in record["sam_prompt_boxes"]:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        for defect in record["defects"]:
            x, y, w, h = defect["bbox"]
            assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        overlay = Image.open(run_dir / "overlays" / "anodized_panel" / f"{record['image_id']}.jpg")
        assert overlay.width <= 3 * 512 + 64 and overlay.height < 200  # three panels of at most 512 px
    defective = [r for r in records if r["gt_label"] == 1]
    assert len(defective) == 2 and any(r["sam_used"] for r in defective)
    metrics = json.loads((run_dir / "metrics.json").read_text())["categories"]["anodized_panel"]
    assert metrics["pixel_aupro"] is not None and metrics["pixel_aupro"] > 0.3
    assert np.isfinite(metrics["pixel_auroc"])


def test_large_frames_take_more_batch_slots():
    from clipsam.stage1 import RoughResult
    from inputs.elements import ImageElement
    from transforms.stages import Stage2Input, batch_slots

    def element(height, width):
        return ImageElement("id", "uri", "c", np.empty((height, width, 3), np.uint8))

    assert batch_slots(element(1024, 1024)) == batch_slots(element(2048, 2048)) == 1
    assert batch_slots(element(1024, 8192)) == 2
    assert batch_slots(element(2048, 16000)) == 8
    rough = RoughResult(np.zeros((4, 4), np.float32), 0.0, 0.0)
    assert batch_slots(Stage2Input(element(2048, 16000), rough)) == 8
