"""ClipSAM as two stages and one notebook-friendly facade.

- `RoughMapper` (stage 1): CLIP feature taps + UMCI → rough map M_clip and the CLIP image score.
- `MaskRefiner` (stage 2): MMR prompts from M_clip → SAM (only for prompted images) → final map.
- `ClipSAM`: both, with `predict(image, category)` for one image.

The Beam pipeline runs the two stages in separate model handlers (each worker loads only what
its stage needs); the facade is for notebooks and tests. Every array crossing these APIs is
numpy on the CPU, in the original image frame unless stated otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from .clip_features import ClipFeatureTap, preprocess_images
from .config import ClipSAMConfig, MMRConfig
from .device import autocast, forward_chunks
from .mmr import ComponentPrompt, extract_prompts, fuse_with_rough, image_score
from .prompts import TextMatrixCache
from .sam_refiner import SamEmbedding, SamRefiner, upsample_map
from .umci import UMCI, clip_image_score


@dataclass
class RoughResult:
    """Stage-1 output for one image.

    rough_map: float32 [S, S] in [0, 1] at the CLIP input size S (`upsample_map` brings it to the
        image frame). Not float16: a trained map ranks most pixels below float16's smallest
        value (6e-8), and the evaluation reads that order (`clipsam.metrics`).
    clip_image_score: softmax(s · CLS · Tᵀ)[abnormal].
    """

    rough_map: np.ndarray
    clip_image_score: float
    stage1_ms: float


@dataclass
class Prediction:
    """Everything ClipSAM says about one image (H, W = the image's own size).

    rough_map: float32 [H, W], M_clip in [0, 1].
    final_map: float32 [H, W], M after fusion with SAM (equals rough_map when SAM was not used).
    mask: bool [H, W], final_map ≥ mask threshold.
    prompts: one per connected component (boxes and points in (x, y) pixel coordinates).
    sam_scores: float32 [N, 3] SAM predicted IoU per component and mask level.
    image_score: max (or top-k mean) of final_map; max_pixel_score: max of rough_map.
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
        """float32 [N, 4] (x0, y0, x1, y1)."""
        return np.stack([p.box for p in self.prompts]) if self.prompts else np.zeros((0, 4), np.float32)

    @property
    def points(self) -> list[np.ndarray]:
        """Per component, float32 [P, 2] (x, y) positive points."""
        return [p.points for p in self.prompts]


class RoughMapper:
    """Stage 1: frozen CLIP taps + trained UMCI. Text matrices are cached per category."""

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

    def forward_maps(self, batch: torch.Tensor, categories: Sequence[str | None]):
        """Differentiable path used by training: normalised images [B, 3, S, S] → UMCIOutput, CLS."""
        with torch.no_grad():
            features = self.tap(batch)
        text = self.text.stack(categories)
        size = (self.config.clip.input_size, self.config.clip.input_size)
        return self.umci(features.patch_tokens, text, size), features.image_embedding, text

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], categories: Sequence[str | None]) -> list[RoughResult]:
        """RGB uint8 images (any sizes) and their categories → one RoughResult each."""
        if not images:
            return []
        start = time.perf_counter()
        self.umci.eval()
        maps, scores = [], []
        for chunk in forward_chunks(list(zip(images, categories)), self.device):
            batch = preprocess_images([image for image, _ in chunk], self.config.clip).to(self.device)
            with autocast(self.device):
                output, cls, text = self.forward_maps(batch, [category for _, category in chunk])
                chunk_scores = clip_image_score(cls, text, self.config.umci.logit_scale)
            maps.extend(output.rough_map.float().cpu().numpy())
            scores.extend(chunk_scores.float().cpu().numpy().tolist())
        per_image_ms = (time.perf_counter() - start) * 1000.0 / len(images)
        return [RoughResult(m, float(s), per_image_ms) for m, s in zip(maps, scores)]


class MaskRefiner:
    """Stage 2: MMR. SAM's image encoder runs only for images whose rough map has a component."""

    def __init__(self, sam: Sam, config: MMRConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.sam = SamRefiner(sam, device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], rough: Sequence[RoughResult]) -> list[Prediction]:
        """Refine a batch: one encoder pass over the prompted images, one decoder call per image."""
        start = time.perf_counter()
        full_maps = [upsample_map(r.rough_map, img.shape[:2]) for img, r in zip(images, rough)]
        prompts = [extract_prompts(m, self.config) for m in full_maps]
        prompted = [i for i, p in enumerate(prompts) if p]
        with autocast(self.sam.device):
            embeddings = dict(zip(prompted, self.sam.embed([images[i] for i in prompted])))
            sam_outputs = {
                i: self.sam.decode(embeddings[i], prompts[i], self.dense_prompts(embeddings[i], full_maps[i], prompts[i]))
                for i in prompted
            }
        per_image_ms = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
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
        return predictions

    def dense_prompts(self, embedding: SamEmbedding, rough_map: np.ndarray,
                      prompts: list[ComponentPrompt]) -> np.ndarray | None:
        """The components' dense mask prompts when the profile asks for them (`MMRConfig.mask_prompt`)."""
        if not self.config.mask_prompt:
            return None
        return self.sam.mask_inputs(embedding, rough_map, prompts, self.config)


@dataclass
class ClipSAM:
    """Both stages together: the API a notebook user calls.

    >>> model = ClipSAM.from_store("/path/to/store", "tiny")
    >>> pred = model.predict(rgb_uint8_image, "bottle")
    >>> pred.final_map.shape == rgb_uint8_image.shape[:2]
    True
    """

    rough_mapper: RoughMapper
    refiner: MaskRefiner
    digests: dict[str, str] = field(default_factory=dict)  # model file sha256s, for provenance
    profile: str = ""

    @classmethod
    def from_store(cls, url: str, profile: str = "tiny", device: str | None = None) -> "ClipSAM":
        """Load a profile from a model store (local dir or any fsspec URL).

        Delegates to `model_store`, which owns I/O; imported here lazily so `clipsam` itself
        stays free of storage code.
        """
        from model_store.loading import load_clipsam

        return load_clipsam(url, profile, device=device)

    def predict_batch(self, images: Sequence[np.ndarray], categories: Sequence[str | None]) -> list[Prediction]:
        return self.refiner(images, self.rough_mapper(images, categories))

    def predict(self, image: np.ndarray, category: str | None = None) -> Prediction:
        """One RGB uint8 image [H, W, 3] → Prediction in the image's own frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"predict takes an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        return self.predict_batch([image], [category])[0]
