"""UMCI: Unified Multi-scale Cross-modal Interaction (DESIGN §4.2), the only trained part.

Per tapped CLIP layer l, patch tokens X_l [B, h, w, C_v] are projected to the text space
(V = Linear_l(X_l), [B, h, w, D]) and made to interact with the category's text matrix T [B, 2, D]
along two paths:

- strip path: row means R [B, h, D] and column means C [B, w, D] form h + w strip tokens S;
  text reads the strips (T' = T + Attn(T, S)), strips read the updated text
  (S' = S + Attn(S, T')); U[i, j] = R'[i] + C'[j]; V_strip = V + U;
- scale path: for each window k, P_k = AvgPool_k(V) (stride 1, same size); the same two-step
  interaction with the h·w tokens of P_k; V_scale = mean over k;

then V̂ = LayerNorm(V_strip + V_scale) and A_l = softmax over {normal, abnormal} of the logits
s · norm(V̂) · norm(T)ᵀ, bilinearly upsampled to the image size first. The rough map is the mean
over layers of A_l's abnormal channel. [decision] The strip and the scale path each own one
interaction block per layer; the scale path shares its block across window sizes. [decision]
Upsampling the logits (not the probabilities) lets training read log-probabilities directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import UMCIConfig


class CrossAttention(nn.Module):
    """Single-head attention of `queries` [B, Nq, D] over `context` [B, Nc, D], width d."""

    def __init__(self, dim: int, attn_dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, attn_dim)
        self.k = nn.Linear(dim, attn_dim)
        self.v = nn.Linear(dim, attn_dim)
        self.out = nn.Linear(attn_dim, dim)
        self.scale = attn_dim**-0.5

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(queries) @ self.k(context).transpose(1, 2) * self.scale, dim=-1)
        return self.out(weights @ self.v(context))


class TwoStepInteraction(nn.Module):
    """Text reads the visual tokens, then the visual tokens read the updated text."""

    def __init__(self, dim: int, attn_dim: int) -> None:
        super().__init__()
        self.text_reads_tokens = CrossAttention(dim, attn_dim)
        self.tokens_read_text = CrossAttention(dim, attn_dim)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D], text [B, 2, D] → updated tokens [B, N, D]."""
        text = text + self.text_reads_tokens(text, tokens)
        return tokens + self.tokens_read_text(tokens, text)


class UMCILayer(nn.Module):
    """Projection, strip path, scale path and fusion for one tapped CLIP layer."""

    def __init__(self, config: UMCIConfig) -> None:
        super().__init__()
        self.project = nn.Linear(config.vision_width, config.text_dim)
        self.strip = TwoStepInteraction(config.text_dim, config.attn_dim)
        self.scale = TwoStepInteraction(config.text_dim, config.attn_dim)
        self.norm = nn.LayerNorm(config.text_dim)
        self.scales = tuple(config.scales)

    def strip_path(self, v: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, h, w, d = v.shape
        strips = torch.cat([v.mean(dim=2), v.mean(dim=1)], dim=1)  # [B, h + w, D]
        strips = self.strip(strips, text)
        rows, cols = strips[:, :h], strips[:, h:]
        return v + rows[:, :, None, :] + cols[:, None, :, :]

    def scale_path(self, v: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, h, w, d = v.shape
        channels_first = v.permute(0, 3, 1, 2)
        outputs = []
        for k in self.scales:
            pooled = channels_first if k == 1 else F.avg_pool2d(
                channels_first, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False
            )
            tokens = pooled.permute(0, 2, 3, 1).reshape(b, h * w, d)
            outputs.append(self.scale(tokens, text).reshape(b, h, w, d))
        return torch.stack(outputs, dim=0).mean(dim=0)

    def forward(self, patch_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """patch_tokens [B, h, w, C_v], text [B, 2, D] → fused features V̂ [B, h, w, D]."""
        v = self.project(patch_tokens)
        return self.norm(self.strip_path(v, text) + self.scale_path(v, text))


@dataclass
class UMCIOutput:
    """UMCI results for a batch.

    layer_log_probs: per tapped layer, [B, 2, H, W] log-softmax over {normal, abnormal} at output
        size (what the training loss reads: in log space it has a gradient even where the
        softmax has saturated).
    rough_map: [B, H, W] in [0, 1], mean over layers of the abnormal channel (M_clip).
    """

    layer_log_probs: list[torch.Tensor]
    rough_map: torch.Tensor

    @property
    def layer_probs(self) -> list[torch.Tensor]:
        """The per-layer maps A_l, [B, 2, H, W] each (computed on request, from the log-probabilities)."""
        return [lp.exp() for lp in self.layer_log_probs]


class UMCI(nn.Module):
    """UMCI over all tapped layers; output maps are bilinearly upsampled to `output_size`."""

    def __init__(self, config: UMCIConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(UMCILayer(config) for _ in range(config.num_layers))

    def forward(
        self, patch_tokens: list[torch.Tensor], text: torch.Tensor, output_size: tuple[int, int]
    ) -> UMCIOutput:
        """patch_tokens: num_layers tensors [B, h, w, C_v]; text: [B, 2, D] or [2, D]."""
        if len(patch_tokens) != len(self.layers):
            raise ValueError(f"UMCI expects {len(self.layers)} tapped layers, got {len(patch_tokens)}")
        batch = patch_tokens[0].shape[0]
        if text.dim() == 2:
            text = text.expand(batch, -1, -1)
        text = F.normalize(text.to(patch_tokens[0].dtype), dim=-1)
        layer_log_probs = []
        for layer, tokens in zip(self.layers, patch_tokens):
            fused = F.normalize(layer(tokens, text), dim=-1)  # [B, h, w, D]
            logits = self.config.logit_scale * torch.einsum("bhwd,bkd->bkhw", fused, text)
            upsampled = F.interpolate(logits.float(), size=output_size, mode="bilinear", align_corners=False)
            layer_log_probs.append(torch.log_softmax(upsampled, dim=1))
        rough = torch.stack([lp[:, 1].exp() for lp in layer_log_probs], dim=0).mean(dim=0)
        return UMCIOutput(layer_log_probs=layer_log_probs, rough_map=rough)


def clip_image_score(image_embedding: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Stage-1 image score: softmax(s · CLS · Tᵀ)[abnormal]; image_embedding [B, D], text [B, 2, D]."""
    text = F.normalize(text.float(), dim=-1)
    logits = logit_scale * torch.einsum("bd,bkd->bk", F.normalize(image_embedding.float(), dim=-1), text)
    return torch.softmax(logits, dim=-1)[:, 1]
