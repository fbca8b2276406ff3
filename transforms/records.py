"""Output rows: the fixed pyarrow schemas of records and failures (DESIGN §5, README "Records").

A record is everything a consumer needs about one image without the models: scores, the OK/NG
decision and the thresholds behind it, the defect mask as COCO RLE and its connected components
(`defects`), the SAM prompts, and provenance (profile, weight digests, code
version, run id, and `random_weights`: true when the store holds `make-random` weights, whose
scores mean nothing). Maps are optional (`--store_maps`) because they dominate the size.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
from typing import Any, Iterable, Mapping

import apache_beam as beam
import numpy as np
import pyarrow as pa
from PIL import Image

from clipsam.metrics import score_units, unit_scores
from clipsam.defects import MAX_DEFECTS, defect_instances
from clipsam.rle import encode_mask
from clipsam.thresholds import decide
from clipsam.stage2 import Prediction
from inputs.elements import ImageElement


def _installed_version() -> str:
    """The installed distribution's version (setup.py is the one place it is written)."""
    try:
        return importlib.metadata.version("clipsam-pipeline")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


PIPELINE_VERSION = _installed_version()
MAP_PNG_MAX_SIDE = 256

RLE_TYPE = pa.struct([pa.field("size", pa.list_(pa.int32(), 2)), pa.field("counts", pa.string())])
DEFECT_TYPE = pa.struct([
    pa.field("bbox", pa.list_(pa.float64(), 4)),  # [x, y, w, h], COCO
    pa.field("area", pa.int64()),
    pa.field("max_score", pa.float64()),
    pa.field("mean_score", pa.float64()),
    pa.field("segmentation", RLE_TYPE),  # COCO RLE of this component alone
])

