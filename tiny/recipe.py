"""What the offline `tiny` profile is trained on and for how long: the recipe, and its data sets.

All data comes from the seeded synthetic generator (`tiny.synthetic`). TRAIN categories and
made-up categories of the TRAIN kinds feed CLIP pretraining, UMCI and SAM; the TEST categories,
and the kinds only they have, are never seen by a build step, so `benchmarks/synthetic_accuracy.py`
measures zero-shot transfer on them; `validation_categories` are made-up categories that no build
step uses either, for choosing MMR settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipsam.train import TrainConfig

from . import synthetic
from .clip_pretraining import ClipPretrainConfig, paste_anomaly, recolour
from .sam_training import SamTrainConfig, augment_pair

SAM_CHECK_CATEGORIES = 40  # made-up categories no training step saw, for the trained SAM's check


@dataclass(frozen=True)
class TinyRecipe:
    """What make-tiny trains on and for how long (recorded in the manifest's provenance).

    image_size: side (px) of every synthetic image.
    train_normal / train_anomalous: images per synthetic TRAIN category that CLIP and SAM see.
    umci_normal / umci_anomalous: images per TRAIN category that UMCI trains on, from their own
        stream (split "tiny-umci"), so that none of them is an image CLIP was pretrained on.
    umci_recoloured_copies: recoloured copies of each UMCI image (`recoloured_copies`).
    extra_categories / extra_normal / extra_anomalous: made-up categories (kinds of the TRAIN
        categories only) and images per category that CLIP pretraining and SAM training also
        see; UMCI never does, so SAM trains on stage-1 maps of categories UMCI does not know.
    paste_p: share of the made-up normal images that CLIP pretraining sees with a pasted
        anomaly (`clip_pretraining.paste_anomaly`, donor: a random image of the pretraining set).
    threads: torch threads during the build (results depend on it; 2 matches CI machines).
    clip / sam / umci: the three trainers' configs.
    Why these values: docs/decisions.md, "Tiny recipe".
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
    rotated/flipped copies of every sample, mask moved with the image, category kept, so that
    UMCI learns a defect as "unlike its surroundings" rather than as a TRAIN palette."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        for sample in samples:
            image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float().div_(255.0)
            image = (recolour(image, rng, invert_p=0.0).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            image, mask = augment_pair(image, np.asarray(sample.mask), rng=rng)
            out.append(dataclasses.replace(sample, image=image, mask=mask))
    return out
