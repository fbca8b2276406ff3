"""Stage 1 of ClipSAM: frozen CLIP feature taps + trained UMCI → rough anomaly map M_clip (DESIGN §4.1-4.2).

A frame that `clipsam.tiling.plan_tiles` tiles (line-scan frames, DESIGN §13) is scored tile by
tile, in forward passes of TILE_BATCH tiles of that frame alone (so its result does not depend
on its batch-mates), and the tile maps are stitched in the frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .clip_features import ClipFeatureTap, preprocess_images
from .config import ClipSAMConfig
from .device import autocast, forward_chunks
from .prompts import TextMatrixCache
from .tiling import TilePlan, plan_tiles, resize_map, stitch
from .umci import UMCI, UMCIOutput, clip_image_score

TILE_BATCH = 16  # tiles of one frame per forward pass


@dataclass
class RoughResult:
    """Stage-1 output for one image.

    rough_map: float32 in [0, 1]: [S, S] at the CLIP input size S for a frame scored whole
        (`upsample_map` brings it to the image frame), [H, W] in the image frame for a tiled one.
        float32, not float16: a trained map ranks most pixels below float16's smallest value,
        and the evaluation reads that order (`clipsam.metrics`).
    clip_image_score: softmax(s · CLS · Tᵀ)[abnormal]; for a tiled frame the max over its tiles
        (a defect shows in the tile that holds it; the others average it away).
    stage1_ms: this image's share of its batch's wall time, in milliseconds.
    tile_plan: the tiles, or None when the frame was scored whole.
    """

    rough_map: np.ndarray
    clip_image_score: float
    stage1_ms: float
    tile_plan: TilePlan | None = None


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

    def tile_plan(self, frame: tuple[int, int]) -> TilePlan | None:
        """How a frame (H, W) is tiled under this mapper's `config.tile`; None: scored whole."""
        grid = self.tap.grid[0]
        return plan_tiles(frame, self.config.tile, self.config.clip.input_size, grid,
                          self.config.clip.input_size // grid)

    def _maps(self, images: Sequence[np.ndarray], categories: Sequence[str | None], chunks: Iterable[Sequence[int]]
              ) -> Iterator[tuple[np.ndarray, float]]:
        """(map float32 [S, S], CLIP image score) per image, one forward pass per chunk of indices."""
        for chunk in chunks:
            batch = preprocess_images([images[i] for i in chunk], self.config.clip).to(self.device)
            with autocast(self.device):
                output, cls, text = self._forward(batch, [categories[i] for i in chunk])
                scores = clip_image_score(cls, text, self.config.umci.logit_scale)
            yield from zip(output.rough_map.float().cpu().numpy(), scores.float().cpu().numpy().tolist())

    def _tiled(self, image: np.ndarray, category: str | None, plan: TilePlan) -> tuple[np.ndarray, float]:
        """A tiled frame → (stitched map float32 [H, W], max tile score)."""
        crops = [image[top:bottom, left:right] for top, left, bottom, right in plan.windows()]
        chunks = (range(i, min(i + TILE_BATCH, len(crops))) for i in range(0, len(crops), TILE_BATCH))
        scores: list[float] = []

        def maps() -> Iterator[np.ndarray]:
            for tile_map, score in self._maps(crops, [category] * len(crops), chunks):
                scores.append(score)
                yield tile_map

        stitched = stitch(plan, maps())
        return stitched, max(scores)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], categories: Sequence[str | None]) -> list[RoughResult]:
        """RGB uint8 images [H, W, 3] (any sizes) and their categories → one RoughResult each."""
        if not images:
            return []
        start = time.perf_counter()
        self.umci.eval()
        plans = [self.tile_plan(image.shape[:2]) for image in images]
        whole = [i for i, plan in enumerate(plans) if plan is None]
        results: dict[int, tuple[np.ndarray, float]] = dict(
            zip(whole, self._maps(images, categories, forward_chunks(whole, self.device))))
        for i, plan in enumerate(plans):
            if plan is not None:
                results[i] = self._tiled(images[i], categories[i], plan)
        per_image_ms = (time.perf_counter() - start) * 1000.0 / len(images)
        return [RoughResult(*results[i], per_image_ms, plans[i]) for i in range(len(images))]


def upsample_map(rough_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map [h, w] in [0, 1] → float32 [H, W] = `size` in the image frame (bilinear, clipped to
    [0, 1]); a map that already has that size is returned as it is (as float32)."""
    if tuple(rough_map.shape) == tuple(size):
        return np.asarray(rough_map, dtype=np.float32)
    return np.clip(resize_map(rough_map, size), 0.0, 1.0, dtype=np.float32)
