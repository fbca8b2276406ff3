"""The small values that flow between pipeline stages.

An `ImageElement` is what the reader emits for each decoded image; a `Failure` is what any
stage emits instead when an input cannot be processed. Every input image ends up as exactly
one record or exactly one failure, so both carry the stable `image_id`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# Stage names used in failure rows.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_CLIP = "stage1"
STAGE_SAM = "stage2"


def make_image_id(source_uri: str, member: str = "") -> str:
    """Stable id of one image: a hash of where it came from, so reruns give the same ids."""
    key = source_uri if not member else f"{source_uri}::{member}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def known_ground_truth(mask: Optional[np.ndarray], label: Optional[int], shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The ground-truth mask to score an image against: its decoded `mask` (bool [H, W]) when it
    has one; all-False [H, W] of `shape` for a normal image (label 0), whose pixels are all
    negatives although MVTec-AD / VisA ship no mask file for it; None when the label is unknown."""
    if mask is None and label == 0:
        return np.zeros(shape, dtype=bool)
    return mask


@dataclass
class ImageElement:
    """One decoded input image.

    image: RGB uint8, shape (h, w, 3), C-contiguous.
    frame: (H, W) of the full-size image when `image` is a reduced decode of it (a JPEG decoded
        at 1/2^k scale, `inputs.decode.JpegDraft`), else None: (H, W) = (h, w). Maps, masks,
        records and `height`/`width` are in the frame.
    gt_mask: bool (H, W) ground-truth defect mask, or None when the layout has no ground truth.
    label: 1 anomalous, 0 normal, None unknown (no ground truth).
    """

    image_id: str
    source_uri: str
    category: str
    image: np.ndarray
    gt_mask: Optional[np.ndarray] = None
    label: Optional[int] = None
    notes: list[str] = field(default_factory=list)  # documented conversions applied on decode
    content_sha256: str = ""  # sha256 (hex) of the image file's bytes: what `--skip_scored` matches
    frame: Optional[tuple[int, int]] = None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the frame everything but `image` is in."""
        return self.frame or (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def height(self) -> int:
        return self.frame_size[0]

    @property
    def width(self) -> int:
        return self.frame_size[1]


@dataclass(frozen=True)
class Failure:
    """One input that did not become a record, and why."""

    source_uri: str
    image_id: str
    stage: str
    error_type: str
    message: str

    def to_row(self, run_id: str) -> dict:
        return {
            "source_uri": self.source_uri,
            "image_id": self.image_id,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "run_id": run_id,
        }
