"""inputs.decode: every bad input gets its specific error_type, every unusual one its
documented conversion (DESIGN §8)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BrokenInputs, png_header_only
from inputs.decode import (
    DEFAULT_PIXEL_LIMIT,
    DecodeError,
    decode_image,
    decode_mask,
)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def rgb_noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def error_type_of(call, *args, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        call(*args, **kwargs)
    assert info.value.message and info.value.error_type in str(info.value)
    return info.value.error_type


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """48-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class TestDecodeImage:
    def test_rgb_png_round_trips_exactly(self):
        pixels = rgb_noise(37, 53)
        image, notes = decode_image(encode(Image.fromarray(pixels)), "mem.png")
        assert image.dtype == np.uint8 and image.shape == (37, 53, 3)
        assert image.flags["C_CONTIGUOUS"] and image.flags["WRITEABLE"]
        np.testing.assert_array_equal(image, pixels)
        assert notes == []

    def test_every_broken_input_fails_or_converts_as_described(self, broken_inputs: BrokenInputs):
        for case in broken_inputs.cases:
            if case.name.endswith(".tar"):
                continue  # shards are read by transforms.read, see test_read.py
            data = (broken_inputs.root / case.name).read_bytes()
            if case.failures:
                assert error_type_of(decode_image, data, case.name) == case.failures[0], case
            else:
                image, notes = decode_image(data, case.name)
                assert image.shape == case.shape and image.dtype == np.uint8, case
                assert any(case.note in n for n in notes), (case, notes)

    @pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
    @pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
    def test_truncated_files_fail_as_truncated(self, fmt: str, fraction: float):
        data = encode(Image.fromarray(rgb_noise(64, 64)), fmt)
        cut = data[: int(len(data) * fraction)]
        assert error_type_of(decode_image, cut, "cut") == "TruncatedImage"

    def test_corrupted_png_data_fails_as_corrupt(self):
        data = bytearray(encode(Image.fromarray(rgb_noise(64, 64))))
        data[500:520] = b"\xff" * 20  # inside the compressed pixel data
        assert error_type_of(decode_image, bytes(data), "bad.png") == "CorruptImage"

    def test_sixteen_bit_grey_is_scaled_linearly(self):
        values = np.array([[0, 257, 32768, 65535] * 8] * 32, dtype=np.uint16)
        image, notes = decode_image(encode(Image.fromarray(values)), "g16.png")
        np.testing.assert_array_equal(image[0, :4, 0], [0, 1, 128, 255])
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
        assert any("scaled to 8 bits" in n for n in notes)

    def test_sixteen_bit_rgb_png_keeps_high_byte_and_says_so(self):
        pixels = np.random.default_rng(1).integers(0, 65536, (33, 35, 3)).astype(np.uint16)
        image, notes = decode_image(png_16bit_rgb(pixels), "rgb16.png")
        np.testing.assert_array_equal(image, (pixels >> 8).astype(np.uint8))
        assert any("16-bit RGB PNG" in n for n in notes)

    def test_alpha_is_dropped_not_composited(self):
        rgba = np.concatenate([rgb_noise(40, 40), np.zeros((40, 40, 1), np.uint8)], axis=2)
        image, notes = decode_image(encode(Image.fromarray(rgba)), "a.png")
        np.testing.assert_array_equal(image, rgba[..., :3])
        assert notes == ["mode RGBA converted to RGB, alpha dropped"]

    def test_grey_and_palette_become_rgb(self):
        grey = rgb_noise(40, 40)[..., 0]
        image, _ = decode_image(encode(Image.fromarray(grey)), "l.png")
        np.testing.assert_array_equal(image, np.repeat(grey[..., None], 3, axis=2))
        palette_image = Image.fromarray(rgb_noise(40, 40)).quantize(8)
        image, notes = decode_image(encode(palette_image), "p.png")
        np.testing.assert_array_equal(image, np.asarray(palette_image.convert("RGB")))
        assert notes == ["mode P converted to RGB"]

    def test_cmyk_is_converted(self):
        cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))
        image, notes = decode_image(encode(cmyk, "TIFF"), "cmyk.tif")
        np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
        assert notes == ["mode CMYK converted to RGB"]

    def test_exif_orientation_is_applied(self, broken_inputs: BrokenInputs):
        data = (broken_inputs.root / "exif_rotated.jpg").read_bytes()
        image, notes = decode_image(data, "exif_rotated.jpg")
        assert image.shape == (64, 40, 3)  # stored 64 wide × 40 high, displayed rotated
        top, bottom = image[:28].mean(axis=(0, 1)), image[36:].mean(axis=(0, 1))
        assert top[0] > 200 and top[2] < 50, top  # red on top
        assert bottom[2] > 200 and bottom[0] < 50, bottom
        assert notes == ["EXIF orientation 6 applied"]

    def test_pixel_limit_is_configurable_and_checked_on_the_header(self):
        data = encode(Image.fromarray(rgb_noise(100, 100)))
        assert error_type_of(decode_image, data, "x", pixel_limit=9_999) == "ImageTooLarge"
        assert decode_image(data, "x", pixel_limit=10_000)[0].shape == (100, 100, 3)
        # 80 MP: over our 64 MP default, under Pillow's own bomb guard; never decoded.
        bomb = png_header_only(10_000, 8_000)
        assert 10_000 * 8_000 > DEFAULT_PIXEL_LIMIT
        assert error_type_of(decode_image, bomb, "bomb.png") == "ImageTooLarge"

    def test_min_side_is_configurable(self):
        data = encode(Image.fromarray(rgb_noise(20, 300)))
        assert error_type_of(decode_image, data, "strip.png") == "ImageTooSmall"
        assert decode_image(data, "strip.png", min_side=16)[0].shape == (20, 300, 3)

    def test_real_mvtec_image(self, real_data_dir: Path):
        path = real_data_dir / "mvtec_ad/bottle/test/good/000.png"
        image, notes = decode_image(path.read_bytes(), str(path))
        assert image.shape == (900, 900, 3) and notes == []
        np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


