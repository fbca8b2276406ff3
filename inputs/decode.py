"""Bytes → arrays for input images and ground-truth masks (DESIGN §8), with no Beam in sight.

Every way an input can be unusable raises `DecodeError` with a specific `error_type`, which the
reader turns into one failure row; every input that is usable but unusual is converted to the one
shape the model expects (RGB uint8, H×W×3) and the conversion is recorded in `notes`, so a
record says what was done to its pixels.

The conversion rules (16-bit grey scaled by v/257, 16-bit RGB PNGs reduced to their high byte,
float grey in [0, 1] scaled by v*255 else `UnsupportedPixelRange`, alpha dropped, EXIF orientation
applied, first frame of a multi-frame file, pixel limit and minimum side, ...) are written once, in
`clipsam.image_input`: this module turns bytes into a lazily opened PIL image (format, header-time
size check, empty / not an image) and hands it to `clipsam.image_input.pil_to_rgb`, which the
notebook API (`clipsam.ClipSAM.predict`) also uses for PIL images, as `array_to_rgb` for arrays.
`read_image` (a URL or path → pixels and notes) is the image reader `model_store.load_clipsam`
gives the notebook API, so a path given to `ClipSAM.predict` is read and decoded as the pipeline
reads and decodes it.

JPEG draft decoding (`JpegDraft`): where the models need fewer pixels than a JPEG has (an untiled
frame at least twice as large as CLIP's and SAM's inputs need on each side), it is decoded at
1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, several times cheaper than decoding it whole and
resizing. The frame (`decode_frame`'s third value) stays the file's size: maps, masks and records
are in it, and a decode note says what was done.

Masks: modes 1, L, P, I, I;16*, LA, RGB, RGBA; a pixel is a defect when any colour channel is
> 0 (palette masks use the index, so VisA's class-id masks work). Masks are never resized.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipsam.image_input import (
    CORRUPT_IMAGE,
    DEFAULT_MIN_SIDE,
    DEFAULT_PIXEL_LIMIT,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_SMALL,
    TRUNCATED_IMAGE,
    UNSUPPORTED_PIXEL_RANGE,
    DecodeError,
    broken,
    check_pixel_limit,
    load_fully,
    pil_to_rgb,
)

from .uris import open_binary

# error_type values raised by this module (the conversion ones come from clipsam.image_input).
EMPTY_FILE = "EmptyFile"
NOT_AN_IMAGE = "NotAnImage"
BAD_MASK = "BadMask"
MASK_SIZE_MISMATCH = "MaskSizeMismatch"
FILE_NOT_FOUND = "FileNotFound"
READ_ERROR = "ReadError"

__all__ = [
    "BAD_MASK", "CORRUPT_IMAGE", "DEFAULT_MIN_SIDE", "DEFAULT_PIXEL_LIMIT", "EMPTY_FILE", "FILE_NOT_FOUND",
    "IMAGE_TOO_LARGE", "IMAGE_TOO_SMALL", "MASK_SIZE_MISMATCH", "NOT_AN_IMAGE", "READ_ERROR", "TRUNCATED_IMAGE",
    "UNSUPPORTED_PIXEL_RANGE", "DecodeError", "JpegDraft", "check_image_header", "decode_frame", "decode_image",
    "decode_mask", "read_image",
]

_MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "LA", "RGB", "RGBA"}


@dataclass(frozen=True)
class JpegDraft:
    """How many pixels of a frame the models need, so a JPEG can be decoded at a reduced scale.

    clip_side: CLIP's input side S (stage 1 resizes the whole frame to S × S, so each side needs S).
    sam_side: SAM's input side (stage 2 resizes the long side to it, the short side in proportion).
    max_long_side: frames with a longer long side are tiled and scored at native resolution, so
        they are never reduced (None: no frame is tiled).
    """

    clip_side: int
    sam_side: int
    max_long_side: Optional[int] = None

    def needed(self, width: int, height: int) -> Optional[tuple[int, int]]:
        """(w, h) the models need of a width × height frame, or None when the frame is tiled or
        no side could be halved."""
        long = max(width, height)
        if self.max_long_side is not None and long > self.max_long_side:
            return None
        need_w = max(self.clip_side, math.ceil(self.sam_side * width / long))
        need_h = max(self.clip_side, math.ceil(self.sam_side * height / long))
        if width < 2 * need_w or height < 2 * need_h:
            return None
        return need_w, need_h


def decode_frame(
    data: bytes,
    uri: str,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
    draft: Optional[JpegDraft] = None,
) -> tuple[np.ndarray, list[str], tuple[int, int]]:
    """`decode_image`, and for a JPEG that `draft` says the models need fewer pixels of, at the
    largest 1/2^k scale (k ≤ 3) that keeps each side at least what they need. Returns (RGB uint8
    (h, w, 3), notes, frame (H, W)): the frame is the full-size image's (EXIF orientation
    applied), equal to (h, w) unless the JPEG was reduced, which a note then says."""
    im = _open_checked(data, uri, pixel_limit)
    width, height = im.size
    wanted = draft.needed(width, height) if draft is not None and im.format == "JPEG" else None
    if wanted is not None:
        im.draft(im.mode, wanted)
    reduced = im.size
    image, notes = pil_to_rgb(im, uri, pixel_limit, min_side)
    if reduced == (width, height):
        return image, notes, image.shape[:2]
    notes.append(f"JPEG decoded at 1/{width // reduced[0]} scale ({reduced[0]} x {reduced[1]} of {width} x {height}): "
                 "the models need no more; maps and masks are in the full frame")
    turned = image.shape[1] != reduced[0]  # EXIF orientation swapped the sides
    return image, notes, (width, height) if turned else (height, width)


def decode_image(
    data: bytes,
    uri: str,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[np.ndarray, list[str]]:
    """Decode an encoded image into RGB uint8 (H, W, 3), C-contiguous, plus conversion notes.

    `uri` is only used in messages. Size limits are checked on the header, before any pixel is
    decoded, so a decompression bomb costs nothing.
    Raises DecodeError: EmptyFile, NotAnImage, ImageTooLarge, ImageTooSmall, TruncatedImage,
    CorruptImage, UnsupportedPixelRange.
    """
    image, notes, _ = decode_frame(data, uri, pixel_limit, min_side)
    return image, notes


def read_image(
    uri: str,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[np.ndarray, list[str]]:
    """Read one image file at `uri` (any fsspec URL or local path, taken literally as
    `inputs.uris.open_binary` takes it) and decode it with `decode_image`: RGB uint8 (H, W, 3)
    and conversion notes, exactly what the pipeline's reader makes of the same file.

    This is the `image_reader` contract of `clipsam.ClipSAM` (a URL, the pixel limit and the
    minimum side → pixels and notes; a ValueError for anything unreadable).
    Raises DecodeError (a ValueError): FileNotFound, ReadError, and `decode_image`'s.
    """
    try:
        with open_binary(uri) as f:
            data = f.read()
    except FileNotFoundError:
        raise DecodeError(FILE_NOT_FOUND, f"{uri}: no such file") from None
    except (OSError, ValueError) as err:  # ValueError: a path the OS refuses (embedded NUL, ...)
        raise DecodeError(READ_ERROR, f"{uri}: {type(err).__name__}: {err}") from None
    return decode_image(data, uri, pixel_limit, min_side)


def check_image_header(head: bytes, uri: str, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> None:
    """Raise DecodeError ImageTooLarge when `head`, the first bytes of an image, already shows
    more than `pixel_limit` pixels; an incomplete or unparsable header is left to `decode_image`
    on the whole file. Lets a reader of a stream stop before reading a bomb's bytes."""
    try:
        _open_checked(head, uri, pixel_limit)
    except DecodeError as err:
        if err.error_type == IMAGE_TOO_LARGE:
            raise


