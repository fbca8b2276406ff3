"""The model store's side of UMCI training: a trainable stage 1 from a profile, and publishing.

Training needs a profile's frozen CLIP, tokenizer and method config but, unlike inference, not
necessarily its UMCI weights: a freshly staged real profile has none yet (`stage` publishes only
CLIP and SAM). So `training_mapper` loads CLIP through the same verified path as inference and
builds UMCI either fresh (seeded) or from the store.

Publishing writes a new manifest for the output profile: the base profile's CLIP and SAM files
(copied when the output is another profile; unchanged when it replaces the base's UMCI), the new
UMCI file, the method config with the training input size, and the training's provenance. The
UMCI file is named after its content (`umci_<sha256[:16]>.safetensors`), so a reader holding the old
manifest never meets a file that changed under it.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from clipsam.backbones import build_clip, clip_tokenizer
from clipsam.config import ClipSAMConfig
from clipsam.checkpoint import save_state
from clipsam.stage1 import RoughMapper
from clipsam.umci import UMCI

from .errors import MissingWeightFileError
from .loading import load_weights
from .manifest import Manifest
from .store import ModelStore, sha256_file

LOG = logging.getLogger(__name__)
INITS = ("fresh", "profile")


def training_mapper(url: str, base: Manifest, device: str, init: str = "fresh", seed: int = 0) -> RoughMapper:
    """Stage 1 of the profile `base` describes, ready to train: verified frozen CLIP + UMCI.

    init "fresh": UMCI built after `torch.manual_seed(seed)` (the same seed, the same start);
    "profile": UMCI loaded from the store (MissingWeightFileError when the profile has none).
    The manifest is passed in (not re-read) so training uses exactly the files validated and
    recorded in its provenance.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    store, config = ModelStore(url), ClipSAMConfig.from_dict(base.clipsam_config)
    clip = load_weights(lambda: build_clip(base.clip_config), store, base, "clip")
    if init == "profile":
        umci = load_weights(UMCI(config.umci), store, base, "umci")
    else:
        torch.manual_seed(seed)
        umci = UMCI(config.umci)
    LOG.info("loaded CLIP of profile %s from %s (UMCI: %s) on %s", base.profile, url, init, device)
    return RoughMapper(clip, clip_tokenizer(base.clip_config), umci, config, device=device)


def require_umci(manifest: Manifest, store_url: str) -> None:
    """Fail early (before any data is read) when `--init profile` has nothing to start from."""
    if "umci" not in manifest.files:
        raise MissingWeightFileError(
            f"profile {manifest.profile!r} at {ModelStore(store_url).url(manifest.profile)} has no UMCI weights "
            "to start from; use init 'fresh'"
        )


def save_umci(umci: torch.nn.Module, directory: Path) -> Path:
    """Save UMCI's weights as `umci_<sha256[:16]>.safetensors` in `directory` (named after its content)."""
    saved = save_state(umci, directory / "umci.safetensors")
    path = directory / f"umci_{sha256_file(saved)[:16]}.safetensors"
    os.replace(saved, path)
    return path


def publish_trained_umci(url: str, base: Manifest, out_profile: str, umci: torch.nn.Module, image_size: int,
                         provenance: Mapping[str, Any]) -> Manifest:
    """Publish `umci` as profile `out_profile` of the store at `url` (see the module doc).

    The method config keeps every setting of the base profile except `clip.input_size`, which
    becomes the size UMCI was trained at (the maps it learnt are tied to that token grid).
    """
    store = ModelStore(url)
    base_config = ClipSAMConfig.from_dict(base.clipsam_config)
    if image_size != base_config.clip.input_size:
        LOG.warning("profile %s will run CLIP at %d px, the size UMCI was trained at (base %s: %d px)",
                    out_profile, image_size, base.profile, base_config.clip.input_size)
    config = base_config.replace(clip={"input_size": image_size})
    manifest = Manifest(
        profile=out_profile,
        clip_config=base.clip_config,
        sam_config=base.sam_config,
        clipsam_config=config.to_dict(),
        files={role: entry for role, entry in base.files.items() if role != "umci"},
        provenance=dict(provenance),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {"umci": save_umci(umci, Path(tmp))}
        if out_profile != base.profile:
            # Another profile folder: the frozen backbones are copied next to the new UMCI, from
            # the verified local cache, under their original names.
            for role in ("clip", "sam"):
                if role in base.files:
                    link = Path(tmp) / base.files[role].name
                    link.symlink_to(store.fetch(base, role))
                    files[role] = link
        published = store.publish(manifest, files)
    LOG.info("published profile %s to %s", out_profile, store.url(out_profile, "manifest.json"))
    return published


def base_summary(url: str, base: Manifest) -> dict[str, Any]:
    """What the new profile's provenance says about the profile it was trained from.

    The base's own provenance is kept one level deep (its `base_profile` entry is dropped), so
    retraining a profile again and again does not nest provenance without bound.
    """
    return {
        "name": base.profile,
        "store": url,
        "digests": base.digests(),
        "provenance": {k: v for k, v in base.provenance.items() if k != "base_profile"},
    }
