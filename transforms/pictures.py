"""Pictures of predictions for people: the overlay JPEG of one image (`render_overlay`).

An overlay is one strip of three panels under a caption bar:
    image (ground-truth contour when known) | heat map of the final map | image with the mask contour
Each panel is the image at its own size, scaled down (never up) so that its long side is at most
`max_side` pixels; the strip is 3 panels wide plus `GAP`-pixel gaps, and `CAPTION` pixels taller
than a panel (`overlay_size`). The heat map colours the final map on a fixed scale, 0 → black to
1 → pale yellow, the same for every image, so strips can be compared. Contours: the predicted
mask in red, the ground truth in cyan. Drawing uses Pillow only (no display, no fonts to install).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

GAP = 4
CAPTION = 18
BACKGROUND = (32, 32, 32)
MASK_COLOUR = (255, 48, 48)
TRUTH_COLOUR = (0, 220, 255)
# Heat-map colour anchors (black → purple → red → orange → pale yellow), interpolated to 256 levels.
_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                     for c in range(3)], axis=1).round().astype(np.uint8)


def panel_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of one panel: the image's own size, scaled down to a long side of `max_side`."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of the whole overlay JPEG of a width × height image."""
    panel_w, panel_h = panel_size(width, height, max_side)
    return 3 * panel_w + 2 * GAP, panel_h + CAPTION


def heat_map(scores: np.ndarray) -> np.ndarray:
    """float scores [H, W] in [0, 1] → RGB uint8 [H, W, 3] on the fixed colour scale."""
    levels = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float32)), 0.0, 1.0) * 255.0
    return HEAT_LUT[levels.round().astype(np.uint8)]


def draw_contour(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Paint the 2-pixel-wide inner border of `mask` (bool, same H × W as `rgb`) onto `rgb` in place."""
    if not mask.any():
        return
    border = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
    rgb[border] = colour


def _resized(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """`array` as an image of `size`; large reductions first shrink by whole factors (Pillow's
    `reducing_gap`), which costs little and looks the same at the panel's size."""
    image = Image.fromarray(array)
    return np.asarray(image if image.size == size else image.resize(size, resample, reducing_gap=2.0))


def _mask_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return _resized(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, size, Image.NEAREST) > 127


def render_overlay(image: np.ndarray, final_map: np.ndarray, mask: np.ndarray, gt_mask: Optional[np.ndarray],
                   caption: str, max_side: int, quality: int = 85) -> bytes:
    """The overlay JPEG (module docstring) of one prediction.

    image: RGB uint8 [h, w, 3], the frame or a reduced decode of it; final_map: float [H, W] in
    [0, 1], in the frame; mask: bool [H, W], the mask the record reports; gt_mask: bool [H, W] or
    None; caption: one line of text (clipped to the strip). Panels are sized from the frame.
    """
    height, width = np.shape(final_map)
    size = panel_size(width, height, max_side)
    base = _resized(np.ascontiguousarray(image, dtype=np.uint8), size, Image.BILINEAR)
    truth = _mask_at(gt_mask, size) if gt_mask is not None else None
    first = base.copy()
    if truth is not None:
        draw_contour(first, truth, TRUTH_COLOUR)
    heat = heat_map(_resized(np.asarray(final_map, dtype=np.float32), size, Image.BILINEAR))
    third = base.copy()
    if truth is not None:
        draw_contour(third, truth, TRUTH_COLOUR)
    draw_contour(third, _mask_at(mask, size), MASK_COLOUR)
    strip = Image.new("RGB", overlay_size(width, height, max_side), BACKGROUND)
    for index, panel in enumerate((first, heat, third)):
        strip.paste(Image.fromarray(panel), (index * (size[0] + GAP), CAPTION))
    ImageDraw.Draw(strip).text((3, 2), caption, fill=(240, 240, 240), font=ImageFont.load_default(size=12))
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
