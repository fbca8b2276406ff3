import numpy as np
import pytest
import torch

from clipsam.backbones import build_sam
from clipsam.config import MMRConfig
from clipsam.mmr import (box_mask, extract_prompts, fuse_levels, fuse_with_rough, image_score, level_weights,
                         mask_prompt_logits, min_component_area)
from clipsam.sam_adapter import SamAdapter
from clipsam.stage1 import RoughResult
from clipsam.stage2 import MMRRefiner
from model_store.profiles import TINY_SAM_CONFIG

CFG = MMRConfig(prompt_threshold=0.5, min_area_fraction=0.0, box_padding=0)


def test_single_component_exact_box_and_points():
    m = np.zeros((20, 30), np.float32)
    m[5:9, 10:16] = 0.6  # rows 5..8, cols 10..15
    m[7, 12] = 0.9  # peak
    (p,) = extract_prompts(m, CFG)
    assert p.box.tolist() == [10, 5, 16, 9]
    # peak (x=12, y=7); centroid (x=12.5, y=6.5) rounds half up to (13, 7)
    assert p.points.tolist() == [[12, 7], [13, 7]]
    assert p.labels.tolist() == [1, 1]
    assert p.area == 24


def test_box_mask_covers_the_component_box_in_a_non_square_image():
    m = np.zeros((20, 30), np.float32)
    m[5:9, 10:16] = 0.6
    (p,) = extract_prompts(m, CFG)
    inside = box_mask(p.box, m.shape)
    assert inside.shape == (20, 30)
    assert np.array_equal(inside, m > 0)
    # fractional edges round to the nearest pixel edge
    assert np.argwhere(box_mask(np.array([1.4, 2.6, 4.5, 5.5]), (8, 8))).tolist() == [
        [r, c] for r in range(3, 6) for c in range(1, 4)]


def test_padding_is_clipped_to_the_image():
    m = np.zeros((10, 10), np.float32)
    m[0:2, 8:10] = 1.0
    (p,) = extract_prompts(m, MMRConfig(min_area_fraction=0.0, box_padding=3))
    assert p.box.tolist() == [5, 0, 10, 5]


def test_eight_connectivity_joins_diagonals_and_scan_order():
    m = np.zeros((12, 12), np.float32)
    m[1, 1] = m[2, 2] = m[3, 3] = 0.8  # one diagonal component
    m[8:10, 8:10] = 0.7  # a second one
    prompts = extract_prompts(m, CFG)
    assert [p.box.tolist() for p in prompts] == [[1, 1, 4, 4], [8, 8, 10, 10]]
    assert prompts[0].points.tolist() == [[1, 1], [2, 2]]  # argmax ties → first; centroid (2,2) inside
    assert [p.area for p in prompts] == [3, 4]


def test_centroid_outside_component_is_not_a_point():
    m = np.zeros((20, 20), np.float32)
    m[2:18, 2] = m[2:18, 17] = m[2, 2:18] = m[17, 2:18] = 0.9  # a ring: centroid in the hole
    (p,) = extract_prompts(m, CFG)
    assert len(p.points) == 1


def test_small_components_dropped_and_threshold_inclusive():
    m = np.zeros((100, 100), np.float32)
    m[10, 10] = 0.5  # exactly tau: kept by >=, but 1 px < min area
    m[50:60, 50:60] = 0.55
    cfg = MMRConfig(min_area_fraction=0.005, box_padding=0)  # 50 px
    assert min_component_area((100, 100), cfg) == 50
    prompts = extract_prompts(m, cfg)
    assert [p.area for p in prompts] == [100]


def test_no_component_means_no_prompt():
    assert extract_prompts(np.full((64, 64), 0.49, np.float32), CFG) == []


