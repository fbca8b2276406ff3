"""Tests for the synthetic line-scan frames (tiny.line_scan) and their MVTec-layout CLI."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from inputs.layouts import scan_inputs
from pipeline import make_synthetic
from tiny import line_scan as L
from tiny import synthetic as S

from .conftest import REPO

WIDTH, HEIGHT, BLOCK = 1024, 256, 128
SIDES = L.DEFAULT_DEFECT_SIDES


def _frame(category: str, **kw: object) -> L.LineScanSample:
    args: dict = {"seed": 0, "index": 0, "width": WIDTH, "height": HEIGHT, "anomalous": True, "block": BLOCK}
    args.update(kw)
    return L.line_scan_frame(category, **args)


@pytest.fixture(scope="module")
def frames() -> dict[str, tuple[L.LineScanSample, L.LineScanSample]]:
    """(anomalous, normal twin) of every default category, seed 3 index 1."""
    return {c: (_frame(c, seed=3, index=1), _frame(c, seed=3, index=1, anomalous=False))
            for c in L.LINE_SCAN_CATEGORIES}


def _in_boxes(shape: tuple[int, int], boxes: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    inside = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        inside[y0:y1, x0:x1] = True
    return inside


def _longest_side(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))


def test_default_categories_are_the_held_out_textures() -> None:
    assert L.LINE_SCAN_CATEGORIES == ("carbon_weave", "anodized_panel", "walnut_board", "terrazzo_tile")
    for name in L.LINE_SCAN_CATEGORIES:
        assert name in S.TEST_CATEGORIES and S.get_category(name).kind in S.TEXTURE_KINDS


def test_shapes_dtypes_and_types(frames: dict) -> None:
    for name, (anomalous, normal) in frames.items():
        for frame in (anomalous, normal):
            assert isinstance(frame, S.SyntheticSample) and frame.category == name
            assert frame.image.shape == (HEIGHT, WIDTH, 3) and frame.image.dtype == np.uint8
            assert frame.mask.shape == (HEIGHT, WIDTH) and frame.mask.dtype == np.bool_
        assert normal.defect_type == S.GOOD and not normal.mask.any() and normal.boxes == ()
        assert anomalous.defect_type in S.get_category(name).defect_types
        assert anomalous.defect_type != "missing_piece"


def test_same_arguments_give_identical_bytes() -> None:
    a, b = _frame("walnut_board", seed=5, index=2), _frame("walnut_board", seed=5, index=2)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.boxes == b.boxes and a.defect_type == b.defect_type
    ref = _frame("walnut_board", seed=5, index=2, anomalous=False).image
    for kw in ({"seed": 6}, {"index": 3}, {"split": "other"}):
        other = _frame("walnut_board", **{"seed": 5, "index": 2, "anomalous": False, **kw}).image
        assert not np.array_equal(ref, other), kw


def test_frames_do_not_depend_on_the_process_hash_seed() -> None:
    """Names are hashed with BLAKE2, not the salted hash(). The child processes load tiny.line_scan
    without running tiny/__init__ (which imports the model build, hence torch): fast, and it shows
    the generator itself needs neither torch nor fsspec."""
    code = ("import hashlib, sys, types; pkg = types.ModuleType('tiny'); pkg.__path__ = ['tiny']; "
            "sys.modules['tiny'] = pkg; from tiny.line_scan import line_scan_frame as f; "
            "s = f('my_part', seed=3, index=2, width=256, height=128, block=64, anomalous=True); "
            "assert 'torch' not in sys.modules and 'fsspec' not in sys.modules; "
            "print(hashlib.sha256(s.image.tobytes() + s.mask.tobytes()).hexdigest())")
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={"PYTHONHASHSEED": str(salt), "PATH": ""}) for salt in (1, 2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert len(set(outputs)) == 1 and len(outputs[0].strip()) == 64


def test_defects_have_the_requested_sizes_and_spacing(frames: dict) -> None:
    for name, (frame, _) in frames.items():
        assert frame.mask.any(), name
        low, high = L.DEFAULT_N_DEFECTS
        assert low <= len(frame.boxes) <= high, name
        inside = _in_boxes(frame.mask.shape, frame.boxes)
        assert not (frame.mask & ~inside).any(), "a mask pixel outside every defect box"
        for k, (y0, x0, y1, x1) in enumerate(frame.boxes):
            assert 0 <= y0 < y1 <= HEIGHT and 0 <= x0 < x1 <= WIDTH
            box_mask = frame.mask[y0:y1, x0:x1]
            assert box_mask.any() and SIDES[0] <= _longest_side(box_mask) <= SIDES[1], (name, k)
            for other in frame.boxes[k + 1:]:
                assert (y0 >= other[2] + L.DEFECT_GAP or other[0] >= y1 + L.DEFECT_GAP
                        or x0 >= other[3] + L.DEFECT_GAP or other[1] >= x1 + L.DEFECT_GAP)
        labels, _ = ndimage.label(frame.mask, structure=np.ones((3, 3), bool))
        for component in ndimage.find_objects(labels):
            assert max(component[0].stop - component[0].start, component[1].stop - component[1].start) <= SIDES[1]


def test_anomalous_equals_its_normal_twin_outside_the_defects(frames: dict) -> None:
    for name, (anomalous, normal) in frames.items():
        changed = (anomalous.image != normal.image).any(axis=2)
        inside = _in_boxes(changed.shape, anomalous.boxes)
        assert not (changed & ~inside).any(), name
        for y0, x0, y1, x1 in anomalous.boxes:
            assert changed[y0:y1, x0:x1].any()
        # The pasted defect differs visibly from the surface it replaced on (nearly) all mask pixels.
        assert changed[anomalous.mask].mean() > 0.9, name


def test_defect_sides_and_count_are_honoured() -> None:
    frame = _frame("terrazzo_tile", seed=1, n_defects=3, defect_sides=(14, 22), width=2048, height=512)
    assert len(frame.boxes) == 3
    for y0, x0, y1, x1 in frame.boxes:
        assert 14 <= _longest_side(frame.mask[y0:y1, x0:x1]) <= 22


def test_a_small_frame_gets_as_many_defects_as_fit() -> None:
    frame = _frame("carbon_weave", width=64, height=64, block=64, n_defects=5)
    assert 1 <= len(frame.boxes) < 5 and frame.mask.any()


@pytest.mark.parametrize("kw", [
    {"width": 63}, {"height": 10}, {"block": 16}, {"overlap": 65}, {"n_defects": 0}, {"n_defects": (3, 2)},
    {"defect_sides": (0, 10)}, {"defect_sides": (20, 10)}, {"defect_sides": (8, 300)}, {"seed": -1},
])
def test_invalid_arguments_are_rejected(kw: dict) -> None:
    with pytest.raises(ValueError):
        _frame("carbon_weave", **kw)


# --------------------------------------------------------------------------- seams


def _step_profile(image: np.ndarray) -> np.ndarray:
    """d[x]: mean absolute grey-level step between columns x and x + 1."""
    grey = image.astype(np.float32).mean(axis=2)
    return np.abs(np.diff(grey, axis=1)).mean(axis=0)


def _seam_ratio(image: np.ndarray, edges: list[int]) -> float:
    """Mean step across the given column edges over the mean step of their neighbours (x +- 1, 2).

    About 1 where the surface runs on smoothly; a hard seam between unrelated images is a step
    much larger than those within either image.
    """
    d = _step_profile(image)
    steps = [e - 1 for e in edges if 3 <= e <= d.size - 2]
    assert steps
    near = [(d[s - 2] + d[s - 1] + d[s + 1] + d[s + 2]) / 4 for s in steps]
    return float(np.mean(d[steps]) / np.mean(near))


SEAM_LIMIT = 1.25


@pytest.mark.parametrize("category", L.LINE_SCAN_CATEGORIES)
def test_blocks_blend_without_hard_seams(category: str) -> None:
    frame = _frame(category, seed=2, anomalous=False).image
    overlap = BLOCK // 4
    stride = BLOCK - overlap
    # Block k covers frame pixels [k * stride - overlap, k * stride - overlap + BLOCK).
    starts = [k * stride - overlap for k in range(WIDTH // stride + 2)]
    edges_x = sorted({e for s in starts for e in (s, s + BLOCK) if 0 < e < WIDTH})
    edges_y = sorted({e for s in starts for e in (s, s + BLOCK) if 0 < e < HEIGHT})
    assert _seam_ratio(frame, edges_x) < SEAM_LIMIT
    assert _seam_ratio(frame.transpose(1, 0, 2), edges_y) < SEAM_LIMIT

    # The same statistic catches a naive edge-to-edge mosaic, hand-made and with overlap=0.
    tiles = [[S.generate_image(category, seed=2, index=i * 16 + j, anomalous=False, size=BLOCK,
                               split="naive").image for j in range(WIDTH // BLOCK)] for i in range(HEIGHT // BLOCK)]
    naive = np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)
    hard = _frame(category, seed=2, anomalous=False, overlap=0).image
    for mosaic in (naive, hard):
        assert _seam_ratio(mosaic, list(range(BLOCK, WIDTH, BLOCK))) > SEAM_LIMIT
        assert _seam_ratio(mosaic.transpose(1, 0, 2), list(range(BLOCK, HEIGHT, BLOCK))) > SEAM_LIMIT


# --------------------------------------------------------------------------- layout and CLI


def _layout(**kw: object) -> dict[str, bytes]:
    args: dict = {"seed": 0, "n_train_good": 1, "n_test_good": 1, "n_test_defect": 3, "width": 256,
                  "height": 128, "block": 64}
    args.update(kw)
    return dict(L.line_scan_layout(["walnut_board"], **args))


def test_layout_files_by_drawn_type_and_keeps_streams_apart() -> None:
    files = _layout()
    defect_images = sorted(p for p in files if re.fullmatch(r"walnut_board/test/(?!good/)\w+/\d{3}\.png", p))
    assert len(defect_images) == 3
    for path in defect_images:
        _, _, defect_type, name = path.split("/")
        assert defect_type in S.get_category("walnut_board").defect_types
        mask = Image.open(io.BytesIO(files[f"walnut_board/ground_truth/{defect_type}/{name[:3]}_mask.png"]))
        assert mask.mode == "L" and mask.size == (256, 128) and np.asarray(mask).any()
    for folder in {p.rsplit("/", 1)[0] for p in defect_images}:  # numbered from 000 per type folder
        numbers = sorted(int(p[-7:-4]) for p in defect_images if p.startswith(folder + "/"))
        assert numbers == list(range(len(numbers)))
    assert {"walnut_board/train/good/000.png", "walnut_board/test/good/000.png"} <= set(files)
    assert len(files) == 2 + 2 * 3
    # More defective frames only append; the good folders never change.
    more = _layout(n_test_defect=4, n_train_good=2)
    assert all(more[p] == data for p, data in files.items())
    frame = L.line_scan_frame("walnut_board", seed=0, index=0, width=256, height=128, block=64,
                              anomalous=False, split="line_scan/train/good")
    assert files["walnut_board/train/good/000.png"] == S.encode_png(frame.image)


def test_cli_writes_an_mvtec_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "frames"
    assert make_synthetic.main(["--out", str(out), "--line_scan", "512x128", "--categories", "terrazzo_tile",
                                "--defect_sides", "10,24", "--n_train_good", "1", "--n_test_good", "1",
                                "--n_test_defect", "2", "--size", "64"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 4 images and 2 masks for 1 categories" in summary
    listing = scan_inputs(str(out))  # layout "auto" must detect MVTec-AD
    units = listing.units
    assert len(units) == 3 and {u.category for u in units} == {"terrazzo_tile"}
    assert sorted(u.label for u in units) == [0, 1, 1]
    for unit in units:
        image = Image.open(unit.uri.removeprefix("file://"))
        assert image.size == (512, 128) and image.mode == "RGB"
        if unit.label:
            mask = np.asarray(Image.open(unit.mask_uri.removeprefix("file://")))
            assert mask.shape == (128, 512) and set(np.unique(mask)) == {0, 255}
            ys, xs = np.nonzero(mask)
            assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 10
    assert scan_inputs(str(out), split="train").units[0].label == 0


def test_cli_line_scan_defaults_to_the_held_out_textures(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "frames"
    assert make_synthetic.main(["--out", str(out), "--line_scan", "64x64", "--n_train_good", "0",
                                "--n_test_good", "1", "--n_test_defect", "0"]) == 0
    assert f"({', '.join(L.LINE_SCAN_CATEGORIES)})" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(L.LINE_SCAN_CATEGORIES)


@pytest.mark.parametrize("argv", [
    ["--line_scan", "8192"], ["--line_scan", "8192x"], ["--line_scan", "x1024"], ["--line_scan", "63x1024"],
    ["--line_scan", "8192x63"], ["--line_scan", "8192X1024"], ["--line_scan", "-8192x1024"],
    ["--line_scan", "8192x1024x3"], ["--line_scan", " 8192x1024"], ["--line_scan", "8e3x1024"],
    ["--line_scan", "\uff18192x1024"], ["--line_scan", ""],
    ["--line_scan", "512x128", "--defect_sides", "30,8"], ["--line_scan", "512x128", "--defect_sides", "0,8"],
    ["--line_scan", "512x128", "--defect_sides", "8"], ["--line_scan", "512x128", "--defect_sides", "8,200"],
    ["--defect_sides", "8,30"],
])
def test_cli_rejects_bad_line_scan_options(tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic.main(["--out", str(out), *argv])
    assert exit_info.value.code == 2
    assert not out.exists()
