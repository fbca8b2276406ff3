"""Every hyper-parameter of the method in one place (DESIGN §4).

The ClipSAM paper's body could not be read when this project started, so several values are
project decisions (marked [decision] in DESIGN.md). They live here, and only here, so a user
holding the paper can change them without touching code. Configs are plain dataclasses that
round-trip through JSON: model store manifests carry them. Why a value was chosen, and what
was measured for it, is in docs/decisions.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ClipTapConfig:
    """How CLIP is run: input size and which transformer blocks are tapped.

    `layers` are 1-based block indices (block 24 is the last block of ViT-L/14).
    `input_size` is the square side the whole image is resized to; it may differ from the
    model's native size, the position embedding is interpolated.
    """

    input_size: int = 518
    layers: tuple[int, ...] = (6, 12, 18, 24)
    # Normalise tapped tokens with CLIP's own (frozen) ln_post before UMCI's projection. [decision]
    tap_layernorm: bool = True
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class UMCIConfig:
    """Unified Multi-scale Cross-modal Interaction (DESIGN §4.2)."""

    vision_width: int = 1024  # C_v: width of the tapped CLIP tokens
    text_dim: int = 768  # D: CLIP joint embedding width
    num_layers: int = 4  # one projection + interaction block per tapped layer
    attn_dim: int = 128  # d, one head [decision]
    scales: tuple[int, ...] = (1, 3, 5)  # average-pool windows of the scale path [decision]
    logit_scale: float = 100.0


@dataclass(frozen=True)
class MMRConfig:
    """Multi-level Mask Refinement with SAM (DESIGN §4.3)."""

    prompt_threshold: float = 0.5  # tau: binarise the rough map for prompts [decision]
    min_area_fraction: float = 0.0005  # drop components under 0.05 % of the image
    box_padding: int = 4  # pixels added on each side of a component's box
    max_components: int = 32  # per image (per tile area of a tiled frame); the largest are kept
    add_centroid_point: bool = True
    # PROJECT EXTENSION for the tiny SAM, not in the paper (whose prompts are boxes and points):
    # also hand SAM each component's rough map as its dense mask prompt (SAM's `mask_input`,
    # logits in its low-resolution mask frame): mask_prompt_gain · (logit(M_clip) − logit(τ)),
    # clipped to ±mask_prompt_clamp, and −mask_prompt_clamp outside the box
    # (`mmr.mask_prompt_logits`). Off in the paper's setting (box + points only); on only for a
    # SAM trained with such prompts (the `tiny` profile).
    mask_prompt: bool = False
    mask_prompt_gain: float = 1.0
    mask_prompt_clamp: float = 12.0
    alpha: float = 0.5  # final = (1 - alpha) * rough + alpha * sam [decision]
    mask_threshold: float | None = None  # None: use prompt_threshold
    image_score: str = "max"  # "max" or "topk"
    topk_fraction: float = 0.01  # used when image_score == "topk"

    @property
    def effective_mask_threshold(self) -> float:
        return self.prompt_threshold if self.mask_threshold is None else self.mask_threshold


TILE_MODES = ("auto", "off", "on")


@dataclass(frozen=True)
class TileConfig:
    """How a large frame is shown to the models (line-scan frames, DESIGN §13).

    Untiled, stage 1 squashes the whole frame to input_size² and SAM sees it at its encoder
    size, so a defect much smaller than frame side / CLIP grid vanishes. Tiled, stage 1 cuts
    the frame into overlapping square tiles of `tile_side` source pixels, each resized to
    input_size², and stitches their maps (`clipsam.tiling`); stage 2 runs SAM on windows of
    `sam_window` source pixels around the prompted components.

    mode: "off" never tiles; "on" tiles every frame larger than one tile; "auto" tiles only
        frames whose long side exceeds auto_factor × input_size, so images of MVTec-AD size
        are scored exactly as untiled.
    patch_pixels: source pixels one CLIP patch covers in a tile, so tile_side = patch_pixels ×
        CLIP grid; None: the CLIP patch size (tiles at native resolution).
    side: tile side in source pixels; when set, it replaces patch_pixels (`--tile=<px>`).
    overlap: fraction of a tile's side shared with each neighbour, in [0, 0.9].
    auto_factor: see mode "auto".
    sam_window: side of SAM's windows in source pixels; None: SAM's encoder input size at the
        tiles' magnification (input_size / tile_side), so SAM sees a defect as large as CLIP saw
        it: native resolution for native tiles. A larger component gets a window that fits it.
    """

    mode: str = "auto"
    patch_pixels: float | None = None
    side: int | None = None
    overlap: float = 0.25
    auto_factor: float = 4.0
    sam_window: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in TILE_MODES:
            raise ValueError(f"tile mode must be one of {', '.join(TILE_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.overlap <= 0.9:
            raise ValueError(f"tile overlap must be in [0, 0.9], got {self.overlap}")


@dataclass(frozen=True)
class ClipSAMConfig:
    """The whole method's settings; a model store manifest stores one of these (manifests
    written before a section existed get that section's defaults)."""

    clip: ClipTapConfig = field(default_factory=ClipTapConfig)
    umci: UMCIConfig = field(default_factory=UMCIConfig)
    mmr: MMRConfig = field(default_factory=MMRConfig)
    tile: TileConfig = field(default_factory=TileConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClipSAMConfig":
        return cls(
            clip=_build(ClipTapConfig, data.get("clip", {})),
            umci=_build(UMCIConfig, data.get("umci", {})),
            mmr=_build(MMRConfig, data.get("mmr", {})),
            tile=_build(TileConfig, data.get("tile", {})),
        )

    def replace(self, **sections: Mapping[str, Any]) -> "ClipSAMConfig":
        """Copy with some fields of some sections changed, e.g. replace(mmr={"alpha": 0.8})."""
        parts = {name: getattr(self, name) for name in ("clip", "umci", "mmr", "tile")}
        for name, changes in sections.items():
            parts[name] = dataclasses.replace(parts[name], **dict(changes))
        return ClipSAMConfig(**parts)


def _build(kind: type, data: Mapping[str, Any]) -> Any:
    """Build a config dataclass from JSON data, turning lists back into tuples."""
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return kind(**values)
