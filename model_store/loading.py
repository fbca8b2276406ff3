"""Turning a store's files into modules: manifest → configs → open_clip / SAM / UMCI + weights.

Every loader returns the model together with the manifest it was built from (digests, profile,
provenance), so the caller can record where its results came from; `clipsam` itself knows
nothing of stores.

Weights are read with `torch.load(..., weights_only=True)`: a model store is remote data, and
unpickling arbitrary objects from it would be code execution. Each stage loads only what it
needs (stage 1 never loads SAM, stage 2 never loads CLIP).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipsam.backbones import build_clip, build_sam, clip_tokenizer
from clipsam.config import ClipSAMConfig
from clipsam.model import ClipSAM
from clipsam.stage1 import RoughMapper
from clipsam.stage2 import MMRRefiner
from clipsam.umci import UMCI

from .errors import CorruptCheckpointError
from .manifest import Manifest
from .store import ModelStore

LOG = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_state_dict(path: Path, url: str) -> dict[str, torch.Tensor]:
    """A verified weight file → state dict, or CorruptCheckpointError naming the store URL."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many unrelated types on garbage input
        raise CorruptCheckpointError(f"cannot read checkpoint {url}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"checkpoint {url} is not a state dict of tensors")
    return state


def load_weights(module: nn.Module, store: ModelStore, manifest: Manifest, role: str) -> nn.Module:
    """Fetch, verify and load one role's weights into an already-built module (strict)."""
    url = store.url(manifest.profile, manifest.files[role].name) if role in manifest.files else store.url(manifest.profile)
    state = read_state_dict(store.fetch(manifest, role), url)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptCheckpointError(f"checkpoint {url} does not match the {role} config in the manifest: {exc}") from exc
    return module


def open_profile(url: str, profile: str, overrides: dict[str, Any] | None = None
                 ) -> tuple[ModelStore, Manifest, ClipSAMConfig]:
    """The store at `url`, the profile's manifest, and its method config with `overrides`
    ({section: {field: value}}, see `ClipSAMConfig.replace`) applied."""
    store = ModelStore(url)
    manifest = store.read_manifest(profile)
    config = ClipSAMConfig.from_dict(manifest.clipsam_config)
    return store, manifest, config.replace(**overrides) if overrides else config


def load_stage1(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None
                ) -> tuple[RoughMapper, Manifest]:
    """Stage 1 (CLIP + UMCI) of a profile, weights verified and loaded, and its manifest."""
    store, manifest, config = open_profile(url, profile, overrides)
    device = device or default_device()
    clip = load_weights(build_clip(manifest.clip_config), store, manifest, "clip")
    umci = load_weights(UMCI(config.umci), store, manifest, "umci")
    LOG.info("loaded stage 1 of profile %s from %s on %s", profile, url, device)
    return RoughMapper(clip, clip_tokenizer(manifest.clip_config), umci, config, device=device), manifest


def load_stage2(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None
                ) -> tuple[MMRRefiner, Manifest]:
    """Stage 2 (SAM + MMR) of a profile, weights verified and loaded, and its manifest."""
    store, manifest, config = open_profile(url, profile, overrides)
    device = device or default_device()
    sam = load_weights(build_sam(manifest.sam_config), store, manifest, "sam")
    LOG.info("loaded stage 2 of profile %s from %s on %s", profile, url, device)
    return MMRRefiner(sam, config.mmr, device=device), manifest


def load_clipsam(url: str, profile: str = "tiny", device: str | None = None, *,
                 overrides: dict[str, Any] | None = None) -> tuple[ClipSAM, Manifest]:
    """Both stages of a profile, and its manifest: `model, manifest = load_clipsam(url, "tiny")`."""
    stage1, manifest = load_stage1(url, profile, device, overrides=overrides)
    stage2, _ = load_stage2(url, profile, device, overrides=overrides)
    return ClipSAM(stage1, stage2), manifest
