"""`make-tiny`: the small, seeded, offline profile that tests and the demo run on.

Pretrained CLIP and SAM weights cannot be downloaded where this project is developed and
tested, so the `tiny` profile uses the real open_clip `CLIP` and segment_anything `Sam` classes
at small sizes and trains them here, on seeded synthetic industrial images
(`clipsam.synthetic`), in a few CPU minutes:

1. CLIP: image-level captions + a dense auxiliary term (`clipsam.clip_pretraining`), on the
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import open_clip
import torch
from torch import nn

import clipsam
from clipsam import synthetic
from clipsam.backbones import build_clip, build_sam, clip_tokenizer
from clipsam.clip_pretraining import ClipPretrainConfig, paste_anomaly, pretrain_clip, recolour
from clipsam.config import ClipSAMConfig
from clipsam.model import RoughMapper
from clipsam.sam_training import SamTrainConfig, augment_pair, mmr_prompt_iou, pretrain_encoder, train_sam
from clipsam.train import TrainConfig, train_umci
from clipsam.umci import UMCI

from .manifest import Manifest
from .profiles import get_profile
from .store import ModelStore, _file_lock, cache_dir

LOG = logging.getLogger(__name__)
TINY = "tiny"
SAM_CHECK_CATEGORIES = 40  # made-up categories no training step saw, for the trained SAM's check
# Sources whose code decides the trained weights (or the loss history recorded with them): a change
# to any of them invalidates cached builds.
WEIGHT_SOURCES = (
    "backbones.py", "clip_features.py", "clip_pretraining.py", "config.py", "device.py", "loss_log.py", "mmr.py",
    "model.py", "prompts.py", "sam_training.py", "synthetic.py", "train.py", "umci.py",
)


@dataclass(frozen=True)
class TinyRecipe:
    """What make-tiny trains on and for how long (recorded in the manifest's provenance).

    train_*: images per synthetic TRAIN category that CLIP and SAM see.
    umci_*: images per TRAIN category that UMCI trains on, drawn from their own stream (split
        "tiny-umci"), so none of them is an image CLIP was pretrained on: CLIP's patch tokens
        of its own pretraining images carry what its dense head memorised, and UMCI reads
        them too easily (measured: pixel AUROC +0.02 on the held-out categories);
        umci_recoloured_copies: recoloured copies of each (`recoloured_copies`). UMCI runs on
        cached CLIP tokens, so more images cost it little.
    extra_*: made-up categories (kinds of the TRAIN categories only) and images per category,
        used to pretrain CLIP and SAM on more palettes; UMCI never sees them, so SAM trains on
        the stage-1 maps (and false alarms) of categories UMCI does not know.
    paste_p: share of the made-up normal images that CLIP pretraining sees with a pasted
        anomaly (`clip_pretraining.paste_anomaly`, donor: a random image of the pretraining set).
    threads: torch threads during the build (results depend on it; 2 matches CI machines).
    """

    image_size: int = 256
    train_normal: int = 12
    train_anomalous: int = 28
    umci_normal: int = 20
    umci_anomalous: int = 60
    umci_recoloured_copies: int = 1
    extra_categories: int = 60
    extra_normal: int = 4
    extra_anomalous: int = 4
    paste_p: float = 0.7
    threads: int = 2
    clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    sam: SamTrainConfig = field(default_factory=SamTrainConfig)
    umci: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, image_size=256))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def save_state(module: nn.Module, path: Path) -> Path:
    """Save a state dict of contiguous CPU tensors (loadable with weights_only=True)."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)
    return path


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


# ---------------------------------------------------------------------------------- data


def made_up_categories(count: int) -> list[str]:
    """`count` made-up category names whose (hash-derived) kind is a kind of a TRAIN category.

    `synthetic.get_category` turns any unknown name into a stable kind and palette; filtering on
    kind keeps the kinds that only TEST categories have (granular, capsule) out of training.
    """
    kinds = {synthetic.get_category(c).kind for c in synthetic.TRAIN_CATEGORIES}
    names, index = [], 0
    while len(names) < count:
        name = f"made up part {index}"
        if synthetic.get_category(name).kind in kinds:
            names.append(name)
        index += 1
    return names


def validation_categories(count: int = 32) -> list[str]:
    """`count` made-up categories that neither training nor the SAM check of the build uses: a
    split for choosing MMR settings (τ, α, box padding) without looking at the TEST categories."""
    skip = TinyRecipe().extra_categories + SAM_CHECK_CATEGORIES
    return made_up_categories(skip + count)[skip:]


def synthetic_samples(categories: list[str], normal: int, anomalous: int, size: int, seed: int,
                      split: str) -> list[synthetic.SyntheticSample]:
    """`normal` + `anomalous` seeded images of each category (independent streams per split)."""
    samples = []
    for category in categories:
        samples += [synthetic.generate_image(category, seed=seed, index=i, anomalous=False, size=size,
                                             split=f"{split}/good") for i in range(normal)]
        samples += [synthetic.generate_image(category, seed=seed, index=i, anomalous=True, size=size,
                                             split=f"{split}/defect") for i in range(anomalous)]
    return samples


def with_pasted_anomalies(train: list, extra: list, paste_p: float, seed: int) -> list:
    """CLIP's pretraining set: `train` + `extra`, each normal `extra` image replaced with
    probability `paste_p` by a copy with a pasted anomaly."""
    rng = np.random.default_rng(seed)
    pool = train + extra
    out = list(train)
    for sample in extra:
        if not np.asarray(sample.mask).any() and rng.random() < paste_p:
            sample = paste_anomaly(sample, pool[int(rng.integers(len(pool)))].image, rng)
        out.append(sample)
    return out


def recoloured_copies(samples: list, copies: int, seed: int) -> list:
    """`copies` recoloured (channel order, per-channel gain: `clip_pretraining.recolour`) and
    rotated/flipped copies of every sample, mask moved with the image, category kept: UMCI
    then learns a defect as "unlike its surroundings" rather than as a TRAIN palette (measured on
    the held-out categories, one copy: pixel AUROC +0.02)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        for sample in samples:
            image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float().div_(255.0)
            image = (recolour(image, rng, invert_p=0.0).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            image, mask = augment_pair(image, np.asarray(sample.mask), rng=rng)
            out.append(dataclasses.replace(sample, image=image, mask=mask))
    return out


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
            "generator": "clipsam.synthetic",
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
    package = Path(clipsam.__file__).parent
    sources = {name: hashlib.sha256((package / name).read_bytes()).hexdigest() for name in WEIGHT_SOURCES}
    sources["model_store/tiny.py"] = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    sources["model_store/profiles.py"] = hashlib.sha256(Path(__file__).with_name("profiles.py").read_bytes()).hexdigest()
    key = {
        "seed": seed, "trained": trained, "recipe": recipe.to_dict() if trained else None, "sources": sources,
        "torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def default_build_cache() -> Path:
    return cache_dir() / "tiny-builds"


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
            "clip": save_state(clip, Path(tmp) / "clip_tiny.pt"),
            "sam": save_state(sam, Path(tmp) / "sam_tiny.pt"),
            "umci": save_state(umci, Path(tmp) / "umci_tiny.pt"),
        }
        return ModelStore(root).publish(manifest, files)


def _cached_build(seed: int, trained: bool, recipe: TinyRecipe, build_cache: Path,
                  provenance: dict[str, Any]) -> Path:
    """Local store root holding the build for (seed, recipe, sources); built once, under a lock."""
    target = build_cache / build_key(seed, trained, recipe)
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
