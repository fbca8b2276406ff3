"""`make-tiny`: the small, seeded, offline profile that tests and the demo run on.

Pretrained CLIP and SAM weights cannot be downloaded where this project is developed and
tested, so the `tiny` profile uses the real open_clip `CLIP` and segment_anything `Sam` classes
at small sizes, seeded so every build is byte-identical. It shows the mechanics of the
pipeline (and, once trained on synthetic defects, that the method works), not accuracy on
real parts.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipsam.backbones import build_clip, build_sam
from clipsam.umci import UMCI

from .manifest import Manifest
from .profiles import get_profile
from .store import ModelStore

LOG = logging.getLogger(__name__)
TINY = "tiny"


def seeded_modules(seed: int) -> tuple[nn.Module, nn.Module, UMCI]:
    """Tiny CLIP, SAM and UMCI with deterministic random initialisation."""
    profile = get_profile(TINY)
    torch.manual_seed(seed)
    clip = build_clip(profile.clip_config())
    torch.manual_seed(seed + 1)
    sam = build_sam(profile.sam_config)
    torch.manual_seed(seed + 2)
    umci = UMCI(profile.clipsam_config.umci)
    return clip, sam, umci


def save_state(module: nn.Module, path: Path) -> Path:
    """Save a state dict of contiguous CPU tensors (loadable with weights_only=True)."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)
    return path


def make_tiny(out_url: str, seed: int = 0, provenance: dict[str, Any] | None = None) -> Manifest:
    """Build the tiny profile and publish it under `<out_url>/tiny/`."""
    profile = get_profile(TINY)
    clip, sam, umci = seeded_modules(seed)
    manifest = Manifest(
        profile=TINY,
        clip_config=profile.clip_config(),
        sam_config=dict(profile.sam_config),
        clipsam_config=profile.clipsam_config.to_dict(),
        provenance={"created_by": "model_store make-tiny", "seed": seed, **(provenance or {})},
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "clip": save_state(clip, Path(tmp) / "clip_tiny.pt"),
            "sam": save_state(sam, Path(tmp) / "sam_tiny.pt"),
            "umci": save_state(umci, Path(tmp) / "umci_tiny.pt"),
        }
        manifest = ModelStore(out_url).publish(manifest, files)
    total = sum(entry.size for entry in manifest.files.values())
    LOG.info("tiny profile written to %s (%.1f MB)", ModelStore(out_url).url(TINY), total / 1e6)
    return manifest
