"""The inspector's view of a real run: overlays, curves, galleries and report.html as a browser shows it.

One small real run (tiny models, real MVTec AD images plus an odd-sized category) feeds every
test; the report is rendered by headless Chromium (Debian package `chromium`, installed by
`.ci/run`), which takes a screenshot and reports whether every gallery image decoded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.graph import build_graph
from pipeline.run import prepare, run, runner_name
from pipeline.run_folder import written_files
from pipeline.stored_records import read_rows
from pipeline.summary import summarize_run
from transforms.pictures import overlay_size
from transforms.presentation import overlay_path

ODD = (45, 71)  # width, height of the odd-sized category's images


def _odd_category(root: Path) -> None:
    """`oddsize`: two normal and one defective image of 45 × 71 pixels, with its mask."""
    rng = np.random.default_rng(5)
    width, height = ODD
    for folder, name in (("good", "000"), ("good", "001"), ("scratch", "000")):
        pixels = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
        if folder == "scratch":
            pixels[20:40, 10:14] = 250
            mask = np.zeros((height, width), np.uint8)
            mask[20:40, 10:14] = 255
            (root / "oddsize/ground_truth/scratch").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "oddsize/ground_truth/scratch/000_mask.png")
        (root / "oddsize/test" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "oddsize/test" / folder / f"{name}.png")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, real_data_dir, tiny_store):
    root = tmp_path_factory.mktemp("report-input")
    shutil.copytree(real_data_dir / "mvtec_ad_256" / "hazelnut", root / "hazelnut")
    _odd_category(root)
    out = tmp_path_factory.mktemp("report-out")
    argv = [f"--input={root}", f"--output={out}", f"--model_store={tiny_store}", "--run_id=r", "--runner=FnApiRunner",
            "--write_overlays=all", "--gallery_size=4"]
    summary = run(argv)
    return out / "r", summary, argv


def _chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CLIPSAM_CI"):
            pytest.fail("CI must have chromium (.ci/run installs it)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--allow-file-access-from-files", *args],
                          capture_output=True, text=True, timeout=180)


PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.querySelectorAll('.gallery img')];
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-decoded', images.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute('data-curves', [...document.querySelectorAll('svg.curve polyline')]
    .filter(p => p.points.numberOfItems > 1).length);
});
</script>"""


def test_report_renders_in_headless_chromium(report_run, tmp_path):
    run_dir, summary, _ = report_run
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert str(run_dir / "report.html") in json.loads((run_dir / "_SUCCESS.json").read_text())["files"]
    # Self-contained: nothing to fetch when viewed, no script of ours.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<script" not in page
    galleries = sum(len(items) for per_kind in summary.galleries.values() for items in per_kind.values())
    curves = sum(len(per_category) for per_category in summary.curves.values())
    assert galleries >= 8 and curves >= 8

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    found = dict(re.findall(r'data-(images|decoded|curves)="(\d+)"', body))
    assert int(found["images"]) == galleries and int(found["decoded"]) == galleries
    assert int(found["curves"]) == curves

    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", (run_dir / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1280) and pixels.std() > 20  # text, tables, pictures: not a blank page


def test_overlays_and_defect_masks_have_the_image_size(report_run):
    run_dir, _, _ = report_run
    records = read_rows(str(run_dir), "records")
    listed = set(json.loads((run_dir / "_SUCCESS.json").read_text())["files"])
    assert {(r["width"], r["height"]) for r in records if r["category"] == "oddsize"} == {ODD}
    for record in records:
        size = (record["height"], record["width"])
        for rle in [record["mask_rle"]] + [defect["segmentation"] for defect in record["defects"]]:
            assert coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).shape == size
        path = run_dir / overlay_path(record["category"], record["image_id"])
        assert str(path) in listed
        with Image.open(path) as overlay:
            assert overlay.format == "JPEG"
            assert overlay.size == overlay_size(record["width"], record["height"], 512)
    assert overlay_size(*ODD, 512) == (3 * ODD[0] + 8, ODD[1] + 18)  # odd sizes keep their own size per panel


def test_decisions_and_curves_come_from_the_pipeline(report_run):
    run_dir, summary, _ = report_run
    records = read_rows(str(run_dir), "records")
    for category, counts in summary.categories.items():
        mine = [r for r in records if r["category"] == category]
        assert counts["images"] == len(mine)
        assert counts["ng"] == sum(r["pred_label"] == "NG" for r in mine)
        assert counts["false_alarms"] == sum(r["pred_label"] == "NG" and r["gt_label"] == 0 for r in mine)
        top = sorted(mine, key=lambda r: (-r["image_score"], r["image_id"]))[:4]
        shown = summary.galleries[category]["most_anomalous"]
        assert [item["image_id"] for item in shown] == [r["image_id"] for r in top]
    metrics = summary.metrics["categories"]
    for category, curves in summary.curves.items():
        roc = curves["pixel_roc"]
        assert (roc["x"][0], roc["y"][0], roc["x"][-1], roc["y"][-1]) == (0.0, 0.0, 1.0, 1.0)
        assert roc["area"] == metrics[category]["pixel_auroc"]
        assert np.trapezoid(roc["y"], roc["x"]) == pytest.approx(roc["area"], abs=0.02)  # thinned, same curve
        assert curves["pixel_pro"]["x"][-1] == pytest.approx(0.3)
        assert len(roc["x"]) <= 200


def test_rerun_without_overlays_removes_the_old_ones(report_run):
    run_dir, _, argv = report_run
    run([a for a in argv if not a.startswith("--write_overlays")] + ["--write_overlays=none", "--report=off"])
    assert not list((run_dir / "overlays").rglob("*.jpg"))
    assert not any("/overlays/" in f for f in json.loads((run_dir / "_SUCCESS.json").read_text())["files"])


class _DropOne(beam.PTransform):
    """Test-only: swallows the scored image whose id is `image_id`, as a faulty runner might."""

    def __init__(self, image_id: str) -> None:
        super().__init__()
        self.image_id = image_id

    def expand(self, scored):
        return scored | beam.Filter(lambda pair, dropped: pair[0].image_id != dropped, self.image_id)


def test_an_image_dropped_inside_the_pipeline_becomes_a_lost_row(real_data_dir, untrained_store, tmp_path):
    from inputs.elements import make_image_id

    source = real_data_dir / "mvtec_ad_256" / "transistor"
    victim = sorted(source.glob("test/*/*.png"))[0].resolve().as_uri()
    prepared = prepare([f"--input={source}", f"--output={tmp_path}", f"--model_store={untrained_store}",
                        "--run_id=lost", "--runner=FnApiRunner", "--write_overlays=none", "--eval=off"])
    pipeline = beam.Pipeline(runner=runner_name(prepared.beam_options), options=prepared.beam_options)
    build_graph(pipeline, prepared.inputs, prepared.settings, tap=_DropOne(make_image_id(victim)))
    pipeline.run().wait_until_finish()
    run_dir = prepared.settings.run_dir
    failures = read_rows(run_dir, "failures")
    assert [(f["source_uri"], f["error_type"], f["stage"]) for f in failures] == [(victim, "Lost", "account")]
    assert victim not in {r["source_uri"] for r in read_rows(run_dir, "records")}
    summary = summarize_run(run_dir, files=written_files(run_dir), counters={}, elapsed_s=0.0)
    assert summary.lost == 1 and summary.lost_examples == [victim]
    assert summary.num_records == summary.listed_units - 1
