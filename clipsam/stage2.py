"""Stage 2 of ClipSAM, MMR (DESIGN §4.3): prompts from the rough map → SAM → fusion with the rough map.

Reads one way: `mmr.extract_prompts` (and, where the profile asks, `mmr.mask_prompt_logits`) →
`SamAdapter.embed` / `decode` / `level_probabilities` → `mmr.union_of_components` and
`mmr.fuse_in_windows`. SAM's image encoder runs only for images whose rough map has a
component.

SAM sees a frame scored whole as one window, the whole frame (one encoder pass and one decoder
call per prompted image). A tiled frame (DESIGN §13) gets windows of about `sam_window` source
pixels (default: SAM's input at the tiles' magnification) around its components
(`tiling.sam_windows`): one encoder pass and one decoder call per window, and M_sam exists only
inside the windows.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam

from .config import MMRConfig, TileConfig
from .device import autocast
from .mmr import (ComponentPrompt, cells_in_boxes, extract_prompts, fuse_in_windows, image_score, mask_prompt_logits,
                  pack_prompts, union_of_components)
from .sam_adapter import SamAdapter, SamEmbedding
from .stage1 import RoughResult, upsample_map
from .tiling import Window, sam_windows

WINDOW_BATCH = 16  # SAM windows embedded per call, bounding the embeddings held at once

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
    """Stage 2: MMR with one SAM model; call it on a batch of images and their stage-1 results.
    tiling: the profile's TileConfig (its `sam_window`)."""

    def __init__(self, sam: Sam, config: MMRConfig, device: torch.device | str = "cpu",
                 tiling: TileConfig | None = None) -> None:
        self.config = config
        self.sam = SamAdapter(sam, device)
        self.sam_window = tiling.sam_window if tiling else None

    def windows(self, frame: tuple[int, int], prompts: list[ComponentPrompt], rough: RoughResult
                ) -> list[tuple[Window, list[int]]]:
        """Where SAM looks in one image: (window, indices of its components) each."""
        if not prompts:
            return []
        if rough.tile_plan is None:
            return [((0, 0, *frame), list(range(len(prompts))))]
        side = self.sam_window or round(self.sam.model.image_encoder.img_size / rough.tile_plan.magnification)
        return sam_windows(np.stack([p.box for p in prompts]), frame, side)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], rough: Sequence[RoughResult],
                 frames: Sequence[tuple[int, int] | None] | None = None) -> list[Prediction]:
        """RGB uint8 images [h, w, 3] and their RoughResults → one Prediction each, in the image's
        frame: (h, w), or the (H, W) of `frames[i]` for an image that is a reduced decode of a
        larger frame (never tiled). One encoder pass and one decoder call per SAM window (per
        prompted image when untiled)."""
        start = time.perf_counter()
        calls = (self.sam.encoder_calls, self.sam.decoder_calls)
        split = dict.fromkeys(("prompts", "encoder", "decoder", "union", "fusion"), 0.0)
        shapes = [(frame or img.shape[:2]) for img, frame in zip(images, frames or [None] * len(images))]
        full_maps = [upsample_map(r.rough_map, shape) for shape, r in zip(shapes, rough)]
        prompts = [extract_prompts(m, self.config, r.tile_plan and r.tile_plan.size) for m, r in zip(full_maps, rough)]
        jobs = [(i, window, members) for i, (shape, p, r) in enumerate(zip(shapes, prompts, rough))
                for window, members in self.windows(shape, p, r)]
        sam_parts: dict[int, list[tuple[Window, np.ndarray]]] = {}
        sam_scores = [np.zeros((len(p), 3), np.float32) for p in prompts]
        split["prompts"] = time.perf_counter() - start
        with autocast(self.sam.device):
            for first in range(0, len(jobs), WINDOW_BATCH):
                chunk = jobs[first : first + WINDOW_BATCH]
                encoding = time.perf_counter()
                embeddings = self.sam.embed(
                    [images[i] if rough[i].tile_plan is None else _crop(images[i], window) for i, window, _ in chunk],
                    [(window[2] - window[0], window[3] - window[1]) for _, window, _ in chunk])
                split["encoder"] += time.perf_counter() - encoding
                for (i, window, members), embedding in zip(chunk, embeddings):
                    top, left = window[:2]
                    local = [_shifted(prompts[i][m], top, left) for m in members]
                    crop_map = full_maps[i][window[0]:window[2], window[1]:window[3]]
                    sam_map, scores = self.sam_map(embedding, crop_map, local, split=split)
                    sam_parts.setdefault(i, []).append((window, sam_map))
                    sam_scores[i][members] = scores
        per_image_ms = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
        fusion_start = time.perf_counter()
        threshold = self.config.effective_mask_threshold
        predictions = []
        for i, (full, result) in enumerate(zip(full_maps, rough)):
            final = fuse_in_windows(full, sam_parts.get(i, []), self.config.alpha)
            predictions.append(
                Prediction(
                    rough_map=full,
                    final_map=final,
                    mask=final >= threshold,
                    prompts=prompts[i],
                    sam_scores=sam_scores[i],
                    image_score=image_score(final, self.config),
                    clip_image_score=result.clip_image_score,
                    max_pixel_score=float(full.max()),
                    mask_threshold=threshold,
                    sam_used=i in sam_parts,
                    stage1_ms=result.stage1_ms,
                    stage2_ms=per_image_ms,
                )
            )
        split["fusion"] = time.perf_counter() - fusion_start
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("stage 2 on %d images (%d prompted, %d components, %d windows): %d encoder passes, "
                      "%d decoder calls; seconds: %s", len(images), len(sam_parts), sum(len(p) for p in prompts),
                      len(jobs), self.sam.encoder_calls - calls[0], self.sam.decoder_calls - calls[1],
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


def _crop(image: np.ndarray, window: Window) -> np.ndarray:
    top, left, bottom, right = window
    return image[top:bottom, left:right]


def _shifted(prompt: ComponentPrompt, top: int, left: int) -> ComponentPrompt:
    """A component's prompt in the frame of a window whose top-left corner is (top, left)."""
    if top == left == 0:
        return prompt
    offset = np.array([left, top], np.float32)
    return ComponentPrompt(box=prompt.box - np.tile(offset, 2), points=prompt.points - offset,
                           labels=prompt.labels, area=prompt.area)