def decode_mask(data: bytes, uri: str, expected_shape: tuple[int, int]) -> np.ndarray:
    """Decode a ground-truth mask into bool (H, W): True where any colour channel is > 0.

    `expected_shape` is the decoded image's (H, W); a mask of any other size is an error (it is
    never resized: a silently stretched mask would corrupt pixel metrics).
    Raises DecodeError: BadMask (empty, not an image, truncated, unsupported mode),
    MaskSizeMismatch.
    """
    try:
        im = _open_checked(data, uri, pixel_limit=expected_shape[0] * expected_shape[1])
    except DecodeError as err:
        if err.error_type == IMAGE_TOO_LARGE:
            raise DecodeError(
                MASK_SIZE_MISMATCH, f"{err.message}; image is {tuple(expected_shape)}"
            ) from None
        raise DecodeError(BAD_MASK, err.message) from None
    shape = (im.size[1], im.size[0])
    if shape != tuple(expected_shape):
        raise DecodeError(
            MASK_SIZE_MISMATCH, f"{uri}: mask is {shape} (H, W), image is {tuple(expected_shape)}"
        )
    if im.mode not in _MASK_MODES:
        raise DecodeError(BAD_MASK, f"{uri}: unsupported mask mode {im.mode}")
    load_fully(im, uri, BAD_MASK, BAD_MASK)
    if im.mode in ("LA", "RGBA"):
        im = im.convert("L" if im.mode == "LA" else "RGB")
    values = np.asarray(im)
    if values.ndim == 3:
        return np.ascontiguousarray((values > 0).any(axis=2))
    return np.ascontiguousarray(values > 0)


def _open_checked(data: bytes, uri: str, pixel_limit: int) -> Image.Image:
    """Open lazily (header only) and enforce the pixel limit before decoding."""
    if not data:
        raise DecodeError(EMPTY_FILE, f"{uri}: file is empty")
    # Our own limit is checked right below; Pillow's global bomb guard must not be stricter.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < pixel_limit:
        Image.MAX_IMAGE_PIXELS = pixel_limit
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise DecodeError(IMAGE_TOO_LARGE, f"{uri}: {err}") from None
    except UnidentifiedImageError:
        raise DecodeError(NOT_AN_IMAGE, f"{uri}: not a recognised image format") from None
    except Exception as err:  # noqa: BLE001 - a header that parses as a format but is broken
        raise broken(err, uri, TRUNCATED_IMAGE, CORRUPT_IMAGE) from None
    check_pixel_limit(*im.size, uri, pixel_limit)
    return im
