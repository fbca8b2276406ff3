"""Stage 2 of ClipSAM, MMR (DESIGN §4.3): prompts from the rough map → SAM → fusion with the rough map.

Reads one way: `mmr.extract_prompts` (and, where the profile asks, `mmr.mask_prompt_logits`) →
`SamAdapter.embed` / `decode` / `level_probabilities` → `mmr.union_of_components` and
`mmr.fuse_with_rough`. SAM's image encoder runs only for images whose rough map has a
component; each image costs one decoder call.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam

from .config import MMRConfig
from .device import autocast
from .mmr import (ComponentPrompt, cells_in_boxes, extract_prompts, fuse_with_rough, image_score, mask_prompt_logits,
                  pack_prompts, union_of_components)
from .sam_adapter import SamAdapter, SamEmbedding
from .stage1 import RoughResult, upsample_map

LOG = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Everything ClipSAM says about one image (H, W = the image's own size).

    rough_map: float32 [H, W], M_clip in [0, 1].
    final_map: float32 [H, W], M after fusion with SAM (equals rough_map when SAM was not used).
    mask: bool [H, W], final_map ≥ mask threshold.
    prompts: one per connected component (boxes and points in (x, y) pixel coordinates).
    sam_scores: float32 [N, 3] SAM predicted IoU per component and mask level.
    image_score: max (or top-k mean) of final_map; max_pixel_score: max of rough_map.
    stage1_ms, stage2_ms: this image's share of its batches' wall time per stage, in milliseconds.
    """

    rough_map: np.ndarray
    final_map: np.ndarray
    mask: np.ndarray
    prompts: list[ComponentPrompt]
    sam_scores: np.ndarray
    image_score: float
    clip_image_score: float
    max_pixel_score: float
    mask_threshold: float
    sam_used: bool
    stage1_ms: float = 0.0
    stage2_ms: float = 0.0

    @property
    def boxes(self) -> np.ndarray:
        """float32 [N, 4] (x0, y0, x1, y1): the SAM box prompts."""
        return np.stack([p.box for p in self.prompts]) if self.prompts else np.zeros((0, 4), np.float32)

    @property
    def points(self) -> list[np.ndarray]:
        """Per component, float32 [P, 2] (x, y): the SAM point prompts."""
        return [p.points for p in self.prompts]


class MMRRefiner:
    """Stage 2: MMR with one SAM model; call it on a batch of images and their stage-1 results."""

    def __init__(self, sam: Sam, config: MMRConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.sam = SamAdapter(sam, device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], rough: Sequence[RoughResult]) -> list[Prediction]:
        """RGB uint8 images [H, W, 3] and their RoughResults → one Prediction each, in the image frame.
        One encoder pass over the prompted images, one decoder call per prompted image."""
        start = time.perf_counter()
        calls = (self.sam.encoder_calls, self.sam.decoder_calls)
        split = dict.fromkeys(("prompts", "encoder", "decoder", "union", "fusion"), 0.0)
        full_maps = [upsample_map(r.rough_map, img.shape[:2]) for img, r in zip(images, rough)]
        prompts = [extract_prompts(m, self.config) for m in full_maps]
        prompted = [i for i, p in enumerate(prompts) if p]
        sam_outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        split["prompts"] = time.perf_counter() - start
        with autocast(self.sam.device):
            embeddings = self.sam.embed([images[i] for i in prompted])
            split["encoder"] = time.perf_counter() - start - split["prompts"]
            for i, embedding in zip(prompted, embeddings):
                sam_outputs[i] = self.sam_map(embedding, full_maps[i], prompts[i], split=split)
        per_image_ms = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
        fusion_start = time.perf_counter()
        threshold = self.config.effective_mask_threshold
        predictions = []
        for i, (full, result) in enumerate(zip(full_maps, rough)):
            sam_map, scores = sam_outputs.get(i, (None, np.zeros((0, 3), np.float32)))
            final = fuse_with_rough(full, sam_map, self.config.alpha)
            predictions.append(
                Prediction(
                    rough_map=full,
                    final_map=final,
                    mask=final >= threshold,
                    prompts=prompts[i],
                    sam_scores=scores,
                    image_score=image_score(final, self.config),
                    clip_image_score=result.clip_image_score,
                    max_pixel_score=float(full.max()),
                    mask_threshold=threshold,
                    sam_used=sam_map is not None,
                    stage1_ms=result.stage1_ms,
                    stage2_ms=per_image_ms,
                )
            )
        split["fusion"] = time.perf_counter() - fusion_start
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("stage 2 on %d images (%d prompted, %d components): %d encoder passes, %d decoder calls; "
                      "seconds: %s", len(images), len(prompted), sum(len(p) for p in prompts),
                      self.sam.encoder_calls - calls[0], self.sam.decoder_calls - calls[1],
                      ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
        return predictions

    def sam_map(self, embedding: SamEmbedding, rough_map: np.ndarray, prompts: list[ComponentPrompt],
                split: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One image's components through SAM in one decoder call → (M_sam float32 [H, W] in [0, 1],
        SAM's predicted IoU float32 [N, 3]). rough_map: float [H, W] in the image frame. `split`:
        seconds spent are added to its "decoder" (prompts + decoder) and "union" (upsampling the
        masks and their union) entries."""
        start = time.perf_counter()
        boxes, points, labels = pack_prompts(prompts)
        masks = self.sam.decode(embedding, boxes, points, labels, self.dense_prompts(embedding, rough_map, prompts))
        decoded = time.perf_counter()
        union = union_of_components(self.sam.level_probabilities(masks), embedding.original_size)
        if split is not None:
            split["decoder"] += decoded - start
            split["union"] += time.perf_counter() - decoded
        return union, masks.scores

    def dense_prompts(self, embedding: SamEmbedding, rough_map: np.ndarray,
                      prompts: list[ComponentPrompt]) -> np.ndarray | None:
        """float32 [N, m, m]: each component's dense mask prompt (the rough map inside its box, as
        logits; `mmr.mask_prompt_logits`) when the profile asks for them (`MMRConfig.mask_prompt`), else None."""
        if not self.config.mask_prompt:
            return None
        values = self.sam.to_mask_frame(rough_map, embedding)
        boxes = self.sam.boxes_to_mask_frame(np.stack([p.box for p in prompts]), embedding)
        return mask_prompt_logits(values[None], cells_in_boxes(boxes, 1.0, self.sam.mask_input_size), self.config)
