"""The notebook API on a real MVTec image: load_clipsam(...) then model.predict(image, category).

`predict` takes what the pipeline takes (a path or any fsspec URL, a PIL image, a numpy array in
any mode the pipeline decodes) and decodes it by the pipeline's rules (`clipsam.image_input`).
The tests of the input forms use the untrained store: the same pixels must give the same maps
whatever the weights say.
"""
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from clipsam import ClipSAM
from clipsam.rle import decode_mask, encode_mask
from inputs import list_inputs, read_unit
from inputs.decode import decode_image
from model_store import load_clipsam

REAL = "tests/data/real/mvtec_ad/bottle/test/broken_large/000.png"
REAL_256 = "tests/data/real/mvtec_ad_256/hazelnut/test/crack/000.png"


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


def test_batch_equals_single(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(64, 96), (128, 128), (50, 200)]]
    batch = tiny_model.predict_batch(images, ["screw", "bottle", None])
    for image, category, expected in zip(images, ["screw", "bottle", None], batch):
        single = tiny_model.predict(image, category)
        assert np.allclose(single.rough_map, expected.rough_map, atol=2e-3)


@pytest.fixture(scope="module")
def untrained_model(untrained_store):
    return load_clipsam(untrained_store, "tiny", device="cpu")[0]


@pytest.fixture(scope="module")
def grey_png(tmp_path_factory) -> Path:
    """A real MVTec AD image stored as 8-bit grey, as MVTec's grey categories (screw, grid,
    zipper) are: `np.asarray(Image.open(path))` is H×W uint8."""
    path = tmp_path_factory.mktemp("grey") / "crack 000.png"
    Image.open(REAL_256).convert("L").save(path)
    return path


def same_prediction(a, b) -> None:
    assert np.array_equal(a.rough_map, b.rough_map)
    assert np.array_equal(a.final_map, b.final_map)
    assert np.array_equal(a.mask, b.mask)
    assert a.image_score == b.image_score


def test_grey_image_as_array_path_url_and_pil_gives_the_same_prediction(untrained_model, grey_png):
    grey = np.asarray(Image.open(grey_png))
    assert grey.shape == (256, 256) and grey.dtype == np.uint8
    memory_url = "memory:///test_api/crack 000.png"
    fsspec.filesystem("memory").pipe_file("/test_api/crack 000.png", grey_png.read_bytes())
    forms = {"path str": str(grey_png), "pathlib.Path": grey_png, "file:// URL": f"file://{grey_png.resolve()}",
             "memory:// URL": memory_url, "PIL image": Image.open(grey_png), "H×W×1 array": grey[:, :, None]}
    expected_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb, notes = untrained_model.decode(grey)
    assert np.array_equal(rgb, expected_rgb) and notes == ["mode L converted to RGB"]
    for name, form in forms.items():
        form_rgb, form_notes = untrained_model.decode(form)
        assert np.array_equal(form_rgb, expected_rgb) and form_notes == notes, name
    reference = untrained_model.predict(grey, "hazelnut")
    assert reference.final_map.shape == reference.mask.shape == (256, 256)
    names = ["path str", "pathlib.Path", "file:// URL", "memory:// URL", "PIL image"]
    for pred in untrained_model.predict_batch([forms[n] for n in names], ["hazelnut"] * len(names)):
        same_prediction(pred, reference)


