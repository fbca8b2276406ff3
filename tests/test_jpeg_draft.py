"""JPEG draft decoding (--jpeg_draft): a JPEG larger than the models need is decoded at reduced
scale, and everything else stays in its full frame."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from inputs.decode import JpegDraft, decode_frame
from pipeline.run import run
from pipeline.stored_records import read_rows

TINY = JpegDraft(clip_side=256, sam_side=256, max_long_side=2048)  # what the tiny profile needs


def _encoded(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bottle(real_data_dir) -> tuple[Image.Image, Image.Image]:
    """A real MVTec-AD bottle and its defect mask, enlarged to 2048 × 1536."""
    root = real_data_dir / "mvtec_ad" / "bottle"
    image = Image.open(root / "test" / "broken_large" / "000.png").convert("RGB").resize((2048, 1536), Image.BICUBIC)
    mask = Image.open(root / "ground_truth" / "broken_large" / "000_mask.png").resize((2048, 1536), Image.NEAREST)
    return image, mask


def test_a_large_jpeg_is_decoded_at_the_scale_the_models_need(bottle):
    data = _encoded(bottle[0], quality=95)
    image, notes, frame = decode_frame(data, "bottle.jpg", draft=TINY)
    assert frame == (1536, 2048) and image.shape == (384, 512, 3)  # 1/4: 1/8 would leave 192 rows < 256
    assert notes == ["JPEG decoded at 1/4 scale (512 x 384 of 2048 x 1536): the models need no more; "
                     "maps and masks are in the full frame"]
    whole, whole_notes, whole_frame = decode_frame(data, "bottle.jpg")
    assert whole.shape == (1536, 2048, 3) and whole_frame == (1536, 2048) and whole_notes == []
    reference = np.asarray(Image.fromarray(whole).resize((512, 384), Image.BOX), np.float32)
    assert np.abs(image.astype(np.float32) - reference).mean() < 3.0


def test_what_is_not_reduced(bottle):
    image = bottle[0]
    for data, draft in [(_encoded(image, "PNG"), TINY),                                # not a JPEG
                        (_encoded(image.resize((400, 300))), TINY),                     # not twice what is needed
                        (_encoded(image.resize((4096, 3072))), TINY),                   # tiled: native pixels
                        (_encoded(image), None)]:                                       # --jpeg_draft=off
        decoded, notes, frame = decode_frame(data, "x", draft=draft)
        assert decoded.shape[:2] == frame and not any("JPEG decoded" in n for n in notes)


def test_exif_orientation_turns_the_frame_too(bottle):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image, notes, frame = decode_frame(_encoded(bottle[0], exif=exif), "turned.jpg", draft=TINY)
    assert frame == (2048, 1536) and image.shape == (512, 384, 3)
    assert any("JPEG decoded at 1/4" in note for note in notes)


def test_records_stay_in_the_full_frame(bottle, tiny_store, tmp_path):
    root = tmp_path / "data" / "bottle"
    (root / "test" / "broken_large").mkdir(parents=True)
    (root / "ground_truth" / "broken_large").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    bottle[0].save(root / "test" / "broken_large" / "000.jpg", quality=95)
    bottle[1].save(root / "ground_truth" / "broken_large" / "000_mask.png")
    bottle[0].transpose(Image.FLIP_LEFT_RIGHT).save(root / "test" / "good" / "000.jpg", quality=95)
    records = {}
    for mode in ("on", "off"):
        run([f"--input={tmp_path / 'data'}", f"--output={tmp_path / 'out'}", f"--model_store={tiny_store}",
             "--runner=FnApiRunner", f"--run_id={mode}", f"--jpeg_draft={mode}", "--report=off",
             "--write_overlays=all"])
        records[mode] = {r["gt_label"]: r for r in read_rows(str(tmp_path / "out" / mode), "records")}
        assert not read_rows(str(tmp_path / "out" / mode), "failures")
    for label in (0, 1):
        reduced, whole = records["on"][label], records["off"][label]
        assert (reduced["width"], reduced["height"]) == (whole["width"], whole["height"]) == (2048, 1536)
        assert reduced["mask_rle"]["size"] == [1536, 2048]
        assert coco_mask.decode({"size": [1536, 2048], "counts": reduced["mask_rle"]["counts"].encode()}).shape \
            == (1536, 2048)
        assert any("JPEG decoded at 1/4" in note for note in reduced["decode_notes"]) and not whole["decode_notes"]
        assert reduced["image_score"] == pytest.approx(whole["image_score"], abs=0.05)
        assert reduced["clip_image_score"] == pytest.approx(whole["clip_image_score"], abs=0.05)
        overlay = Image.open(tmp_path / "out" / "on" / "overlays" / "bottle" / f"{reduced['image_id']}.jpg")
        assert overlay.size == Image.open(tmp_path / "out" / "off" / "overlays" / "bottle"
                                          / f"{whole['image_id']}.jpg").size
