"""COCO compressed RLE for masks (DESIGN §5), through pycocotools so any COCO tool can decode it.

The record stores `{"size": [H, W], "counts": str}`: column-major runs starting with zeros, in
COCO's compressed ASCII alphabet. pycocotools wants a Fortran-ordered uint8 array; building the
mask column-major in the first place (np.asfortranarray) is most of the encoding cost.
"""
from __future__ import annotations

from typing import TypedDict

import numpy as np
from pycocotools import mask as coco_mask


class RLE(TypedDict):
    size: list[int]  # [H, W]
    counts: str


def encode_mask(mask: np.ndarray) -> RLE:
    """bool/uint8 [H, W] → COCO compressed RLE with `counts` as an ASCII str."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask takes a 2-D mask, got shape {mask.shape}")
    encoded = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


def decode_mask(rle: RLE) -> np.ndarray:
    """COCO compressed RLE (counts as str or bytes) → bool [H, W]."""
    counts = rle["counts"]
    data = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(data).astype(bool)