def exif_rotated_jpeg(folder: Path) -> tuple[Path, tuple[int, int], list[str]]:
    """A 200×120 crop of a real image saved as a JPEG whose EXIF orientation (6) says "rotate
    90°": decoded 120 wide, 200 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "000.jpg"
    Image.open(REAL_256).crop((0, 0, 200, 120)).save(path, "JPEG", exif=exif)
    return path, (200, 120), ["EXIF orientation 6 applied"]


def rgb_png(folder: Path) -> tuple[Path, tuple[int, int], list[str]]:
    path = folder / "000.png"
    path.write_bytes(Path(REAL_256).read_bytes())
    return path, (256, 256), []


@pytest.mark.parametrize("make_file", [rgb_png, exif_rotated_jpeg], ids=["rgb png", "exif jpeg"])
def test_rgb_file_is_decoded_as_the_pipeline_decodes_it(untrained_model, tmp_path, make_file):
    path, shape, expected_notes = make_file(tmp_path)
    (element,) = read_unit(list_inputs(str(tmp_path), layout="folder", category="hazelnut")[0])
    assert element.notes == expected_notes and element.image.shape == (*shape, 3)
    for form in (str(path), path, Image.open(path)):
        rgb, notes = untrained_model.decode(form)
        assert np.array_equal(rgb, element.image) and notes == element.notes
    assert np.array_equal(rgb, decode_image(path.read_bytes(), str(path))[0])
    pred = untrained_model.predict(path, "hazelnut")
    assert pred.final_map.shape == shape
    same_prediction(pred, untrained_model.predict(element.image, "hazelnut"))


def test_sixteen_bit_grey_file_and_array_agree_with_the_pipeline(untrained_model, tmp_path):
    values = np.random.default_rng(3).integers(0, 65536, (37, 53)).astype(np.uint16)  # odd sizes
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    (element,) = read_unit(list_inputs(str(tmp_path), layout="folder")[0])
    from_array, from_file = untrained_model.decode(values), untrained_model.decode(str(path))
    assert np.array_equal(from_array[0], element.image) and np.array_equal(from_file[0], element.image)
    note = "I;16 grey scaled to 8 bits (v/257) and replicated to RGB"
    assert from_array[1] == from_file[1] == element.notes == [note]
    pred = untrained_model.predict(values, "screw")
    assert pred.final_map.shape == pred.mask.shape == (37, 53)
    same_prediction(untrained_model.predict(path, "screw"), pred)


MODES = ["L", "I;16", "RGBA", "LA", "RGB;16", "float", "bool", "P", "CMYK"]


def image_in_mode(mode: str, rgb: np.ndarray):
    """`rgb` (uint8 H×W×3) as an array or PIL image of the given mode."""
    height, width = rgb.shape[:2]
    return {
        "L": lambda: rgb[:, :, 0],
        "I;16": lambda: rgb[:, :, 0].astype(np.uint16) * 257,
        "RGBA": lambda: np.concatenate([rgb, np.zeros((height, width, 1), np.uint8)], axis=2),
        "LA": lambda: np.stack([rgb[:, :, 0], rgb[:, :, 1]], axis=2),
        "RGB;16": lambda: rgb.astype(np.uint16) << 8 | 0xAB,
        "float": lambda: rgb / 255.0,
        "bool": lambda: rgb[:, :, 0] > 127,
        "P": lambda: Image.fromarray(rgb).quantize(8),
        "CMYK": lambda: Image.fromarray(rgb).convert("CMYK"),
    }[mode]()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_decodes_to_rgb_with_a_note(untrained_model, mode):
    rgb = np.random.default_rng(7).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    decoded, notes = untrained_model.decode(image_in_mode(mode, rgb))
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8 and decoded.flags["C_CONTIGUOUS"]
    assert notes, "every conversion is noted"
    if mode in ("RGBA", "RGB;16", "float"):
        assert np.array_equal(decoded, rgb)
    if mode in ("L", "I;16"):
        assert np.array_equal(decoded, np.repeat(rgb[:, :, :1], 3, axis=2))


def test_every_mode_gives_a_prediction_in_the_image_frame(untrained_model):
    rgb = np.random.default_rng(7).integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes
    preds = untrained_model.predict_batch([image_in_mode(mode, rgb) for mode in MODES], ["screw"] * len(MODES))
    for mode, pred in zip(MODES, preds):
        assert pred.final_map.shape == pred.rough_map.shape == pred.mask.shape == (37, 53), mode
        assert 0.0 <= pred.final_map.min() <= pred.final_map.max() <= 1.0, mode


def test_rgb_uint8_array_is_used_as_it_is(untrained_model):
    rgb = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    decoded, notes = untrained_model.decode(rgb)
    assert decoded is rgb and notes == []


def test_bad_inputs_raise_a_value_error_naming_the_problem(untrained_model, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"not an image")
    bad = {
        "complex128 array": np.zeros((64, 64), complex),
        r"uint8 array of shape \(2, 64, 64, 3\)": np.zeros((2, 64, 64, 3), np.uint8),
        "int64 array": np.zeros((64, 64), np.int64),
        "NotAnImage.*readable image file": str(not_an_image),
        "FileNotFound.*readable image file": str(tmp_path / "missing.png"),
        "ImageTooSmall.*>= 32": np.zeros((20, 300), np.uint8),
        "UnsupportedPixelRange": np.full((64, 64), 2.0),
        "cannot use a list": [[0, 1], [2, 3]],
    }
    for pattern, image in bad.items():
        with pytest.raises(ValueError, match=pattern) as info:
            untrained_model.predict(image, "screw")
        if "array" in pattern or "list" in pattern:
            assert "accepted: a path or URL" in str(info.value) or "accepted: a numpy array" in str(info.value)
    without_reader = ClipSAM(untrained_model.stage1, untrained_model.stage2)
    with pytest.raises(ValueError, match="no image_reader"):
        without_reader.predict(REAL_256, "hazelnut")
    with pytest.raises(ValueError, match="2 images and 1 categories"):
        untrained_model.predict_batch([REAL_256, REAL_256], ["hazelnut"])
