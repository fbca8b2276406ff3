"""Tiles and windows for large frames (DESIGN §13): the grid, seamless stitching, SAM's windows,
windowed fusion, and the real tiny models on tiled frames."""
from __future__ import annotations

import numpy as np
import pytest

from clipsam.config import MMRConfig, TileConfig
from clipsam.defects import defects_found
from clipsam.mmr import extract_prompts, fuse_in_windows, fuse_with_rough
from clipsam.tiling import TilePlan, axis_starts, plan_tiles, sam_windows, stitch

TINY = TileConfig(patch_pixels=16, auto_factor=8.0)  # the tiny profile's setting: 256-px tiles


def _plan(frame, side=256, overlap=0.25) -> TilePlan:
    plan = plan_tiles(frame, TileConfig(mode="on", side=side, overlap=overlap), 256, 16, 16)
    assert plan is not None
    return plan


@pytest.mark.parametrize("length,side,overlap", [(8192, 256, 0.25), (1000, 256, 0.5), (300, 256, 0.0),
                                                 (257, 256, 0.25), (100, 256, 0.25)])
def test_axis_starts_cover_the_axis_with_at_least_the_overlap(length, side, overlap):
    starts = axis_starts(length, side, overlap)
    assert starts[0] == 0
    if length <= side:
        assert starts == [0]
        return
    assert starts[-1] == length - side
    steps = np.diff(starts)
    assert steps.min() >= 1 and steps.max() <= side * (1 - overlap) + 1


def test_auto_tiles_only_frames_longer_than_the_profile_multiple():
    assert plan_tiles((1024, 1024), TINY, 256, 16, 16) is None  # MVTec-AD size: scored whole
    assert plan_tiles((2048, 1500), TINY, 256, 16, 16) is None  # exactly 8 × 256
    plan = plan_tiles((1024, 8192), TINY, 256, 16, 16)
    assert plan is not None and plan.size == (256, 256) and len(plan) == len(plan.tops) * len(plan.lefts)
    assert plan_tiles((1024, 8192), TileConfig(mode="off"), 256, 16, 16) is None
    assert plan_tiles((200, 250), TileConfig(mode="on", side=256), 256, 16, 16) is None  # fits one tile
    assert plan_tiles((1024, 8192), TileConfig(mode="on", patch_pixels=8), 256, 16, 16).size == (128, 128)


@pytest.mark.parametrize("frame,side,overlap", [((1024, 8192), 256, 0.25), ((600, 700), 256, 0.5),
                                                ((100, 2000), 256, 0.25), ((513, 1025), 256, 0.0)])
def test_constant_tiles_stitch_to_a_constant_map(frame, side, overlap):
    plan = _plan(frame, side, overlap)
    stitched = stitch(plan, (np.full((32, 32), 0.37, np.float32) for _ in range(len(plan))))
    assert stitched.shape == frame and stitched.dtype == np.float32
    assert np.abs(stitched - 0.37).max() < 1e-6


def test_tiles_cut_from_one_map_stitch_back_to_it():
    """Each tile map is the crop of one global map at its tile's position: wherever tiles overlap
    they agree, so the weighted average gives the global map back (positions and weights right)."""
    rows, cols = np.mgrid[0:700, 0:1900].astype(np.float32)
    truth = (0.5 + 0.4 * np.sin(rows / 37.0) * np.cos(cols / 53.0)).astype(np.float32)
    plan = _plan(truth.shape, 256, 0.3)
    stitched = stitch(plan, (truth[t:b, l:r] for t, l, b, r in plan.windows()))
    assert np.abs(stitched - truth).max() < 1e-5


def test_overlap_is_blended_smoothly_not_switched():
    """Two tiles that disagree by a constant meet in a smooth ramp: no step larger than the
    difference divided by the overlap band (a hard seam would jump by the whole difference)."""
    plan = _plan((256, 512), 256, 0.5)
    maps = [np.full((256, 256), 0.2 if left == 0 else 0.8, np.float32) for _, left, _, _ in plan.windows()]
    row = stitch(plan, iter(maps))[100]
    assert row[0] == pytest.approx(0.2) and row[-1] == pytest.approx(0.8)
    assert np.all(np.diff(row) >= -1e-6) and np.diff(row).max() < 0.6 / 20


def test_stitch_needs_one_map_per_tile():
    plan = _plan((256, 1024))
    with pytest.raises(ValueError, match="tile maps"):
        stitch(plan, [np.zeros((4, 4))] * (len(plan) - 1))


