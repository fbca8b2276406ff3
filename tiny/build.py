"""`make-tiny`: the small, seeded, offline profile that tests and the demo run on.

Pretrained CLIP and SAM weights cannot be downloaded where this project is developed and
tested, so the `tiny` profile uses the real open_clip `CLIP` and segment_anything `Sam` classes
at small sizes and trains them here, on seeded synthetic industrial images
(`tiny.synthetic`), in a few CPU minutes:

1. CLIP: image-level captions + a dense auxiliary term (`tiny.clip_pretraining`), on the
   synthetic TRAIN categories plus made-up categories of the same kinds (never a TEST category,
   never a kind that only TEST categories have); then frozen.
2. UMCI: the ClipSAM loss on the frozen CLIP (`clipsam.train`), on other images of the TRAIN
   categories only (and recoloured copies of them).
3. SAM: its image encoder first learns to segment defects and blobs from the image alone
   (`sam_training.pretrain_encoder`), then the whole SAM learns prompted segmentation
   (`sam_training.train_sam`) on CLIP's images, with the prompts MMR sends: drawn ones and
   MMR's own from the stage-1 maps of step 2.

The TEST categories stay unseen by every step, so `benchmarks/synthetic_accuracy.py` measures
zero-shot transfer. Every step is seeded and runs with deterministic torch kernels on a fixed
number of threads, so a seed gives byte-identical weight files on a given machine; a built store
is cached under `$CLIPSAM_CACHE/tiny-builds/<key>`, the key hashing the seed, the recipe and the
source of every module that shapes the weights, so a rebuild after any such change retrains and
an unchanged one is a copy. `trained=False` keeps the old seconds-long build of random weights
for work on the plumbing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import open_clip
import torch
from torch import nn

from clipsam.backbones import build_clip, build_sam, clip_tokenizer
from clipsam.checkpoint import save_state
from clipsam.config import ClipSAMConfig
from clipsam.stage1 import RoughMapper
from clipsam.train import train_umci
from clipsam.umci import UMCI
from model_store.manifest import Manifest
from model_store.profiles import get_profile
from model_store.store import ModelStore, _file_lock, cache_dir

from . import synthetic
from .clip_pretraining import pretrain_clip
from .recipe import (SAM_CHECK_CATEGORIES, TinyRecipe, made_up_categories, recoloured_copies, synthetic_samples,
                     with_pasted_anomalies)
from .sam_training import mmr_prompt_iou, pretrain_encoder, train_sam

LOG = logging.getLogger(__name__)
TINY = "tiny"
REPO = Path(__file__).resolve().parents[1]
# Sources whose code decides the trained weights (or the loss history recorded with them), relative
# to the checkout: a change to any of them invalidates cached builds.
WEIGHT_SOURCES = tuple(
    [f"clipsam/{name}.py" for name in ("backbones", "checkpoint", "clip_features", "config", "device", "mmr",
                                       "prompts", "stage1", "train", "umci")]
    + [f"tiny/{name}.py" for name in ("build", "clip_pretraining", "loss_log", "recipe", "sam_training", "synthetic")]
    + ["model_store/profiles.py"]
)


# ------------------------------------------------------------------------------- modules


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


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels on a fixed thread count for the duration of a build, then restored."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


# ------------------------------------------------------------------------------ training


def train_tiny(seed: int, recipe: TinyRecipe, log: Callable[[str], None] = LOG.info
               ) -> tuple[nn.Module, nn.Module, UMCI, dict[str, Any]]:
    """Pretrain CLIP, train UMCI, train SAM (module docstring); returns the modules and the
    provenance facts of the training."""
    profile = get_profile(TINY)
    config: ClipSAMConfig = profile.clipsam_config
    clip, sam, umci = seeded_modules(seed)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    train = synthetic_samples(list(synthetic.TRAIN_CATEGORIES), recipe.train_normal, recipe.train_anomalous,
                              recipe.image_size, seed, "tiny-train")
    extra = synthetic_samples(made_up_categories(recipe.extra_categories), recipe.extra_normal,
                              recipe.extra_anomalous, recipe.image_size, seed, "tiny-pretrain")
    umci_train = synthetic_samples(list(synthetic.TRAIN_CATEGORIES), recipe.umci_normal, recipe.umci_anomalous,
                                   recipe.image_size, seed, "tiny-umci")
    umci_train += recoloured_copies(umci_train, recipe.umci_recoloured_copies, seed)
    seconds["data"] = time.perf_counter() - start
    log(f"generated {len(train)} TRAIN-category, {len(extra)} made-up-category and {len(umci_train)} UMCI images")

    start = time.perf_counter()
    tokenizer = clip_tokenizer(profile.clip_config())
    clip_losses = pretrain_clip(clip, tokenizer, with_pasted_anomalies(train, extra, recipe.paste_p, seed),
                                dataclasses.replace(recipe.clip, seed=seed), log)
    seconds["clip"] = time.perf_counter() - start

    start = time.perf_counter()
    umci_config = dataclasses.replace(recipe.umci, seed=seed, image_size=config.clip.input_size)
    mapper = RoughMapper(clip, tokenizer, umci, config)
    umci_losses = train_umci(mapper, umci_train, umci_config)
    seconds["umci"] = time.perf_counter() - start

    start = time.perf_counter()
    sam_config = dataclasses.replace(recipe.sam, seed=seed)
    encoder_losses = pretrain_encoder(sam, train + extra, sam_config, log)
    sam_losses = train_sam(sam, train + extra, sam_config, config.mmr,
                           stage1_maps(mapper, train + extra), log)
    held_out = synthetic_samples(made_up_categories(recipe.extra_categories + SAM_CHECK_CATEGORIES)[recipe.extra_categories:],
                                 0, 2, recipe.image_size, seed, "tiny-sam-check")
    sam_check = mmr_prompt_iou(sam, held_out, stage1_maps(mapper, held_out), config.mmr)
    seconds["sam"] = time.perf_counter() - start
    log(f"tiny SAM on {sam_check['components']} MMR prompts of unseen made-up categories: defect IoU in the box "
        f"{sam_check['rough']:.3f} (rough map) -> {sam_check['sam']:.3f} (SAM, best of 3)")

    facts = {
        "trained": True,
        "recipe": recipe.to_dict(),
        "data": {
            "generator": "tiny.synthetic",
            "umci_categories": list(synthetic.TRAIN_CATEGORIES),
            "pretraining_extra_categories": recipe.extra_categories,
            "held_out_categories": list(synthetic.TEST_CATEGORIES),
        },
        "clip_pretraining": {"config": recipe.clip.to_dict(), "loss_history": clip_losses},
        "umci_training": {"config": umci_config.to_dict(), "epoch_losses": umci_losses,
                          "categories": list(synthetic.TRAIN_CATEGORIES), "images": len(umci_train)},
        "sam_training": {"config": recipe.sam.to_dict(), "encoder_pretraining_loss_history": encoder_losses,
                         "loss_history": sam_losses,
                         "mmr_prompt_iou_unseen_made_up_categories": sam_check},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "threads": recipe.threads,
    }
    return clip, sam, umci, facts


def stage1_maps(mapper: RoughMapper, samples: list, batch: int = 16) -> list[np.ndarray]:
    """The stage-1 rough map of every sample (float32 at the CLIP input size)."""
    maps = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        maps += [r.rough_map for r in mapper([s.image for s in chunk], [s.category for s in chunk])]
    return maps


# ------------------------------------------------------------------------------- publish


def build_key(seed: int, trained: bool, recipe: TinyRecipe) -> str:
    """Content address of a build: seed, recipe, library versions and the weight-shaping sources."""
    sources = {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest() for name in WEIGHT_SOURCES}
    key = {
        "seed": seed, "trained": trained, "recipe": recipe.to_dict() if trained else None, "sources": sources,
        "torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def default_build_cache() -> Path:
    return cache_dir() / "tiny-builds"


# The default build (seed 0, trained, default recipe) ships inside the package as a store root, with
# the key it was built under: a checkout whose key matches copies it instead of training for minutes.
SHIPPED = REPO / "tiny" / "shipped"
SHIPPED_KEY = SHIPPED / "build-key.txt"


def shipped_key() -> str | None:
    """The build key of the shipped store, None when the package ships none."""
    try:
        return SHIPPED_KEY.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def ship(build_cache: Path | None = None) -> str:
    """Refresh the shipped store from the checkout's default build (trained here when no cached
    build has its key); returns the key. `python -m model_store ship-tiny` runs it."""
    recipe = TinyRecipe()
    source = _cached_build(0, True, recipe, build_cache or default_build_cache(), {}, use_shipped=False)
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(source, SHIPPED, ignore=shutil.ignore_patterns("*.lock", ".*"))
    key = build_key(0, True, recipe)
    SHIPPED_KEY.write_text(key + "\n", encoding="utf-8")
    return key


def _build(root: str, seed: int, trained: bool, recipe: TinyRecipe, provenance: dict[str, Any]) -> Manifest:
    """Build the profile and publish it into the store at `root`."""
    profile = get_profile(TINY)
    start = time.perf_counter()
    with deterministic_torch(recipe.threads):
        if trained:
            clip, sam, umci, facts = train_tiny(seed, recipe)
        else:
            (clip, sam, umci), facts = seeded_modules(seed), {"trained": False}
    facts["build_seconds"] = round(time.perf_counter() - start, 1)
    manifest = Manifest(
        profile=TINY,
        clip_config=profile.clip_config(),
        sam_config=dict(profile.sam_config),
        clipsam_config=profile.clipsam_config.to_dict(),
        provenance={"created_by": "model_store make-tiny", "seed": seed, **facts, **provenance},
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "clip": save_state(clip, Path(tmp) / "clip_tiny.safetensors"),
            "sam": save_state(sam, Path(tmp) / "sam_tiny.safetensors"),
            "umci": save_state(umci, Path(tmp) / "umci_tiny.safetensors"),
        }
        return ModelStore(root).publish(manifest, files)


def _cached_build(seed: int, trained: bool, recipe: TinyRecipe, build_cache: Path,
                  provenance: dict[str, Any], use_shipped: bool = True) -> Path:
    """Local store root holding the build for (seed, recipe, sources): the shipped store when its
    key matches (and `use_shipped`), else the cached build, built once under a lock."""
    key = build_key(seed, trained, recipe)
    if use_shipped and key == shipped_key() and not provenance:
        return SHIPPED
    target = build_cache / key
    if (target / TINY / "manifest.json").exists():
        return target
    build_cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if not (target / TINY / "manifest.json").exists():
            LOG.info("no cached tiny build for this seed, recipe and code (%s): training it, "
                     "8-10 min on 2 cores", target)
            scratch = Path(tempfile.mkdtemp(dir=build_cache, prefix=f".{target.name}."))
            try:
                _build(str(scratch), seed, trained, recipe, provenance)
                os.replace(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return target


def make_tiny(out_url: str, seed: int = 0, provenance: dict[str, Any] | None = None, *, trained: bool = True,
              recipe: TinyRecipe | None = None, build_cache: Path | None = None, use_cache: bool = True) -> Manifest:
    """Build the tiny profile (trained unless `trained=False`) and publish it under `<out_url>/tiny/`.

    With `use_cache`, the build is taken from (or first stored in) `build_cache` (default
    `$CLIPSAM_CACHE/tiny-builds`) and copied into `out_url`.
    """
    recipe = recipe or TinyRecipe()
    provenance = dict(provenance or {})
    if not use_cache:
        manifest = _build(out_url, seed, trained, recipe, provenance)
    else:
        cached = _cached_build(seed, trained, recipe, build_cache or default_build_cache(), provenance)
        source = ModelStore(str(cached)).read_manifest(TINY)
        files = {role: cached / TINY / entry.name for role, entry in source.files.items()}
        manifest = ModelStore(out_url).publish(source, files)
    total = sum(entry.size for entry in manifest.files.values())
    LOG.info("tiny profile written to %s (%.1f MB)", ModelStore(out_url).url(TINY), total / 1e6)
    return manifest
