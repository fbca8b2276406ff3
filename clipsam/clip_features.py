"""CLIP image features for dense anomaly maps: patch tokens of chosen blocks plus the CLS token.

open_clip's ViT runs at its native size only; ClipSAM analyses the whole image at a larger size
(518 for ViT-L/14-336, a 37×37 grid), so the position embedding is interpolated to the new grid.
This module walks the transformer blocks itself to tap intermediate tokens; it never changes
the CLIP weights (CLIP stays frozen in ClipSAM).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipTapConfig


@dataclass
class ClipFeatures:
    """What stage 1 takes from CLIP for a batch of B images.

    patch_tokens: one tensor per tapped layer, each [B, h, w, C_v] (C_v = vision width).
    image_embedding: [B, D] projected, L2-normalised CLS embedding (D = joint embedding width).
    """

    patch_tokens: list[torch.Tensor]
    image_embedding: torch.Tensor


def interpolate_position_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a [1 + g·g, C] ViT position embedding to a new (gh, gw) grid (bicubic, CLS kept)."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    old = int(round(patch_pos.shape[0] ** 0.5))
    if (old, old) == tuple(grid):
        return pos
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


class ClipFeatureTap(nn.Module):
    """Runs an open_clip `CLIP` vision tower at `config.input_size` and taps `config.layers`.

    Input: images [B, 3, S, S] float, already normalised with CLIP's mean/std, S = input_size.
    """

    def __init__(self, clip_model: nn.Module, config: ClipTapConfig) -> None:
        super().__init__()
        self.visual = clip_model.visual
        self.config = config
        depth = len(self.visual.transformer.resblocks)
        bad = [layer for layer in config.layers if not 1 <= layer <= depth]
        if bad:
            raise ValueError(f"tapped layers {bad} outside 1..{depth} for this CLIP vision tower")
        patch = self.visual.conv1.kernel_size[0]
        if config.input_size % patch:
            raise ValueError(f"input_size {config.input_size} is not a multiple of the patch size {patch}")
        self.grid = (config.input_size // patch, config.input_size // patch)
        self._pos_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _position_embedding(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._pos_cache:
            pos = interpolate_position_embedding(self.visual.positional_embedding.detach(), self.grid)
            self._pos_cache[key] = pos.to(device=like.device, dtype=like.dtype)
        return self._pos_cache[key]

    def forward(self, images: torch.Tensor) -> ClipFeatures:
        visual = self.visual
        x = visual.conv1(images)  # [B, C, gh, gw]
        batch = x.shape[0]
        x = x.flatten(2).transpose(1, 2)  # [B, gh·gw, C]
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self._position_embedding(x)
        x = visual.ln_pre(x)

        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        wanted = set(self.config.layers)
        taps: dict[int, torch.Tensor] = {}
        for index, block in enumerate(transformer.resblocks, start=1):
            x = block(x)
            if index in wanted:
                taps[index] = x if batch_first else x.transpose(0, 1)
        if not batch_first:
            x = x.transpose(0, 1)

        gh, gw = self.grid
        patch_tokens = []
        for layer in self.config.layers:
            tokens = taps[layer][:, 1:, :]
            if self.config.tap_layernorm:
                tokens = visual.ln_post(tokens)
            patch_tokens.append(tokens.reshape(batch, gh, gw, -1))

        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ClipFeatures(patch_tokens=patch_tokens, image_embedding=F.normalize(pooled.float(), dim=-1))


def preprocess_images(images: list[np.ndarray], config: ClipTapConfig) -> torch.Tensor:
    """RGB uint8 images of any sizes → CLIP input [B, 3, S, S] float32 (whole image, no crop).

    The whole frame is resized (not centre-cropped): a defect at the border of a line-camera
    image must stay visible. Bicubic with antialias, like CLIP's own preprocessing.
    """
    size = config.input_size
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    batch = []
    for image in images:
        t = torch.tensor(image).permute(2, 0, 1).float().div_(255.0)
        t = F.interpolate(t[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
        batch.append((t.clamp_(0.0, 1.0) - mean) / std)
    return torch.stack(batch, dim=0)