def test_max_components_keeps_largest():
    m = np.zeros((50, 50), np.float32)
    for i, size in enumerate([2, 5, 3, 4]):
        m[2 + 10 * i : 2 + 10 * i + size, 5 : 5 + size] = 0.9
    prompts = extract_prompts(m, MMRConfig(min_area_fraction=0.0, box_padding=0, max_components=2))
    assert [p.area for p in prompts] == [25, 16]


def test_level_weights_sum_to_one():
    scores = np.random.default_rng(0).normal(size=(7, 3)) * 5
    w = level_weights(scores)
    assert w.shape == (7, 3)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert (w > 0).all()
    assert np.argmax(w, axis=1).tolist() == np.argmax(scores, axis=1).tolist()


def test_fuse_levels_is_weighted_sum():
    probs = np.stack([np.full((1, 2, 2), v, np.float32) for v in (0.0, 0.5, 1.0)], axis=1)  # [1,3,2,2]
    scores = np.array([[0.0, 0.0, np.log(2.0)]])  # weights 1/4, 1/4, 1/2
    assert np.allclose(fuse_levels(probs, scores), 0.25 * 0.0 + 0.25 * 0.5 + 0.5 * 1.0)


def test_fuse_with_rough_and_scores():
    rough = np.array([[0.2, 0.8]], np.float32)
    assert fuse_with_rough(rough, None, 0.5) is rough or np.array_equal(fuse_with_rough(rough, None, 0.5), rough)
    assert np.allclose(fuse_with_rough(rough, np.array([[1.0, 0.0]], np.float32), 0.25), [[0.4, 0.6]])
    final = np.arange(100, dtype=np.float32).reshape(10, 10) / 100
    assert image_score(final, MMRConfig()) == pytest.approx(0.99)
    assert image_score(final, MMRConfig(image_score="topk", topk_fraction=0.05)) == pytest.approx(0.97)


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(1)
    return build_sam(TINY_SAM_CONFIG)


def _rough(map_):
    return RoughResult(rough_map=map_.astype(np.float32), clip_image_score=0.1, stage1_ms=0.0)


def test_sam_skipped_when_no_component(tiny_sam):
    refiner = MMRRefiner(tiny_sam, MMRConfig())
    images = [np.zeros((120, 90, 3), np.uint8) for _ in range(3)]
    preds = refiner(images, [_rough(np.full((32, 32), 0.3)) for _ in images])
    assert refiner.sam.encoder_images == 0 and refiner.sam.decoder_calls == 0
    for p in preds:
        assert not p.sam_used and p.prompts == []
        assert p.final_map.shape == (120, 90)
        assert np.allclose(p.final_map, 0.3, atol=1e-3)
        assert not p.mask.any()


def test_sam_runs_only_for_prompted_images_one_decoder_call_each(tiny_sam):
    refiner = MMRRefiner(tiny_sam, MMRConfig(min_area_fraction=0.0))
    spots = np.zeros((32, 32))
    spots[4:8, 4:8] = spots[20:26, 18:30] = 0.9  # two components in one image
    images = [np.full((64, 80, 3), 128, np.uint8) for _ in range(4)]
    maps = [np.zeros((32, 32)), spots, np.zeros((32, 32)), spots]
    preds = refiner(images, [_rough(m) for m in maps])
    assert refiner.sam.encoder_images == 2  # the two prompted images only
    assert refiner.sam.encoder_calls == 2  # on CPU one forward pass per image (clipsam.device)
    assert refiner.sam.decoder_calls == 2  # one decoder call per prompted image, both components in it
    assert [p.sam_used for p in preds] == [False, True, False, True]
    p = preds[1]
    assert len(p.prompts) == 2 and p.sam_scores.shape == (2, 3)
    assert p.final_map.shape == (64, 80) and p.mask.shape == (64, 80)
    assert 0.0 <= p.final_map.min() and p.final_map.max() <= 1.0
    assert p.image_score == pytest.approx(float(p.final_map.max()))


