"""Tiled scoring with the real tiny models (DESIGN §13): what tiling changes on line-scan frames,
and that it changes nothing on images of MVTec-AD size."""
from __future__ import annotations

import numpy as np
import pytest

from clipsam.defects import defects_found
from clipsam.metrics import CategoryMetricsAccumulator
from clipsam.stage1 import upsample_map
from clipsam.thresholds import NormalScoreQuantile
from tiny.line_scan import line_scan_frame

WIDTH, HEIGHT = 3072, 384  # longer than 8 × 256 px: the tiny profile's `auto` tiles it


@pytest.fixture(scope="module")
def models(tiny_store):
    from model_store import load_clipsam

    return {mode: load_clipsam(tiny_store, "tiny", device="cpu", overrides={"tile": {"mode": mode}})[0]
            for mode in ("off", "auto")}


def test_a_tiled_frame_is_stitched_from_its_tiles(models):
    model = models["auto"]
    frame = line_scan_frame("anodized_panel", seed=3, index=0, width=WIDTH, height=HEIGHT, anomalous=True)
    rough = model.stage1([frame.image], ["anodized_panel"])[0]
    plan = rough.tile_plan
    assert plan is not None and plan.size == (128, 128) and len(plan) > 50
    assert rough.rough_map.shape == (HEIGHT, WIDTH) and rough.rough_map.dtype == np.float32
    # The top-left corner is seen by the first tile only: there the stitched map is that tile's
    # map, resized from 256 px to the tile's 128 source pixels.
    top, left, bottom, right = next(plan.windows())
    off = models["off"].stage1([frame.image[top:bottom, left:right]], ["anodized_panel"])[0]
    expected = upsample_map(off.rough_map, (bottom - top, right - left))
    assert np.allclose(rough.rough_map[:40, :40], expected[:40, :40], atol=1e-5)
    tile_scores = [models["off"].stage1([frame.image[t:b, l:r]], ["anodized_panel"])[0].clip_image_score
                   for t, l, b, r in plan.windows()]
    assert rough.clip_image_score == pytest.approx(max(tile_scores), abs=1e-5)


def test_prompts_windows_and_masks_are_in_the_frame(models):
    model = models["auto"]
    frame = line_scan_frame("anodized_panel", seed=3, index=1, width=WIDTH, height=HEIGHT, anomalous=True)
    before = model.stage2.sam.encoder_images
    prediction = model.predict(frame.image, "anodized_panel")
    assert prediction.final_map.shape == prediction.mask.shape == (HEIGHT, WIDTH)
    assert prediction.prompts, "the tiny model finds nothing on this seeded frame"
    windows = model.stage2.windows((HEIGHT, WIDTH), prediction.prompts, model.stage1([frame.image], ["x"])[0])
    assert model.stage2.sam.encoder_images - before == len(windows) < len(prediction.prompts) + 1
    for box in prediction.boxes:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
    for (top, left, bottom, right), _ in windows:
        assert (bottom - top, right - left) <= (HEIGHT, 512)
    # Outside SAM's windows the final map is (1 − α)·M_clip, as everywhere SAM found nothing.
    outside = np.ones((HEIGHT, WIDTH), bool)
    for (top, left, bottom, right), _ in windows:
        outside[top:bottom, left:right] = False
    alpha = model.stage2.config.alpha
    assert np.array_equal(prediction.final_map[outside],
                          ((1 - alpha) * prediction.rough_map).astype(np.float32)[outside])


def _evaluate(model, category: str, good, bad) -> dict[str, float]:
    """AU-PRO of the rough and final maps, and per-defect recall of the final mask at the
    threshold calibrated on the good frames (q = 0.999, as `pipeline.threshold`)."""
    scored = [model.predict(sample.image, category) for sample in good + bad]
    quantile = NormalScoreQuantile()
    for prediction in scored[: len(good)]:
        quantile.add(prediction.final_map)
    threshold = quantile.threshold(0.999)
    out, found, total = {}, 0, 0
    for kind in ("rough_map", "final_map"):
        metrics = CategoryMetricsAccumulator()
        for sample, prediction in zip(good + bad, scored):
            metrics.add(getattr(prediction, kind), sample.mask, prediction.image_score, int(sample.mask.any()))
        out[kind] = metrics.result()["pixel_aupro"]
    for sample, prediction in zip(bad, scored[len(good):]):
        hits, count = defects_found(prediction.final_map >= threshold, sample.mask)
        found, total = found + hits, total + count
    out["recall"] = found / total
    return out


def test_tiling_finds_small_defects_that_whole_frame_scoring_misses(models):
    """The direction the benchmark measures (benchmarks/resolution.py), on a small seeded set:
    with tiling, per-defect recall and AU-PRO are clearly higher. SAM's windows are checked to
    cost at most a little AU-PRO here (a misplaced window or paste would cost much more); on the
    benchmark's 20 frames the final map's AU-PRO is above the rough map's."""
    category = "anodized_panel"
    good = [line_scan_frame(category, seed=0, index=i, width=WIDTH, height=HEIGHT, anomalous=False) for i in range(2)]
    bad = [line_scan_frame(category, seed=0, index=10 + i, width=WIDTH, height=HEIGHT, anomalous=True)
           for i in range(3)]
    whole, tiled = (_evaluate(models[mode], category, good, bad) for mode in ("off", "auto"))
    assert tiled["recall"] > whole["recall"] + 0.2, (whole, tiled)
    assert tiled["final_map"] > whole["final_map"] + 0.2, (whole, tiled)
    assert tiled["final_map"] >= tiled["rough_map"] - 0.02, tiled


def test_mvtec_sized_images_are_scored_exactly_as_untiled(models, real_data_dir):
    from PIL import Image

    paths = sorted((real_data_dir / "mvtec_ad" / "bottle" / "test").glob("*/*.png"))[:3]
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    auto, off = (models[mode].predict_batch(images, ["bottle"] * len(images)) for mode in ("auto", "off"))
    for a, b in zip(auto, off):
        assert np.array_equal(a.final_map, b.final_map) and np.array_equal(a.rough_map, b.rough_map)
        assert a.image_score == b.image_score and a.clip_image_score == b.clip_image_score
