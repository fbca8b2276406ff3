"""Frozen backbones described by data: an open_clip `CLIP` and a segment_anything `Sam`.

Following open_clip, a model is a JSON-able config built by one factory; the model store keeps
the config in its manifest and the weights beside it. Only construction lives here (no weights,
no I/O), so the same code builds ViT-L/14-336 + SAM ViT-H for production and the seeded `tiny`
configs for tests and demos.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def open_clip_config(model_name: str, *, quick_gelu: bool = False) -> dict[str, Any]:
    """open_clip's own JSON config of a named architecture (e.g. "ViT-L-14-336").

    OpenAI-trained weights need QuickGELU, which open_clip applies when loading the "openai" tag.
    """
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"open_clip has no architecture named {model_name!r}")
    return {**config, "quick_gelu": quick_gelu}


def build_clip(config: Mapping[str, Any]) -> CLIP:
    """An open_clip `CLIP` from a config dict: {embed_dim, vision_cfg, text_cfg, quick_gelu?}."""
    allowed = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
    return CLIP(**{k: v for k, v in config.items() if k in allowed}).eval()


def clip_tokenizer(config: Mapping[str, Any]) -> Callable[[list[str]], torch.Tensor]:
    """CLIP's BPE tokenizer (ships with open_clip, no download) at the model's context length."""
    return SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))


def build_sam(config: Mapping[str, Any]) -> Sam:
    """A segment_anything `Sam` from a config dict.

    {"variant": "vit_h" | "vit_l" | "vit_b"} uses segment_anything's own registry (real sizes).
    {"variant": "custom", ...} builds the same classes at a chosen size (the `tiny` profile):
    keys image_size, patch_size, encoder_embed_dim, encoder_depth, encoder_num_heads,
    encoder_global_attn_indexes, window_size, prompt_embed_dim, decoder_mlp_dim, decoder_num_heads,
    iou_head_hidden_dim.
    """
    variant = config.get("variant")
    if variant in ("vit_h", "vit_l", "vit_b"):
        return sam_model_registry[variant](checkpoint=None).eval()
    if variant != "custom":
        raise ValueError(f"unknown SAM variant {variant!r}: use vit_h, vit_l, vit_b or custom")
    image_size = config["image_size"]
    embed_dim = config["prompt_embed_dim"]
    grid = image_size // config["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=config["patch_size"],
            embed_dim=config["encoder_embed_dim"],
            depth=config["encoder_depth"],
            num_heads=config["encoder_num_heads"],
            mlp_ratio=4,
            out_chans=embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config["window_size"],
            global_attn_indexes=tuple(config["encoder_global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=embed_dim,
                mlp_dim=config["decoder_mlp_dim"],
                num_heads=config["decoder_num_heads"],
            ),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
