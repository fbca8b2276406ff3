"""ClipSAM, both stages behind one notebook-friendly call.

- stage 1 (`stage1.RoughMapper`): CLIP feature taps + UMCI → rough map M_clip and the CLIP image score;
- stage 2 (`stage2.MMRRefiner`): MMR prompts from M_clip → SAM (prompted images only) → final map.

The Beam pipeline runs the two stages in separate model handlers (a worker loads only what its
stage needs); this facade is for notebooks and tests. It takes an image in any form the pipeline
takes one (a file at a path or URL, a PIL image, a numpy array in any mode the pipeline decodes)
and turns it into RGB uint8 by the pipeline's own decode rules (`clipsam.image_input`). Every
array crossing these APIs is numpy on the CPU, in the original image frame unless stated
otherwise. Loading from a model store is `model_store.load_clipsam`'s business.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image_input import (
    ACCEPTED_ARRAYS,
    DEFAULT_MIN_SIDE,
    DEFAULT_PIXEL_LIMIT,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_SMALL,
    UNSUPPORTED_PIXEL_RANGE,
    DecodeError,
    array_to_rgb,
    pil_to_rgb,
)
from .stage1 import RoughMapper
from .stage2 import MMRRefiner, Prediction

ImageInput = str | os.PathLike | Image.Image | np.ndarray
# (url, pixel_limit, min_side) → (RGB uint8 [H, W, 3], decode notes); ValueError when unreadable.
ImageReader = Callable[[str, int, int], tuple[np.ndarray, list[str]]]

UNSUPPORTED_INPUT = "UnsupportedInput"  # error_type of an input of no accepted type
ACCEPTED = f"a path or URL (str or os.PathLike), a PIL image, or {ACCEPTED_ARRAYS}"
_SIZE_OR_RANGE = {IMAGE_TOO_LARGE, IMAGE_TOO_SMALL, UNSUPPORTED_PIXEL_RANGE}


@dataclass
class ClipSAM:
    """Both stages together.

    >>> model, manifest = model_store.load_clipsam("/path/to/store", "tiny")
    >>> pred = model.predict("gs://bucket/screw/000.png", "screw")   # or a PIL image, or an array
    >>> pred.final_map.shape == model.decode("gs://bucket/screw/000.png")[0].shape[:2]
    True

    Inputs (`predict`, `predict_batch`, `decode`) are decoded exactly as the pipeline decodes a
    file (`clipsam.image_input`: grey, 16-bit, float, palette, CMYK, alpha, EXIF orientation,
    `pixel_limit`, `min_side`); an RGB uint8 [H, W, 3] array is used as it is.

    image_reader: reads a path or URL, the one input `clipsam` cannot read itself (it does not
    use file systems, so that it runs on arrays alone). Contract: `image_reader(url, pixel_limit,
    min_side)` → (RGB uint8 [H, W, 3], decode notes), raising ValueError for anything it cannot
    read or decode. `model_store.load_clipsam` installs `inputs.read_image`, the pipeline's own
    reader and decoder, so a path here gives the pixels and notes the pipeline's record of that
    file has. Without a reader, a path is a ValueError.
    pixel_limit, min_side: the pipeline's defaults (`--pixel_limit`); larger or thinner images are
    a ValueError (DecodeError ImageTooLarge / ImageTooSmall).
    """

    stage1: RoughMapper
    stage2: MMRRefiner
    image_reader: ImageReader | None = None
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    min_side: int = DEFAULT_MIN_SIDE

    def decode(self, image: ImageInput) -> tuple[np.ndarray, list[str]]:
        """The RGB uint8 [H, W, 3] image `predict` would score, and the decode notes saying what
        was done to its pixels (empty for an RGB uint8 array; the pipeline records them as
        `decode_notes`). To see the notes of a prediction without decoding twice:
        `rgb, notes = model.decode(x); pred = model.predict(rgb)`.

        Raises ValueError (`clipsam.image_input.DecodeError`, whose `error_type` names the
        problem as the pipeline's failure rows do) naming what was wrong and what is accepted.
        """
        if isinstance(image, np.ndarray):
            return array_to_rgb(image, "array", self.pixel_limit, self.min_side)
        if isinstance(image, Image.Image):
            return pil_to_rgb(image, "PIL image", self.pixel_limit, self.min_side)
        if isinstance(image, (str, os.PathLike)) and isinstance(os.fspath(image), str):
            return self._read(os.fspath(image))
        raise DecodeError(UNSUPPORTED_INPUT, f"cannot use a {type(image).__name__} as an image; accepted: {ACCEPTED}")

    def predict_batch(self, images: Sequence[ImageInput], categories: Sequence[str | None]) -> list[Prediction]:
        """Images (any form `decode` takes, any sizes) and their categories → one Prediction each,
        in each image's own (decoded) frame."""
        if len(images) != len(categories):
            raise ValueError(f"predict_batch got {len(images)} images and {len(categories)} categories")
        rgb = [self.decode(image)[0] for image in images]
        return self.stage2(rgb, self.stage1(rgb, categories))

    def predict(self, image: ImageInput, category: str | None = None) -> Prediction:
        """One image (a path or URL, a PIL image or a numpy array; see `decode`) → Prediction in
        the decoded image's frame (EXIF orientation applied)."""
        return self.predict_batch([image], [category])[0]

    def _read(self, url: str) -> tuple[np.ndarray, list[str]]:
        if self.image_reader is None:
            raise ValueError(f"cannot read {url!r}: this ClipSAM has no image_reader (model_store.load_clipsam "
                             "installs one); pass a PIL image or a numpy array, or set "
                             "image_reader=inputs.read_image")
        try:
            return self.image_reader(url, self.pixel_limit, self.min_side)
        except DecodeError as err:
            if err.error_type in _SIZE_OR_RANGE:
                raise
            raise DecodeError(err.error_type, f"{err.message}; a path or URL must name a readable image file "
                                              "(PNG, JPEG, BMP, TIFF, ...)") from None
