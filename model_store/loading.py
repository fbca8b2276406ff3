"""Turning a store's files into modules: manifest → configs → open_clip / SAM / UMCI + weights.

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
from clipsam.model import ClipSAM, MaskRefiner, RoughMapper
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


def open_profile(url: str, profile: str) -> tuple[ModelStore, Manifest, ClipSAMConfig]:
    store = ModelStore(url)
    manifest = store.read_manifest(profile)
    return store, manifest, ClipSAMConfig.from_dict(manifest.clipsam_config)


def load_rough_mapper(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None) -> RoughMapper:
    """Stage 1 (CLIP + UMCI) of a profile, weights verified and loaded."""
    store, manifest, config = open_profile(url, profile)
    if overrides:
        config = config.replace(**overrides)
    device = device or default_device()
    clip = load_weights(build_clip(manifest.clip_config), store, manifest, "clip")
    umci = load_weights(UMCI(config.umci), store, manifest, "umci")
    LOG.info("loaded stage 1 of profile %s from %s on %s", profile, url, device)
    return RoughMapper(clip, clip_tokenizer(manifest.clip_config), umci, config, device=device)


def load_refiner(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None) -> MaskRefiner:
    """Stage 2 (SAM + MMR) of a profile, weights verified and loaded."""
    store, manifest, config = open_profile(url, profile)
    if overrides:
        config = config.replace(**overrides)
    sam = load_weights(build_sam(manifest.sam_config), store, manifest, "sam")
    LOG.info("loaded stage 2 of profile %s from %s on %s", profile, url, device or default_device())
    return MaskRefiner(sam, config.mmr, device=device or default_device())


def load_clipsam(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None) -> ClipSAM:
    """Both stages: what `ClipSAM.from_store` returns."""
    manifest = ModelStore(url).read_manifest(profile)
    return ClipSAM(
        rough_mapper=load_rough_mapper(url, profile, device, overrides=overrides),
        refiner=load_refiner(url, profile, device, overrides=overrides),
        digests=manifest.digests(),
        profile=profile,
    )