class TestDecodeMask:
    def test_real_mvtec_mask_is_binarised(self, real_data_dir: Path):
        path = real_data_dir / "mvtec_ad/bottle/ground_truth/broken_large/000_mask.png"
        raw = np.asarray(Image.open(path))
        mask = decode_mask(path.read_bytes(), str(path), (900, 900))
        assert mask.dtype == bool and mask.shape == (900, 900)
        assert set(np.unique(raw)) == {0, 255}
        np.testing.assert_array_equal(mask, raw > 0)

    def test_real_one_bit_mask(self, real_data_dir: Path):
        path = real_data_dir / "mvtec_ad_256/hazelnut/ground_truth/crack/000_mask.png"
        assert Image.open(path).mode == "1"
        mask = decode_mask(path.read_bytes(), str(path), (256, 256))
        assert 0 < mask.sum() < mask.size

    def test_visa_class_id_mask(self, visa_sample_dir: Path):
        path = visa_sample_dir / "candle_synth/Data/Masks/Anomaly/001.png"
        raw = np.asarray(Image.open(path))
        assert raw.max() == 2  # VisA masks hold class ids, not 255
        np.testing.assert_array_equal(decode_mask(path.read_bytes(), "m", raw.shape), raw > 0)

    @pytest.mark.parametrize("mode", ["1", "L", "P", "I;16", "RGB", "RGBA", "LA", "I"])
    def test_accepted_modes(self, mode: str):
        truth = np.zeros((40, 50), dtype=bool)
        truth[5:20, 10:30] = True
        if mode == "I;16":
            image = Image.fromarray(truth.astype(np.uint16) * 1000)
        elif mode == "P":
            image = Image.fromarray(truth.astype(np.uint8) * 3, "L").convert("P")
        else:
            image = Image.fromarray(truth.astype(np.uint8) * 255).convert(mode)
        mask = decode_mask(encode(image, "TIFF" if mode == "I" else "PNG"), "m", (40, 50))
        np.testing.assert_array_equal(mask, truth)

    def test_rgb_mask_counts_any_channel(self):
        pixels = np.zeros((40, 40, 3), np.uint8)
        pixels[0, 0] = (0, 0, 1)
        pixels[1, 1] = (9, 0, 0)
        mask = decode_mask(encode(Image.fromarray(pixels)), "m.png", (40, 40))
        assert mask.sum() == 2 and mask[0, 0] and mask[1, 1]

    @pytest.mark.parametrize("shape", [(40, 41), (41, 40), (20, 20), (80, 80)])
    def test_size_mismatch_is_reported_not_resized(self, shape):
        data = encode(Image.fromarray(np.zeros(shape, np.uint8)))
        assert error_type_of(decode_mask, data, "m.png", (40, 40)) == "MaskSizeMismatch"

    def test_unreadable_masks(self):
        good = encode(Image.fromarray(np.zeros((40, 40), np.uint8)))
        float_mask = encode(Image.fromarray(np.zeros((40, 40), np.float32)), "TIFF")
        for data in (b"", b"not a png", good[: len(good) // 2], float_mask):
            assert error_type_of(decode_mask, data, "m.png", (40, 40)) == "BadMask"
