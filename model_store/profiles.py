"""The profile registry: named model combinations, like segment_anything's `sam_model_registry`.

A profile says which CLIP architecture and weights, which SAM, and which ClipSAM settings go
together. Real profiles point at public weights that `stage` downloads; `tiny` is built offline
by `make-tiny`, which trains small configs of the same open_clip / segment_anything classes on
seeded synthetic defects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from clipsam.backbones import open_clip_config
from clipsam.config import ClipSAMConfig, ClipTapConfig, MMRConfig, TileConfig, UMCIConfig

from .errors import UnknownProfileError

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    "quick_gelu": False,
}
TINY_SAM_CONFIG: dict[str, Any] = {
    "variant": "custom",
    "image_size": 256,
    "patch_size": 16,
    "encoder_embed_dim": 96,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 8,
    "prompt_embed_dim": 64,
    "decoder_mlp_dim": 256,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 64,
}


@dataclass(frozen=True)
class Profile:
    """A named combination of CLIP, SAM and ClipSAM settings.

    clip_arch / clip_pretrained: open_clip architecture name and pretrained tag that `stage`
        downloads (None for `tiny`, which make-tiny builds).
    """

    name: str
    description: str
    clip_config: Callable[[], dict[str, Any]]
    sam_config: dict[str, Any]
    clipsam_config: ClipSAMConfig
    clip_arch: str | None = None
    clip_pretrained: str | None = None
    sam_checkpoint_url: str | None = None


PROFILES: dict[str, Profile] = {
    "clipsam-vitl-sam-h": Profile(
        name="clipsam-vitl-sam-h",
        description="The paper's setting: open_clip ViT-L-14-336 (openai) at 518 px, layers 6/12/18/24, SAM ViT-H.",
        clip_config=lambda: open_clip_config("ViT-L-14-336", quick_gelu=True),
        sam_config={"variant": "vit_h"},
        clipsam_config=ClipSAMConfig(
            clip=ClipTapConfig(input_size=518, layers=(6, 12, 18, 24)),
            umci=UMCIConfig(vision_width=1024, text_dim=768, num_layers=4),
            tile=TileConfig(patch_pixels=14, auto_factor=4.0),  # tiles frames longer than 2072 px
        ),
        clip_arch="ViT-L-14-336",
        clip_pretrained="openai",
        sam_checkpoint_url=SAM_CHECKPOINT_URLS["vit_h"],
    ),
    "clipsam-vitb-sam-b": Profile(
        name="clipsam-vitb-sam-b",
        description="Cheaper: open_clip ViT-B-16 (openai) at 512 px, layers 3/6/9/12, SAM ViT-B.",
        clip_config=lambda: open_clip_config("ViT-B-16", quick_gelu=True),
        sam_config={"variant": "vit_b"},
        clipsam_config=ClipSAMConfig(
            clip=ClipTapConfig(input_size=512, layers=(3, 6, 9, 12)),
            umci=UMCIConfig(vision_width=768, text_dim=512, num_layers=4),
            tile=TileConfig(patch_pixels=16, auto_factor=4.0),  # tiles frames longer than 2048 px
        ),
        clip_arch="ViT-B-16",
        clip_pretrained="openai",
        sam_checkpoint_url=SAM_CHECKPOINT_URLS["vit_b"],
    ),
    "tiny": Profile(
        name="tiny",
        description=(
            "Small real open_clip CLIP (4 blocks, width 128) run at 256 px and a small real SAM "
            "(depth 2, width 96, 256 px), trained offline by make-tiny on seeded synthetic defects "
            "(benchmarks/synthetic_accuracy.py measures it on held-out synthetic categories)."
        ),
        clip_config=lambda: dict(TINY_CLIP_CONFIG),
        sam_config=TINY_SAM_CONFIG,
        clipsam_config=ClipSAMConfig(
            clip=ClipTapConfig(input_size=256, layers=(1, 2, 3, 4)),
            umci=UMCIConfig(vision_width=128, text_dim=64, num_layers=4, attn_dim=64),
            # The tiny SAM is trained with dense mask prompts (tiny.sam_training); τ and α were
            # chosen on the validation split (`tiny.recipe.validation_categories`), see
            # docs/decisions.md, "MMR settings".
            mmr=MMRConfig(mask_prompt=True, prompt_threshold=0.1, alpha=0.3),
            # 128-px tiles shown at 256 px (a patch covers 8 source pixels), so 8-30 px defects
            # look like the tiny models' training defects; frames longer than 2048 px are tiled
            # (docs/decisions.md, "Tiling").
            tile=TileConfig(patch_pixels=8, auto_factor=8.0),
        ),
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}") from None
