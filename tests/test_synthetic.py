"""Tests for the synthetic defect generator and its MVTec-layout writer."""
from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tiny import synthetic as S
from pipeline import make_synthetic

from .conftest import REPO


def _sample(category: str, **kw: object) -> S.SyntheticSample:
    args: dict = {"seed": 0, "index": 0, "size": 128, "anomalous": True}
    args.update(kw)
    return S.generate_image(category, **args)


def test_same_arguments_give_identical_bytes() -> None:
    a, b = _sample("washer", seed=7, index=3), _sample("washer", seed=7, index=3)
    assert S.encode_png(a.image) == S.encode_png(b.image)
    assert np.array_equal(a.mask, b.mask) and a.defect_type == b.defect_type


def test_seed_index_and_split_each_change_the_image() -> None:
    ref = _sample("oak_panel", seed=1, index=0, anomalous=False).image
    for kw in ({"seed": 2}, {"index": 1}, {"split": "train/good"}):
        other = _sample("oak_panel", **{"seed": 1, "index": 0, "anomalous": False, **kw}).image
        assert not np.array_equal(ref, other), kw


def test_images_do_not_depend_on_the_process_hash_seed() -> None:
    """Category and split names are hashed with BLAKE2, not Python's salted hash()."""
    code = ("import hashlib; from tiny.synthetic import generate_image as g; "
            "s = g('my_part', seed=3, index=2, size=64, anomalous=True); "
            "print(hashlib.sha256(s.image.tobytes() + s.mask.tobytes()).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(salt), "PATH": ""}).stdout
        for salt in (1, 2)
    }
    assert len(digests) == 1


@pytest.mark.parametrize("category", list(S.CATEGORIES))
def test_shapes_dtypes_and_masks(category: str) -> None:
    normal = _sample(category, anomalous=False)
    assert normal.image.shape == (128, 128, 3) and normal.image.dtype == np.uint8
    assert normal.mask.shape == (128, 128) and normal.mask.dtype == np.bool_
    assert not normal.mask.any() and normal.defect_type == "good" and normal.category == category
    for index in range(3):
        bad = _sample(category, index=index)
        assert bad.mask.shape == (128, 128) and bad.mask.dtype == np.bool_
        assert bad.defect_type in S.get_category(category).defect_types
        assert 0.0005 <= bad.mask.mean() <= 0.12, (bad.defect_type, bad.mask.mean())


@pytest.mark.parametrize("category",
                         ["woven_fabric", "leather_hide", "terrazzo_tile", "vial", "bolt", "capsule"])
def test_defects_are_drawn_on_the_normal_twin(category: str) -> None:
    """Same arguments, anomalous or not: same base; pixels change only in and next to the mask."""
    for index in range(4):
        normal = _sample(category, index=index, anomalous=False, size=256).image.astype(int)
        bad = _sample(category, index=index, size=256)
        diff = np.abs(bad.image.astype(int) - normal).max(axis=2)
        near = ndimage.binary_dilation(bad.mask, np.ones((3, 3), bool), iterations=6)
        # Only stray silhouette-edge pixels (partly object, so under half the defect) may
        # change far from the mask.
        assert (diff[~near] > 0).sum() <= 0.0005 * diff.size, "pixels far from the mask changed"
        assert (diff[~bad.mask] > 0).mean() < 0.05
        assert diff[bad.mask].mean() >= 8, (bad.defect_type, diff[bad.mask].mean())


def test_split_is_zero_shot() -> None:
    train, test = set(S.TRAIN_CATEGORIES), set(S.TEST_CATEGORIES)
    assert train and test and not train & test
    assert train | test == set(S.CATEGORIES)
    train_kinds = {S.CATEGORIES[n].kind for n in train}
    train_looks = {(S.CATEGORIES[n].primary, S.CATEGORIES[n].secondary) for n in train}
    for name in test:
        cat = S.CATEGORIES[name]
        assert cat.kind not in train_kinds or (cat.primary, cat.secondary) not in train_looks
    assert {S.CATEGORIES[n].kind for n in test} - train_kinds, "some kind should be test-only"
    assert S.categories_for_split("all") == S.TRAIN_CATEGORIES + S.TEST_CATEGORIES
    with pytest.raises(ValueError):
        S.categories_for_split("val")


def test_every_kind_and_defect_type_is_reachable() -> None:
    assert {c.kind for c in S.CATEGORIES.values()} == set(S.KINDS)
    seen = set()
    for name in S.CATEGORIES:
        for defect_type in S.get_category(name).defect_types:
            sample = _sample(name, size=96, defect_types=[defect_type])
            assert sample.defect_type == defect_type and sample.mask.any()
            seen.add(defect_type)
    assert seen == set(S.DEFECT_TYPES)