RECORD_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string(), nullable=False),  # sha256 of the image file's bytes
        pa.field("category", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("image_score", pa.float64(), nullable=False),
        pa.field("clip_image_score", pa.float64(), nullable=False),
        pa.field("max_pixel_score", pa.float64(), nullable=False),
        pa.field("anomaly_area_fraction", pa.float64(), nullable=False),
        pa.field("mask_threshold", pa.float64(), nullable=False),
        pa.field("image_threshold", pa.float64(), nullable=False),
        pa.field("pred_label", pa.string(), nullable=False),  # "OK" | "NG": image_score >= image_threshold
        pa.field("mask_rle", RLE_TYPE, nullable=False),
        pa.field("defects", pa.list_(DEFECT_TYPE), nullable=False),
        pa.field("defects_truncated", pa.bool_(), nullable=False),
        pa.field("sam_prompt_boxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
        pa.field("sam_prompt_points", pa.list_(pa.list_(pa.list_(pa.float32(), 2))), nullable=False),
        pa.field("sam_used", pa.bool_(), nullable=False),
        pa.field("anomaly_map_png", pa.binary(), nullable=True),
        pa.field("gt_label", pa.int8(), nullable=True),
        pa.field("decode_notes", pa.list_(pa.string()), nullable=False),
        pa.field("model_profile", pa.string(), nullable=False),
        pa.field("model_digests", pa.map_(pa.string(), pa.string()), nullable=False),
        pa.field("random_weights", pa.bool_(), nullable=False),  # the store's weights are make-random's
        pa.field("thresholds_digest", pa.string(), nullable=True),  # sha256 of the --thresholds file in force
        pa.field("pipeline_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("stage1_ms", pa.float32(), nullable=False),
        pa.field("stage2_ms", pa.float32(), nullable=False),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


MAP_PNG_LEVELS = 65535  # 16-bit levels on the evaluation's log-odds scale (`clipsam.metrics.score_units`)


def map_png(final_map: np.ndarray, max_side: int = MAP_PNG_MAX_SIDE) -> bytes:
    """M as a 16-bit grayscale PNG, long side at most `max_side`, level = round(65535 · u(M)) where
    u is the evaluation's log-odds scale (`score_units`; `read_map_png` inverts it).

    Why not round(65535 · M): trained maps rank most of their pixels far below 1e-5, where equal
    steps of [0, 1] would make them ties (docs/decisions.md, "Metrics and binning"). 16-bit PNGs
    of ≤ 256-px maps stay small (a few tens of kB). The stored map is resized on the log-odds scale.
    """
    height, width = final_map.shape
    values = score_units(final_map)
    scale = max_side / max(height, width)
    if scale < 1.0:
        resized = Image.fromarray(values, mode="F").resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                                          Image.BILINEAR)
        values = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    image = Image.fromarray(np.round(values * MAP_PNG_LEVELS).astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def read_map_png(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A stored map back as float32 scores in [0, 1]; resized (bilinear, on the log-odds scale)
    to `size` = (width, height) if given."""
    units = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / MAP_PNG_LEVELS
    if size is not None and (units.shape[1], units.shape[0]) != tuple(size):
        units = np.asarray(Image.fromarray(units, mode="F").resize(tuple(size), Image.BILINEAR), dtype=np.float32)
    return unit_scores(np.clip(units, 0.0, 1.0))


def judged_mask(category: str, prediction: Prediction, thresholds: Mapping[str, tuple[float, float]] | None
                ) -> tuple[np.ndarray, float, float]:
    """(mask, pixel threshold, image threshold) an image of `category` is judged with.

    thresholds: category → (pixel threshold, image threshold) from a thresholds file. For a
    category in it, the mask is final_map ≥ its pixel threshold; for any other category (or
    without a file) the mask is the prediction's (final_map ≥ the profile's mask threshold) and
    that same threshold is the image threshold.
    """
    calibrated = (thresholds or {}).get(category)
    if calibrated is None:
        return prediction.mask, float(prediction.mask_threshold), float(prediction.mask_threshold)
    return prediction.final_map >= float(calibrated[0]), float(calibrated[0]), float(calibrated[1])


def to_record(
    element: ImageElement,
    prediction: Prediction,
    *,
    run_id: str,
    profile: str,
    digests: dict[str, str],
    store_maps: bool,
    random_weights: bool = False,
    thresholds: Mapping[str, tuple[float, float]] | None = None,
    thresholds_digest: str | None = None,
    max_defects: int = MAX_DEFECTS,
) -> dict[str, Any]:
    """One output row for one image (keys and types as RECORD_SCHEMA).

    thresholds: category → (pixel threshold, image threshold) from a thresholds file
    (`judged_mask`). pred_label is NG when image_score ≥ the image threshold. `defects` lists the mask's 8-connected components,
    the `max_defects` largest (`clipsam.defects.defect_instances`).
    """
    mask, mask_threshold, image_threshold = judged_mask(element.category, prediction, thresholds)
    defects, truncated = defect_instances(prediction.final_map, mask, max_defects)
    return {
        "image_id": element.image_id,
        "source_uri": element.source_uri,
        "content_sha256": element.content_sha256,
        "category": element.category,
        "width": element.width,
        "height": element.height,
        "image_score": prediction.image_score,
        "clip_image_score": prediction.clip_image_score,
        "max_pixel_score": prediction.max_pixel_score,
        "anomaly_area_fraction": float(mask.mean()),
        "mask_threshold": mask_threshold,
        "image_threshold": image_threshold,
        "pred_label": decide(prediction.image_score, image_threshold),
        "mask_rle": encode_mask(mask),
        "defects": defects,
        "defects_truncated": truncated,
        "sam_prompt_boxes": [box.tolist() for box in prediction.boxes],
        "sam_prompt_points": [points.tolist() for points in prediction.points],
        "sam_used": prediction.sam_used,
        "anomaly_map_png": map_png(prediction.final_map) if store_maps else None,
        "gt_label": element.label,
        "decode_notes": list(element.notes),
        "model_profile": profile,
        "model_digests": sorted(digests.items()),
        "random_weights": random_weights,
        "thresholds_digest": thresholds_digest,
        "pipeline_version": PIPELINE_VERSION,
        "run_id": run_id,
        "processed_at": dt.datetime.now(dt.timezone.utc),
        "stage1_ms": prediction.stage1_ms,
        "stage2_ms": prediction.stage2_ms,
    }


class ToRecord(beam.DoFn):
    """(ImageElement, Prediction) → record row."""

    def __init__(self, *, run_id: str, profile: str, digests: dict[str, str], store_maps: bool,
                 random_weights: bool = False, thresholds: Mapping[str, tuple[float, float]] | None = None,
                 thresholds_digest: str | None = None) -> None:
        self.settings = {"run_id": run_id, "profile": profile, "digests": digests, "store_maps": store_maps,
                         "random_weights": random_weights, "thresholds": dict(thresholds or {}),
                         "thresholds_digest": thresholds_digest}

    def process(self, pair: tuple) -> Iterable[dict[str, Any]]:
        element, prediction = pair
        yield to_record(element, prediction, **self.settings)
