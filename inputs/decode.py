"""Bytes → arrays for input images and ground-truth masks (DESIGN §8), with no Beam in sight.

Every way an input can be unusable raises `DecodeError` with a specific `error_type`, which the
reader turns into one failure row; every input that is usable but unusual is converted to the one
shape the model expects (RGB uint8, H×W×3) and the conversion is recorded in `notes`, so a
record says what was done to its pixels.

Documented conversions (each adds a note):
- 16-bit grey (`I;16*`, `I`): linear `round(v / 257)` after clipping to [0, 65535], so 65535 →
  255 and the absolute scale is kept (no per-image stretch). 16-bit RGB PNGs are reduced to their
  high byte by Pillow itself; a note says so.
- 32-bit float grey (`F`, e.g. float TIFF): read as intensities in [0, 1], scaled linearly by
  `round(v * 255)`; an image with any value outside [0, 1] or not finite fails with
  `UnsupportedPixelRange` (no range is guessed: scaling by the image's own min/max would make
  every image full-contrast).
- Grey, bilevel, palette, CMYK, YCbCr and other modes: Pillow's `convert("RGB")`.
- Alpha (`RGBA`, `LA`, `PA`, palette transparency): dropped, keeping the colour channels as
  captured (not composited on a background).
- EXIF orientation other than 1: applied with `ImageOps.exif_transpose`, so H and W may swap.
- Multi-frame files (TIFF pages): the first frame is used.

Masks: modes 1, L, P, I, I;16*, LA, RGB, RGBA; a pixel is a defect when any colour channel is
> 0 (palette masks use the index, so VisA's class-id masks work). Masks are never resized.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail, not decode into a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_PIXEL_LIMIT = 64_000_000  # 64 MP; larger inputs fail with ImageTooLarge
DEFAULT_MIN_SIDE = 32  # images narrower or shorter than this fail with ImageTooSmall

# error_type values raised by this module.
EMPTY_FILE = "EmptyFile"
NOT_AN_IMAGE = "NotAnImage"
TRUNCATED_IMAGE = "TruncatedImage"
CORRUPT_IMAGE = "CorruptImage"
IMAGE_TOO_LARGE = "ImageTooLarge"
IMAGE_TOO_SMALL = "ImageTooSmall"
BAD_MASK = "BadMask"
MASK_SIZE_MISMATCH = "MaskSizeMismatch"
UNSUPPORTED_PIXEL_RANGE = "UnsupportedPixelRange"

_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "LA", "RGB", "RGBA"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112


class DecodeError(Exception):
    """An input that cannot become an array; `error_type` is the failure row's error_type."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


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
    im = _open_checked(data, uri, pixel_limit)
    width, height = im.size
    if min(width, height) < min_side:
        raise DecodeError(
            IMAGE_TOO_SMALL, f"{uri}: {width}x{height} px, each side must be >= {min_side}"
        )
    notes: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"multi-frame file ({im.n_frames} frames): first frame used")
    _load_fully(im, uri, TRUNCATED_IMAGE, CORRUPT_IMAGE)
    if _is_16bit_rgb_png(data):
        notes.append("16-bit RGB PNG reduced to 8 bits (high byte)")
    im = _apply_exif_orientation(im, notes)
    return _to_rgb(im, notes, uri), notes


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
    _load_fully(im, uri, BAD_MASK, BAD_MASK)
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
    except Exception as err:  # a header that parses as a format but is broken
        raise _broken(err, uri, TRUNCATED_IMAGE, CORRUPT_IMAGE) from None
    width, height = im.size
    if width * height > pixel_limit:
        raise DecodeError(
            IMAGE_TOO_LARGE, f"{uri}: {width}x{height} = {width * height} px > limit {pixel_limit}"
        )
    return im


def _load_fully(im: Image.Image, uri: str, truncated_type: str, corrupt_type: str) -> None:
    """Decode every pixel now, so truncation is detected here and not later in the model."""
    try:
        im.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error...
        raise _broken(err, uri, truncated_type, corrupt_type) from None


def _broken(err: Exception, uri: str, truncated_type: str, corrupt_type: str) -> DecodeError:
    """Classify a Pillow error: running out of data is truncation, anything else corruption."""
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return DecodeError(
        truncated_type if truncated else corrupt_type, f"{uri}: {type(err).__name__}: {err}"
    )


def _is_16bit_rgb_png(data: bytes) -> bool:
    """True for a PNG whose IHDR says 16 bits per sample in colour (Pillow reads it as 8-bit)."""
    # IHDR: signature(8) length(4) type(4) width(4) height(4) bit_depth(1) colour_type(1)
    return (
        data[:8] == _PNG_SIGNATURE
        and len(data) > 25
        and data[24] == 16
        and data[25] in (2, 6)
    )


def _apply_exif_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # a broken EXIF block must not cost the image
        notes.append(f"unreadable EXIF ignored ({type(err).__name__})")
        return im
    if orientation in (None, 1):
        return im
    notes.append(f"EXIF orientation {orientation} applied")
    return ImageOps.exif_transpose(im)


def _to_rgb(im: Image.Image, notes: list[str], uri: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8, order="C")
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DecodeError(UNSUPPORTED_PIXEL_RANGE, f"{uri}: float image with NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise DecodeError(
                UNSUPPORTED_PIXEL_RANGE,
                f"{uri}: float image with values in [{low:g}, {high:g}], only [0, 1] is supported",
            )
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        notes.append("F (32-bit float) grey in [0, 1] scaled to 8 bits (v*255) and replicated to RGB")
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode in _SIXTEEN_BIT_GREY:
        values = np.asarray(im).astype(np.int64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        notes.append(f"{mode} grey scaled to 8 bits (v/257) and replicated to RGB")
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    has_alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info)
    notes.append(f"mode {mode} converted to RGB" + (", alpha dropped" if has_alpha else ""))
    return np.array(im.convert("RGB"), dtype=np.uint8, order="C")