def test_missing_piece_needs_an_object() -> None:
    assert "missing_piece" not in S.get_category("oak_panel").defect_types
    with pytest.raises(ValueError, match="missing_piece"):
        _sample("oak_panel", defect_types=["missing_piece"])
    bad = _sample("washer", size=256, defect_types=["missing_piece"])
    normal = _sample("washer", size=256, anomalous=False)
    # The chunk shows the dark belt where bright metal was.
    assert bad.image[bad.mask].mean() < normal.image[bad.mask].mean() - 20


def test_unknown_categories_are_stable_and_varied() -> None:
    a, b = S.get_category("line7_panel"), S.get_category("line7_panel")
    assert a == b and a.name == "line7_panel" and a.kind in S.KINDS
    kinds = {S.get_category(f"part_{i}").kind for i in range(40)}
    assert len(kinds) >= 6
    sample = _sample("line7_panel")
    assert sample.category == "line7_panel" and sample.mask.any()
    for name in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            S.get_category(name)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        _sample("washer", seed=-1)
    with pytest.raises(ValueError):
        _sample("washer", size=16)
    with pytest.raises(ValueError):
        _sample("washer", defect_types=["dent"])


def _expected_paths(categories: list[str], n_train: int, n_good: int, n_defect: int) -> set[str]:
    paths = set()
    for name in categories:
        paths |= {f"{name}/train/good/{i:03d}.png" for i in range(n_train)}
        paths |= {f"{name}/test/good/{i:03d}.png" for i in range(n_good)}
        for t in S.get_category(name).defect_types:
            paths |= {f"{name}/test/{t}/{i:03d}.png" for i in range(n_defect)}
            paths |= {f"{name}/ground_truth/{t}/{i:03d}_mask.png" for i in range(n_defect)}
    return paths


def _check_tree(fs: fsspec.AbstractFileSystem, root: str, expected: set[str], size: int) -> None:
    found = {p[len(root) + 1:] for p in fs.find(root)}
    assert found == expected
    for rel in expected:
        image = Image.open(io.BytesIO(fs.cat_file(f"{root}/{rel}")))
        assert image.size == (size, size)
        if rel.endswith("_mask.png"):
            assert image.mode == "L"
            values = set(np.unique(np.asarray(image)).tolist())
            assert values == {0, 255}
        else:
            assert image.mode == "RGB"


def test_layout_on_memory_url() -> None:
    url = f"memory://synthetic-{uuid.uuid4().hex}"
    categories = ["washer", "my_part"]
    counts = make_synthetic.write_synthetic_dataset(url, categories, seed=0, size=64, n_train_good=2,
                                                    n_test_good=1, n_test_defect=2)
    expected = _expected_paths(categories, 2, 1, 2)
    assert counts == {"categories": 2, "images": sum(not p.endswith("_mask.png") for p in expected),
                      "masks": sum(p.endswith("_mask.png") for p in expected)}
    fs, root = fsspec.core.url_to_fs(url)
    try:
        _check_tree(fs, root.rstrip("/"), expected, 64)
    finally:
        fs.rm(root, recursive=True)


def test_layout_matches_generate_image() -> None:
    files = dict(S.mvtec_layout(["capsule"], seed=5, n_train_good=1, n_test_good=1,
                                n_test_defect=1, size=64))
    sample = S.generate_image("capsule", seed=5, index=0, size=64, anomalous=True,
                              defect_types=["hole"], split="test/hole")
    assert files["capsule/test/hole/000.png"] == S.encode_png(sample.image)
    assert files["capsule/ground_truth/hole/000_mask.png"] == S.encode_png(sample.mask)


def test_cli_writes_a_local_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    assert make_synthetic.main(["--out", str(out), "--categories", "bolt,oak_panel", "--size", "64",
                                "--n_train_good", "1", "--n_test_good", "2", "--n_test_defect", "1"]) == 0
    summary = capsys.readouterr().out
    assert summary.count("\n") == 1 and str(out) in summary and "masks" in summary
    fs = fsspec.filesystem("file")
    _check_tree(fs, str(out), _expected_paths(["bolt", "oak_panel"], 1, 2, 1), 64)


@pytest.mark.parametrize("argv", [
    ["--categories", "a/b"], ["--size", "8"], ["--seed", "-1"], ["--n_test_good", "-2"],
    ["--split", "val"], ["--split", "train", "--categories", "bolt"],
])
def test_cli_rejects_bad_options_before_writing(tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        make_synthetic.main(["--out", str(out), *argv])
    assert not out.exists()


def test_smallest_size_works_for_every_category() -> None:
    for name in [*S.CATEGORIES, "my_part"]:
        sample = _sample(name, size=32)
        assert sample.image.shape == (32, 32, 3) and sample.mask.any()
