"""Records: per-defect COCO RLEs, OK/NG decisions from the thresholds in force."""
import numpy as np
import pyarrow as pa
import pytest
from pycocotools import mask as coco_mask

from clipsam.defects import defect_instances
from clipsam.stage2 import Prediction
from inputs.elements import ImageElement, make_image_id
from transforms.records import RECORD_SCHEMA, to_record


def _decode(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _pair(final_map: np.ndarray, threshold: float = 0.5, category: str = "washer", image_score: float | None = None):
    h, w = final_map.shape
    uri = f"file:///line/{category}/{h}x{w}.png"
    element = ImageElement(make_image_id(uri), uri, category, np.zeros((h, w, 3), np.uint8))
    prediction = Prediction(
        rough_map=final_map, final_map=final_map, mask=final_map >= threshold, prompts=[], sam_scores=np.zeros((0, 3)),
        image_score=float(final_map.max()) if image_score is None else image_score, clip_image_score=0.1,
        max_pixel_score=float(final_map.max()), mask_threshold=threshold, sam_used=False,
    )
    return element, prediction


@pytest.mark.parametrize("shape", [(37, 53), (101, 64), (1, 1), (7, 1), (3, 200)])
@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.4, 0.95])
def test_every_defect_rle_decodes_and_their_union_is_the_mask(shape, fraction):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    final_map = rng.random(shape).astype(np.float32)
    element, prediction = _pair(final_map, threshold=1.0 - fraction)
    record = to_record(element, prediction, run_id="r", profile="tiny", digests={}, store_maps=False, max_defects=10_000)
    pa.Table.from_pylist([record], schema=RECORD_SCHEMA)  # the row fits the schema
    mask = _decode(record["mask_rle"])
    union = np.zeros(shape, bool)
    assert not record["defects_truncated"]
    for defect in record["defects"]:
        component = _decode(defect["segmentation"])
        assert component.shape == shape and defect["segmentation"]["size"] == list(shape)
        assert not (component & union).any()
        union |= component
        assert defect["area"] == component.sum()
        assert defect["bbox"] == list(coco_mask.toBbox(coco_mask.encode(np.asfortranarray(component, np.uint8))))
        assert all(isinstance(v, float) for v in defect["bbox"])
        assert defect["max_score"] == pytest.approx(final_map[component].max())
        assert defect["mean_score"] == pytest.approx(final_map[component].mean())
        # The same string pycocotools writes for that mask: any COCO tool reads it.
        encoded = coco_mask.encode(np.asfortranarray(component, np.uint8))["counts"].decode()
        assert defect["segmentation"]["counts"] == encoded
    assert np.array_equal(union, mask)


def test_components_are_eight_connected_largest_first_and_capped():
    mask = np.zeros((20, 20), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one component
    mask[10:14, 10:13] = True
    mask[5, 18] = True
    final_map = np.where(mask, 0.9, 0.1).astype(np.float32)
    defects, truncated = defect_instances(final_map, mask)
    assert [d["area"] for d in defects] == [12, 2, 1] and not truncated
    assert defects[0]["bbox"] == [10.0, 10.0, 3.0, 4.0]
    capped, truncated = defect_instances(final_map, mask, max_defects=2)
    assert [d["area"] for d in capped] == [12, 2] and truncated


def test_pred_label_and_mask_follow_the_thresholds():
    final_map = np.tile(np.linspace(0.0, 1.0, 50, dtype=np.float32), (30, 1))
    element, prediction = _pair(final_map, threshold=0.5, image_score=0.7)
    common = {"run_id": "r", "profile": "tiny", "digests": {}, "store_maps": False}
    default = to_record(element, prediction, **common)
    assert default["mask_threshold"] == default["image_threshold"] == 0.5
    assert default["pred_label"] == "NG" and default["thresholds_digest"] is None
    assert np.array_equal(_decode(default["mask_rle"]), final_map >= 0.5)
    applied = to_record(element, prediction, thresholds={"washer": (0.8, 0.75)}, thresholds_digest="d" * 64, **common)
    assert applied["mask_threshold"] == 0.8 and applied["image_threshold"] == 0.75
    assert applied["pred_label"] == "OK" and applied["thresholds_digest"] == "d" * 64
    assert np.array_equal(_decode(applied["mask_rle"]), final_map >= 0.8)
    assert applied["anomaly_area_fraction"] == pytest.approx((final_map >= 0.8).mean())
    assert len(applied["defects"]) == 1 and applied["defects"][0]["area"] == (final_map >= 0.8).sum()
    at_threshold = to_record(element, prediction, thresholds={"washer": (0.8, 0.7)}, **common)
    assert at_threshold["pred_label"] == "NG"  # image_score >= image threshold
    other = to_record(element, prediction, thresholds={"bolt": (0.8, 0.75)}, **common)
    assert other["mask_threshold"] == 0.5 and other["pred_label"] == "NG"  # not in the file: profile default