def test_sam_windows_are_native_disjoint_inside_the_frame_and_hold_their_boxes():
    frame = (1024, 8192)
    boxes = np.array([[100, 100, 120, 112],      # alone
                      [4000, 500, 4010, 530],    # these two are 150 px apart: windows overlap → merged
                      [4150, 520, 4170, 540],
                      [4400, 520, 4410, 540],    # overlaps their window, but merging would pass 2 × 256
                      [8180, 1000, 8192, 1024],  # at the corner: window moved inside the frame
                      [6000, 10, 6400, 60]], np.float32)  # wider than a window
    windows = sam_windows(boxes, frame, 256)
    members = sorted(m for _, group in windows for m in group)
    assert members == [0, 1, 2, 3, 4, 5]
    for (top, left, bottom, right), group in windows:
        assert 0 <= top < bottom <= frame[0] and 0 <= left < right <= frame[1]
        for m in group:
            x0, y0, x1, y1 = boxes[m]
            assert left <= x0 and x1 <= right and top <= y0 and y1 <= bottom
    sizes = {tuple(group): (b - t, r - l) for (t, l, b, r), group in windows}
    assert sizes[(0,)] == (256, 256) and sizes[(3,)] == (256, 256)
    assert (1, 2) in sizes and sizes[(1, 2)][1] > 256
    assert sizes[(5,)] == (256, 400) and (3,) in sizes
    assert max(r - l for (_, l, _, r), _ in windows) <= 512


def test_a_crowd_of_components_does_not_merge_into_one_frame_sized_window():
    boxes = np.array([[x, 100, x + 10, 110] for x in range(0, 8000, 100)], np.float32)
    windows = sam_windows(boxes, (1024, 8192), 256)
    assert len(windows) > 10 and all(r - l <= 512 and b - t <= 512 for (t, l, b, r), _ in windows)


def test_windows_of_many_scattered_components_match_merging_pair_by_pair():
    """The sweep merges exactly what repeated pairwise merging would leave unmergeable: no two
    resulting windows could still be merged, every component is in one window holding its box."""
    from clipsam.tiling import MERGE_LIMIT, _merged

    rng = np.random.default_rng(7)
    xy = rng.uniform(0, [16000, 2048], size=(3000, 2))
    ends = np.minimum(xy + rng.uniform(4, 40, size=(3000, 2)), [16000, 2048])  # boxes are clipped to the frame
    boxes = np.concatenate([xy, ends], axis=1).astype(np.float32)
    windows = sam_windows(boxes, (2048, 16000), 128)
    assert sorted(m for _, group in windows for m in group) == list(range(3000))
    for (t, l, b, r), group in windows:
        for m in group:
            assert l <= boxes[m, 0] and boxes[m, 2] <= r and t <= boxes[m, 1] and boxes[m, 3] <= b
    spans = [list(w) for w, _ in windows]
    assert not any(_merged(a, c, MERGE_LIMIT * 128) for i, a in enumerate(spans) for c in spans[i + 1:])


def test_windowed_fusion_equals_whole_frame_fusion_bit_for_bit():
    rng = np.random.default_rng(0)
    rough = rng.random((300, 900), dtype=np.float32)
    parts = [((10, 20, 110, 220), rng.random((100, 200), dtype=np.float32)),
             ((150, 500, 300, 900), rng.random((150, 400), dtype=np.float32))]
    whole = np.zeros_like(rough)
    for (t, l, b, r), values in parts:
        whole[t:b, l:r] = values
    assert np.array_equal(fuse_in_windows(rough, parts, 0.3), fuse_with_rough(rough, whole, 0.3))
    assert fuse_in_windows(rough, [], 0.3) is rough


def test_overlapping_windows_fuse_by_the_max_of_their_sam_maps():
    rng = np.random.default_rng(1)
    rough = rng.random((200, 400), dtype=np.float32)
    a, b = rng.random((150, 250), dtype=np.float32), rng.random((120, 200), dtype=np.float32)
    parts = [((0, 0, 150, 250), a), ((80, 150, 200, 350), b)]
    whole = np.zeros_like(rough)
    whole[0:150, 0:250] = a
    np.maximum(whole[80:200, 150:350], b, out=whole[80:200, 150:350])
    assert np.array_equal(fuse_in_windows(rough, parts, 0.4), fuse_with_rough(rough, whole, 0.4))


def test_components_are_judged_against_the_area_clip_saw():
    """A 12 × 12 spot is 0.002 % of a 1024 × 8192 frame (dropped as noise when the whole frame is
    the reference) but 0.2 % of a 256-px tile (kept)."""
    rough = np.zeros((1024, 8192), np.float32)
    rough[500:512, 4000:4012] = 0.9
    config = MMRConfig(min_area_fraction=0.0005)
    assert extract_prompts(rough, config) == []
    assert len(extract_prompts(rough, config, seen=(256, 256))) == 1


def test_max_components_scale_with_the_tiles_area():
    rough = np.zeros((256, 2048), np.float32)
    for k in range(40):
        rough[100:104, 20 + 50 * k:24 + 50 * k] = 0.9
    config = MMRConfig(min_area_fraction=0.0, max_components=4)
    assert len(extract_prompts(rough, config)) == 4
    assert len(extract_prompts(rough, config, seen=(256, 256))) == 32


def test_defects_found_counts_each_ground_truth_component_once():
    gt = np.zeros((50, 50), bool)
    gt[5:10, 5:10] = True      # 25 px, 3 covered → found at 10 %
    gt[30:40, 30:40] = True    # 100 px, 5 covered → missed at 10 %
    mask = np.zeros_like(gt)
    mask[5:6, 5:8] = True
    mask[30, 30:35] = True
    assert defects_found(mask, gt) == (1, 2)
    assert defects_found(mask, gt, min_overlap=0.05) == (2, 2)
    assert defects_found(mask, np.zeros_like(gt)) == (0, 0)
