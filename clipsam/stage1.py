"""Stage 1 of ClipSAM: frozen CLIP feature taps + trained UMCI → rough anomaly map M_clip (DESIGN §4.1-4.2)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .clip_features import ClipFeatureTap, preprocess_images
from .config import ClipSAMConfig
from .device import autocast, forward_chunks
from .prompts import TextMatrixCache
from .umci import UMCI, UMCIOutput, clip_image_score


@dataclass
class RoughResult:
    """Stage-1 output for one image.

    rough_map: float32 [S, S] in [0, 1] at the CLIP input size S (`upsample_map` brings it to the
        image frame). float32, not float16: a trained map ranks most pixels below float16's
        smallest value, and the evaluation reads that order (`clipsam.metrics`).
    clip_image_score: softmax(s · CLS · Tᵀ)[abnormal].
    stage1_ms: this image's share of its batch's wall time, in milliseconds.
    """

    rough_map: np.ndarray
    clip_image_score: float
    stage1_ms: float


class RoughMapper:
    """Stage 1: frozen CLIP taps + UMCI. Text matrices are computed once per category and cached."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        umci: UMCI,
        config: ClipSAMConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.config = config
        self.clip = clip_model.eval().to(self.device)
        self.clip.requires_grad_(False)
        self.tap = ClipFeatureTap(self.clip, config.clip)
        self.umci = umci.to(self.device)
        self.text = TextMatrixCache(self.clip.encode_text, tokenizer, self.device)

    def _forward(self, batch: torch.Tensor, categories: Sequence[str | None]
                 ) -> tuple[UMCIOutput, torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, S, S] → (UMCIOutput, CLS embeddings [B, D], text matrices [B, 2, D])."""
        with torch.no_grad():
            features = self.tap(batch)
        text = self.text.stack(categories)
        size = (self.config.clip.input_size, self.config.clip.input_size)
        return self.umci(features.patch_tokens, text, size), features.image_embedding, text

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], categories: Sequence[str | None]) -> list[RoughResult]:
        """RGB uint8 images [H, W, 3] (any sizes) and their categories → one RoughResult each."""
        if not images:
            return []
        start = time.perf_counter()
        self.umci.eval()
        maps, scores = [], []
        for chunk in forward_chunks(list(zip(images, categories)), self.device):
            batch = preprocess_images([image for image, _ in chunk], self.config.clip).to(self.device)
            with autocast(self.device):
                output, cls, text = self._forward(batch, [category for _, category in chunk])
                chunk_scores = clip_image_score(cls, text, self.config.umci.logit_scale)
            maps.extend(output.rough_map.float().cpu().numpy())
            scores.extend(chunk_scores.float().cpu().numpy().tolist())
        per_image_ms = (time.perf_counter() - start) * 1000.0 / len(images)
        return [RoughResult(m, float(s), per_image_ms) for m, s in zip(maps, scores)]


def upsample_map(rough_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map [h, w] in [0, 1] → float32 [H, W] = `size` in the image frame (bilinear, clipped to [0, 1])."""
    tensor = torch.as_tensor(rough_map, dtype=torch.float32)[None, None]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0]
    return out.clamp_(0.0, 1.0).numpy()
