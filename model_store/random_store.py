"""`make-random`: a store of seeded random weights at a real profile's exact shapes.

For benchmarks (load time, memory, throughput at the real sizes), plumbing tests and a cluster
smoke test before real weights are staged. The modules are built by the same factories as a
real profile (`build_clip`, `build_sam`, `UMCI`) with their own initialisation after
`torch.manual_seed`, saved as `.safetensors` like every store file, and the manifest says
`provenance.random = true`: scores from such a store mean nothing, and `pipeline.run` says so
in its log, its summary, every record (`random_weights`) and report.html.
"""
from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from clipsam.backbones import build_clip, build_sam
from clipsam.checkpoint import save_state
from clipsam.umci import UMCI

from .manifest import Manifest
from .profiles import get_profile
from .store import ModelStore

LOG = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def is_random(manifest: Manifest) -> bool:
    """Whether a manifest describes random weights (written by `make-random`)."""
    return manifest.provenance.get("random") is True


def _cast(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in module.state_dict().items()}


def make_random(out_url: str, profile_name: str, seed: int = 0, dtype: str = "fp32",
                provenance: dict[str, Any] | None = None) -> Manifest:
    """Write profile `profile_name` with seeded random weights into the store at `out_url`.

    CLIP, SAM and UMCI are built one at a time after `torch.manual_seed(seed)`, `seed + 1`,
    `seed + 2` and saved as `<role>_random.safetensors`; `dtype` "fp16" stores floating tensors
    in half precision (loaders cast them back to the module's dtype). The manifest's provenance
    holds `random: true`, the seed and the dtype. ValueError for an unknown dtype,
    UnknownProfileError for an unknown profile.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    profile = get_profile(profile_name)
    clip_config = profile.clip_config()
    builders: dict[str, Callable[[], nn.Module]] = {
        "clip": lambda: build_clip(clip_config),
        "sam": lambda: build_sam(profile.sam_config),
        "umci": lambda: UMCI(profile.clipsam_config.umci),
    }
    manifest = Manifest(
        profile=profile.name,
        clip_config=clip_config,
        sam_config=dict(profile.sam_config),
        clipsam_config=profile.clipsam_config.to_dict(),
        provenance={"created_by": "model_store make-random", "random": True, "seed": seed, "dtype": dtype,
                    "note": "seeded random weights at the profile's shapes: scores mean nothing",
                    **(provenance or {})},
    )
    store = ModelStore(out_url)
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        for offset, (role, build) in enumerate(builders.items()):
            start = time.perf_counter()
            torch.manual_seed(seed + offset)
            module = build()
            files[role] = save_state(_cast(module, DTYPES[dtype]), Path(tmp) / f"{role}_random.safetensors")
            del module
            gc.collect()
            LOG.info("random %s of %s: %.1f MB in %.1fs", role, profile.name,
                     files[role].stat().st_size / 1e6, time.perf_counter() - start)
        published = store.publish(manifest, files)
    LOG.warning("profile %s at %s holds RANDOM weights (seed %d): for benchmarks and plumbing only",
                profile.name, store.url(profile.name), seed)
    return published
