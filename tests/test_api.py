"""The notebook API on a real MVTec image: load_clipsam(...) then model.predict(image, category)."""
import time

import numpy as np
import pytest
from PIL import Image

from model_store import load_clipsam
from clipsam.rle import decode_mask, encode_mask

REAL = "tests/data/real/mvtec_ad/bottle/test/broken_large/000.png"


def test_predict_on_a_real_image(tiny_store):
    image = np.asarray(Image.open(REAL).convert("RGB"))
    model, manifest = load_clipsam(tiny_store, "tiny", device="cpu")
    start = time.perf_counter()
    pred = model.predict(image, "bottle")
    elapsed = time.perf_counter() - start
    assert elapsed < 30  # generous bound for a loaded CI machine; the benchmark reports the real time
    h, w = image.shape[:2]
    assert pred.rough_map.shape == pred.final_map.shape == pred.mask.shape == (h, w)
    assert pred.rough_map.dtype == np.float32 and pred.mask.dtype == bool
    assert 0.0 <= pred.rough_map.min() <= pred.rough_map.max() <= 1.0
    assert 0.0 <= pred.final_map.min() <= pred.final_map.max() <= 1.0
    assert pred.image_score == pytest.approx(float(pred.final_map.max()))
    assert pred.max_pixel_score == pytest.approx(float(pred.rough_map.max()))
    assert 0.0 <= pred.clip_image_score <= 1.0
    assert np.array_equal(pred.mask, pred.final_map >= pred.mask_threshold)
    assert pred.boxes.shape == (len(pred.prompts), 4)
    assert pred.sam_used == bool(pred.prompts)
    if pred.prompts:
        assert (pred.boxes[:, 2] <= w).all() and (pred.boxes[:, 3] <= h).all()
    assert np.array_equal(decode_mask(encode_mask(pred.mask)), pred.mask)
    assert manifest.digests().keys() == {"clip", "sam", "umci"}


def test_predict_rejects_non_rgb(tiny_model):
    with pytest.raises(ValueError, match="RGB uint8"):
        tiny_model.predict(np.zeros((64, 64), np.uint8), "bottle")


def test_batch_equals_single(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(64, 96), (128, 128), (50, 200)]]
    batch = tiny_model.predict_batch(images, ["screw", "bottle", None])
    for image, category, expected in zip(images, ["screw", "bottle", None], batch):
        single = tiny_model.predict(image, category)
        assert np.allclose(single.rough_map, expected.rough_map, atol=2e-3)