def test_decode_requires_prompts(tiny_sam):
    sam = SamAdapter(tiny_sam)
    (emb,) = sam.embed([np.zeros((40, 40, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one prompt"):
        sam.decode(emb, np.zeros((0, 4), np.float32), np.zeros((0, 1, 2), np.float32), np.zeros((0, 1), np.int64))


def test_mask_prompt_is_the_rough_map_inside_the_box(tiny_sam):
    """SAM's dense prompt per component: gain · (logit(M) − logit(τ)) inside the component's box,
    −clamp ("surely normal") elsewhere, in SamPredictor's frame (longest side resized, bottom padded)."""
    refiner = MMRRefiner(tiny_sam, MMRConfig(box_padding=0, prompt_threshold=0.5, mask_prompt=True,
                                             mask_prompt_gain=2.0, mask_prompt_clamp=10.0))
    rough = np.zeros((96, 192), np.float32)
    rough[24:60, 96:180] = 0.8
    rough[70:90, 10:40] = 0.9  # a second component: its values must not leak into the first's prompt
    prompts = extract_prompts(rough, refiner.config)
    (embedding,) = refiner.sam.embed([np.zeros((96, 192, 3), np.uint8)])
    logits = refiner.dense_prompts(embedding, rough, prompts)
    side = tiny_sam.prompt_encoder.mask_input_size[0]
    assert logits.shape == (2, side, side)
    scale = side / 192  # the image's long side spans the whole low-resolution frame
    first = [i for i, p in enumerate(prompts) if p.box[0] == 96][0]
    # Low-resolution cells whose centres lie in the box [96, 24, 180, 60]: rows 8..19, columns 32..59.
    in_box = np.zeros((side, side), bool)
    in_box[int(24 * scale) : int(60 * scale), int(96 * scale) : int(180 * scale)] = True
    assert in_box.sum() == 12 * 28
    np.testing.assert_array_equal(logits[first][~in_box], -10.0)
    interior = logits[first][9:19, 33:59]  # away from the resampled edge of the 0.8 plateau
    np.testing.assert_allclose(interior, 2.0 * np.log(0.8 / 0.2), atol=1e-5)  # logit(0.5) = 0
    # At the box edge the cells mix plateau and 0; 0 is clamped.
    assert np.all(logits[first][in_box] >= -10.0) and np.all(logits[first][in_box] <= 2.0 * np.log(4.0) + 1e-5)


def test_mask_prompt_keeps_small_rough_values_apart():
    """Rough-map values far below τ, which is where an unsure UMCI ranks defects above the
    surface, stay distinct in the prompt; values at τ give 0 and the clamp bounds the rest."""
    config = MMRConfig(prompt_threshold=0.1, mask_prompt_gain=1.0, mask_prompt_clamp=12.0)
    values = np.array([1e-9, 1e-5, 1e-3, 0.1, 0.999999], np.float32)
    got = mask_prompt_logits(values, np.ones(5, bool), config)
    assert got[0] == -12.0 and got[4] == 12.0 and abs(got[3]) < 1e-5
    assert got[0] < got[1] < got[2] < got[3]
    np.testing.assert_allclose(got[2], np.log(1e-3 / (1 - 1e-3)) - np.log(0.1 / 0.9), rtol=1e-5)
    assert np.all(mask_prompt_logits(values, np.zeros(5, bool), config) == -12.0)


def test_mask_prompt_reaches_the_decoder(tiny_sam):
    spots = np.zeros((32, 32))
    spots[8:20, 6:14] = 0.9
    images = [np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    plain = MMRRefiner(tiny_sam, MMRConfig(min_area_fraction=0.0))(images, [_rough(spots)])[0]
    dense = MMRRefiner(tiny_sam, MMRConfig(min_area_fraction=0.0, mask_prompt=True))(images, [_rough(spots)])[0]
    assert plain.prompts[0].box.tolist() == dense.prompts[0].box.tolist()
    assert not np.allclose(plain.final_map, dense.final_map)
