"""Decoded pixels → the one image the model takes (RGB uint8, H×W×3): the decode rules, written once.

Two kinds of input arrive here: a PIL image (the pipeline's decoded file bytes, or a notebook
user's `Image.open(...)`) and a numpy array (a notebook user's). Both become RGB uint8 H×W×3,
C-contiguous, and every conversion is recorded in a list of notes (the pipeline's records keep
them as `decode_notes`, `ClipSAM.decode` returns them), so a result says what was done to its
pixels. Anything unusable raises `DecodeError` (a ValueError) with a specific `error_type`.
`inputs.decode` turns file bytes into a PIL image and calls `pil_to_rgb`; `ClipSAM` calls
`pil_to_rgb` / `array_to_rgb` directly. Only numpy and PIL are used here (no file systems).

Rules (each conversion adds a note):
- size: more than `pixel_limit` pixels → `ImageTooLarge`; a side under `min_side` → `ImageTooSmall`.
- 16-bit grey (`I;16*`, `I`; uint16 or int32 H×W arrays): linear `round(v / 257)` after clipping
  to [0, 65535], so 65535 → 255 and the absolute scale is kept (no per-image stretch).
- 16-bit colour: 16-bit RGB(A) PNGs are reduced to their high byte by Pillow itself (a note says
  so); uint16 arrays with 2-4 channels are reduced to their high byte the same way.
- float intensities (`F` images, float arrays grey or colour): read as values in [0, 1] and scaled
  linearly by `round(v * 255)`; any value outside [0, 1] or not finite → `UnsupportedPixelRange`
  (no range is guessed: scaling by the image's own min/max would make every image full-contrast).
- grey, bilevel (bool), palette, CMYK, YCbCr and other modes: Pillow's `convert("RGB")`; an
  H×W×1 array is grey H×W.
- alpha (`RGBA`, `LA`, `PA`, palette transparency; 2- and 4-channel arrays): dropped, keeping
  the colour channels as captured (not composited on a background).
- EXIF orientation other than 1: applied with `ImageOps.exif_transpose`, so H and W may swap.
- multi-frame images (TIFF pages): the first frame is used.
- a lazily opened PIL image is decoded here: running out of data → `TruncatedImage`, any other
  decoder error → `CorruptImage` (never a half-grey image).
Arrays take uint8, uint16, bool, int32 (grey only, Pillow's mode `I`) and float16/32/64; any other
dtype or shape → `UnsupportedArray`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A truncated file must fail, not decode into a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_PIXEL_LIMIT = 64_000_000  # 64 MP; larger inputs fail with ImageTooLarge
DEFAULT_MIN_SIDE = 32  # images narrower or shorter than this fail with ImageTooSmall

# error_type values raised by this module.
TRUNCATED_IMAGE = "TruncatedImage"
CORRUPT_IMAGE = "CorruptImage"
IMAGE_TOO_LARGE = "ImageTooLarge"
IMAGE_TOO_SMALL = "ImageTooSmall"
UNSUPPORTED_PIXEL_RANGE = "UnsupportedPixelRange"
UNSUPPORTED_ARRAY = "UnsupportedArray"

ACCEPTED_ARRAYS = ("a numpy array H×W or H×W×C (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) of dtype uint8, "
                   "uint16 or float (values in [0, 1]), or bool or int32 H×W (grey)")

_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_COLOUR_PNG = {"RGB;16B", "RGBA;16B"}  # Pillow's raw modes of 16-bit RGB(A) PNGs
_EXIF_ORIENTATION = 0x0112
_CHANNEL_MODES = {2: "LA", 3: "RGB", 4: "RGBA"}
_FLOAT_GREY_NOTE = "F (32-bit float) grey in [0, 1] scaled to 8 bits (v*255) and replicated to RGB"


class DecodeError(ValueError):
    """An input that cannot become an RGB image; `error_type` names why (the pipeline's failure
    row's error_type), `message` says what was wrong."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def check_pixel_limit(width: int, height: int, source: str, pixel_limit: int) -> None:
    """Raise DecodeError ImageTooLarge when width × height > `pixel_limit`."""
    if width * height > pixel_limit:
        raise DecodeError(
            IMAGE_TOO_LARGE, f"{source}: {width}x{height} = {width * height} px > limit {pixel_limit}"
        )


def check_size(width: int, height: int, source: str, pixel_limit: int, min_side: int) -> None:
    """Raise DecodeError ImageTooLarge / ImageTooSmall when the size breaks a limit."""
    check_pixel_limit(width, height, source, pixel_limit)
    if min(width, height) < min_side:
        raise DecodeError(
            IMAGE_TOO_SMALL, f"{source}: {width}x{height} px, each side must be >= {min_side}"
        )


def pil_to_rgb(
    im: Image.Image,
    source: str,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[np.ndarray, list[str]]:
    """A PIL image (lazily opened or already loaded) → RGB uint8 (H, W, 3) and conversion notes.

    The size is checked before any pixel is decoded. `source` only appears in messages.
    Raises DecodeError: ImageTooLarge, ImageTooSmall, TruncatedImage, CorruptImage,
    UnsupportedPixelRange.
    """
    width, height = im.size
    check_size(width, height, source, pixel_limit, min_side)
    notes: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"multi-frame file ({im.n_frames} frames): first frame used")
    high_byte = _is_16bit_colour_png(im)  # only visible before the pixels are decoded
    load_fully(im, source, TRUNCATED_IMAGE, CORRUPT_IMAGE)
    if high_byte:
        notes.append("16-bit RGB PNG reduced to 8 bits (high byte)")
    im = _apply_exif_orientation(im, notes)
    return _mode_to_rgb(im, notes, source), notes


def array_to_rgb(
    array: np.ndarray,
    source: str = "array",
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[np.ndarray, list[str]]:
    """A numpy image → RGB uint8 (H, W, 3) and conversion notes, by the rules of the PIL mode the
    array stands for (uint8 H×W is mode L, uint16 H×W is I;16, H×W×4 uint8 is RGBA, ...), so an
    array gives the same pixels and notes as the same image read from a file.

    An RGB uint8 array comes back as it is (no copy when already C-contiguous) with no notes.
    Raises DecodeError: UnsupportedArray (dtype or shape), ImageTooLarge, ImageTooSmall,
    UnsupportedPixelRange.
    """
    if not isinstance(array, np.ndarray):
        raise DecodeError(UNSUPPORTED_ARRAY, f"{source}: {type(array).__name__} is not a numpy array; "
                                             f"accepted: {ACCEPTED_ARRAYS}")
    values = array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if not values.dtype.isnative:  # big-endian samples (FITS, some TIFF readers): same values
        values = values.astype(values.dtype.newbyteorder("="))
    kind = values.dtype.kind
    grey = values.ndim == 2
    if not (grey or (values.ndim == 3 and values.shape[2] in _CHANNEL_MODES)) or not (
        values.dtype in (np.uint8, np.uint16) or kind == "f" or (grey and values.dtype in (np.bool_, np.int32))
    ):
        raise DecodeError(UNSUPPORTED_ARRAY, f"{source}: cannot use a {array.dtype} array of shape "
                                             f"{array.shape}; accepted: {ACCEPTED_ARRAYS}")
    height, width = values.shape[:2]
    check_size(width, height, source, pixel_limit, min_side)
    notes: list[str] = []
    if kind == "f" and grey:
        notes.append(_FLOAT_GREY_NOTE)
        return _replicate(unit_float_to_uint8(values, source)), notes
    if kind == "f":  # colour: the sample depth first, then the mode's rule (alpha) as for 8 bits
        values = unit_float_to_uint8(values, source)
        notes.append(f"float {_CHANNEL_MODES[values.shape[2]]} in [0, 1] scaled to 8 bits (v*255)")
    elif values.dtype == np.uint16 and not grey:
        values = (values >> 8).astype(np.uint8)
        notes.append(f"16-bit {_CHANNEL_MODES[values.shape[2]]} array reduced to 8 bits (high byte)")
    if values.dtype == np.uint8 and not grey and values.shape[2] == 3:
        return np.ascontiguousarray(values), notes
    # Every other array is the PIL image it stands for, converted by the same rules as a file's.
    return _mode_to_rgb(Image.fromarray(np.ascontiguousarray(values)), notes, source), notes


def unit_float_to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    """Float intensities in [0, 1] → uint8 by `round(v * 255)`; DecodeError UnsupportedPixelRange
    for NaN, infinite or out-of-range values (no range is guessed)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DecodeError(UNSUPPORTED_PIXEL_RANGE, f"{source}: float image with NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise DecodeError(
            UNSUPPORTED_PIXEL_RANGE,
            f"{source}: float image with values in [{low:g}, {high:g}], only [0, 1] is supported",
        )
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_fully(im: Image.Image, source: str, truncated_type: str, corrupt_type: str) -> None:
    """Decode every pixel now, so truncation is detected here and not later in the model."""
    try:
        im.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, zlib.error...
        raise broken(err, source, truncated_type, corrupt_type) from None


def broken(err: Exception, source: str, truncated_type: str, corrupt_type: str) -> DecodeError:
    """Classify a Pillow error: running out of data is truncation, anything else corruption."""
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return DecodeError(
        truncated_type if truncated else corrupt_type, f"{source}: {type(err).__name__}: {err}"
    )


def _is_16bit_colour_png(im: Image.Image) -> bool:
    """True for a not yet decoded PNG stored at 16 bits per sample in colour (RGB or RGBA), which
    Pillow reads as 8-bit; its tile's raw mode says so until the pixels are loaded."""
    if im.format != "PNG":
        return False
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if rawmode in _SIXTEEN_BIT_COLOUR_PNG:
            return True
    return False


def _apply_exif_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # noqa: BLE001 - a broken EXIF block must not cost the image
        notes.append(f"unreadable EXIF ignored ({type(err).__name__})")
        return im
    if orientation in (None, 1):
        return im
    notes.append(f"EXIF orientation {orientation} applied")
    return ImageOps.exif_transpose(im)


def _replicate(grey: np.ndarray) -> np.ndarray:
    """uint8 H×W → RGB H×W×3, C-contiguous."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _mode_to_rgb(im: Image.Image, notes: list[str], source: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8, order="C")
    if mode == "F":
        notes.append(_FLOAT_GREY_NOTE)
        return _replicate(unit_float_to_uint8(np.asarray(im), source))
    if mode in _SIXTEEN_BIT_GREY:
        values = np.asarray(im).astype(np.int64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        notes.append(f"{mode} grey scaled to 8 bits (v/257) and replicated to RGB")
        return _replicate(grey)
    has_alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info)
    notes.append(f"mode {mode} converted to RGB" + (", alpha dropped" if has_alpha else ""))
    return np.array(im.convert("RGB"), dtype=np.uint8, order="C")
