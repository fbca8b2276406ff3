"""ClipSAM, both stages behind one notebook-friendly call.

- stage 1 (`stage1.RoughMapper`): CLIP feature taps + UMCI → rough map M_clip and the CLIP image score;
- stage 2 (`stage2.MMRRefiner`): MMR prompts from M_clip → SAM (prompted images only) → final map.

The Beam pipeline runs the two stages in separate model handlers (a worker loads only what its
stage needs); this facade is for notebooks and tests. Every array crossing these APIs is numpy on
the CPU, in the original image frame unless stated otherwise. Loading from a model store is
`model_store.load_clipsam`'s business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .stage1 import RoughMapper
from .stage2 import MMRRefiner, Prediction


@dataclass
class ClipSAM:
    """Both stages together.

    >>> model, manifest = model_store.load_clipsam("/path/to/store", "tiny")
    >>> pred = model.predict(rgb_uint8_image, "bottle")
    >>> pred.final_map.shape == rgb_uint8_image.shape[:2]
    True
    """

    stage1: RoughMapper
    stage2: MMRRefiner

    def predict_batch(self, images: Sequence[np.ndarray], categories: Sequence[str | None]) -> list[Prediction]:
        """RGB uint8 images [H, W, 3] (any sizes) and their categories → one Prediction each."""
        return self.stage2(images, self.stage1(images, categories))

    def predict(self, image: np.ndarray, category: str | None = None) -> Prediction:
        """One RGB uint8 image [H, W, 3] → Prediction in the image's own frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"predict takes an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        return self.predict_batch([image], [category])[0]
