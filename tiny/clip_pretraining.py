"""Pretraining of the tiny CLIP on labelled synthetic images (the `tiny` profile only).

ClipSAM assumes a CLIP whose image and text towers agree on what a "damaged <thing>" looks like
and whose patch tokens carry local defect evidence; a randomly initialised tiny CLIP has
neither. The pretraining has two terms, on random crops of labelled images:

1. captions (CLIP's own objective): every (category, state) pair of the batch is a class,
   state ∈ {normal, abnormal}; each class gets one caption drawn from the compositional
   ensemble ClipSAM uses at inference (`prompts.ensemble_sentences`); each crop's CLS embedding
   is classified against them (cross-entropy at a fixed temperature), plus a cross-entropy
   between the two captions of the crop's own category;
2. a dense auxiliary term: one linear head per transformer block predicts, from each patch
   token, the fraction of the patch that is defect. The heads are thrown away afterwards and
   never touch the text side, so the patch tokens carry defect evidence without being aligned
   to the text matrix T (UMCI still has to learn the read-out).

Pretraining data must come from categories disjoint from the ones a benchmark evaluates on.
CLIP is frozen afterwards, as ClipSAM requires. Why the dense term and the fixed temperature:
docs/decisions.md, "Tiny recipe".
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from scipy import ndimage
from torch import nn

from clipsam.clip_features import ClipFeatureTap
from clipsam.config import ClipTapConfig
from clipsam.device import FOREACH_STEP
from .loss_log import WindowedLoss
from clipsam.prompts import ensemble_sentences
from clipsam.train import LabelledImage

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Hyper-parameters of the pretraining (defaults: the `tiny` profile's recipe).

    steps / batch_size / lr / weight_decay / warmup_steps: AdamW, linear warm-up, then cosine
        decay to 0.
    crop_size: side (px) the crops are resized to; crops cover `crop_fraction` (min, max) of the
        image side. The position embedding is interpolated to the crop grid and not trained.
    temperature: fixed logit scale of the caption term (CLIP's initial 1/0.07), not learned.
    state_weight: weight of the cross-entropy between a crop's normal and abnormal caption.
    dense_weight: weight of the auxiliary per-patch defect-fraction term (module docstring).
    invert_p: probability of inverting a crop's colours (see `recolour`).
    seed: seed of every random choice; log_every: steps per loss-history entry and log line.
    """

    steps: int = 900
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 15
    crop_size: int = 128
    crop_fraction: tuple[float, float] = (0.4, 0.6)
    temperature: float = 14.3
    state_weight: float = 0.2
    dense_weight: float = 10.0
    invert_p: float = 0.2
    seed: int = 0
    log_every: int = 25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PastedSample:
    """A labelled image made by `paste_anomaly` (same fields as `train.LabelledImage`)."""

    image: np.ndarray
    mask: np.ndarray
    category: str


def paste_anomaly(sample: LabelledImage, donor: np.ndarray, rng: np.random.Generator) -> PastedSample:
    """A normal image with one smooth random region replaced by (a shifted copy of) another image.

    Cut-and-paste anomalies in the spirit of DRAEM / CutPaste: the region's only common property is
    "does not belong to its surroundings", so pretraining on them teaches the patch tokens a
    category-agnostic notion of a defect rather than a catalogue of the training defects. The
    region is one connected blob of a thresholded smoothed noise field (0.5 % to 6 % of the
    image), blended in with opacity 0.6-1.
    """
    image = np.asarray(sample.image)
    if donor.shape != image.shape:
        raise ValueError(f"donor image {donor.shape} must have the image's shape {image.shape}")
    height, width = image.shape[:2]
    noise = ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=rng.uniform(4, 16))
    region = noise > np.quantile(noise, 1.0 - 3.0 * rng.uniform(0.005, 0.06))
    labels, count = ndimage.label(region)
    mask = labels == int(rng.integers(1, count + 1)) if count else region
    source = np.roll(donor, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1)).astype(np.float32)
    opacity = rng.uniform(0.6, 1.0)
    out = image.astype(np.float32)
    out[mask] = (1.0 - opacity) * out[mask] + opacity * source[mask]
    return PastedSample(np.clip(out, 0, 255).astype(np.uint8), mask, sample.category)


def batch_classes(categories: Sequence[str], states: Sequence[int]) -> tuple[list[tuple[str, int]], torch.Tensor]:
    """The caption classes of one batch: both states of every category in it, ordered so that
    class 2·k + state belongs to the k-th category; and each image's class index [B].

    Only the batch's own categories are captioned: the text tower's cost then grows with the
    batch, not with the number of categories in the data.
    """
    names = sorted(set(categories))
    position = {c: k for k, c in enumerate(names)}
    labels = torch.tensor([2 * position[c] + int(s) for c, s in zip(categories, states)])
    return [(c, state) for c in names for state in (0, 1)], labels


def random_captions(classes: Sequence[tuple[str, int]], rng: np.random.Generator) -> list[str]:
    """One caption per class, drawn from the class's state × template ensemble."""
    captions = []
    for category, state in classes:
        sentences = ensemble_sentences(category)[state]
        captions.append(sentences[int(rng.integers(len(sentences)))])
    return captions


def random_crop(sample: LabelledImage, config: ClipPretrainConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A square (image, mask) crop; it holds a random defect pixel when the sample has any."""
    image, mask = sample.image, np.asarray(sample.mask, bool)
    height, width = image.shape[:2]
    side = max(1, int(round(rng.uniform(*config.crop_fraction) * min(height, width))))
    if mask.any():
        rows, cols = np.nonzero(mask)
        pick = int(rng.integers(len(rows)))
        top = int(np.clip(rows[pick] - rng.integers(side), 0, height - side))
        left = int(np.clip(cols[pick] - rng.integers(side), 0, width - side))
    else:
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    return image[top : top + side, left : left + side], mask[top : top + side, left : left + side]


def recolour(image: torch.Tensor, rng: np.random.Generator, invert_p: float) -> torch.Tensor:
    """Random channel order, per-channel gain and (with probability `invert_p`) inversion of an
    RGB image [3, H, W] in [0, 1]: a handful of training palettes then stand for any palette, and
    a defect is learnt as "different from its surroundings", not as "brown" or "dark"."""
    image = image[torch.as_tensor(rng.permutation(3))]
    image = image * torch.as_tensor(rng.uniform(0.7, 1.3, 3), dtype=image.dtype).view(3, 1, 1)
    if rng.random() < invert_p:
        image = 1.0 - image
    return image.clamp_(0.0, 1.0)


def crop_tensors(crop: np.ndarray, mask: np.ndarray, config: ClipPretrainConfig, tap: ClipTapConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [h, w, 3], bool [h, w]) → (recoloured, normalised CLIP input [3, S, S], mask
    fraction [S, S]). Antialiased bilinear resize (cheaper than inference's bicubic, at
    thousands of crops a minute)."""
    size = (config.crop_size, config.crop_size)
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
    t = recolour(F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0],
                 rng, config.invert_p)
    m = F.interpolate(torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None], size=size, mode="area")[0, 0]
    return (t - torch.tensor(tap.mean).view(3, 1, 1)) / torch.tensor(tap.std).view(3, 1, 1), m


def augment(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip / 90° rotation per image [B, 3, S, S] and mask [B, S, S]."""
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        image, mask = torch.rot90(image, turns, dims=(1, 2)), torch.rot90(mask, turns, dims=(0, 1))
        out_images.append(torch.flip(image, dims=(2,)) if flip else image)
        out_masks.append(torch.flip(mask, dims=(1,)) if flip else mask)
    return torch.stack(out_images), torch.stack(out_masks)


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, state_weight: float) -> torch.Tensor:
    """Cross-entropy over the batch's (category, state) captions plus `state_weight` × the
    cross-entropy between the two captions of each image's own category. logits [B, 2K], labels [B]."""
    own = 2 * torch.div(labels, 2, rounding_mode="floor")
    state_logits = torch.cat([logits.gather(1, own[:, None]), logits.gather(1, own[:, None] + 1)], dim=1)
    return F.cross_entropy(logits, labels) + state_weight * F.cross_entropy(state_logits, labels % 2)


def dense_loss(heads: nn.ModuleList, patch_tokens: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Σ over blocks of BCE between each head's per-patch logit and the patch's defect fraction.

    patch_tokens: per block [B, h, w, C]; masks: float [B, S, S] in [0, 1].
    """
    grid = patch_tokens[0].shape[1:3]
    fraction = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0]
    return sum(F.binary_cross_entropy_with_logits(head(t)[..., 0], fraction) for head, t in zip(heads, patch_tokens))


def _learning_rate(step: int, config: ClipPretrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero (the usual CLIP schedule, shortened)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + np.cos(np.pi * progress))


def pretrain_clip(
    clip: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    samples: Sequence[LabelledImage],
    config: ClipPretrainConfig,
    log: Callable[[str], None] = LOG.info,
) -> list[float]:
    """Train both CLIP towers in place; returns the mean loss of every `log_every` steps.

    The model is left in eval mode with gradients disabled (it is frozen from here on).
    """
    rng = np.random.default_rng(config.seed)
    categories = [s.category for s in samples]
    states = [int(np.asarray(s.mask).any()) for s in samples]
    depth = len(clip.visual.transformer.resblocks)
    tap_config = ClipTapConfig(input_size=config.crop_size, layers=tuple(range(1, depth + 1)))
    tap = ClipFeatureTap(clip, tap_config)
    heads = nn.ModuleList(nn.Linear(clip.visual.transformer.width, 1) for _ in range(depth))
    clip.train().requires_grad_(True)
    clip.logit_scale.requires_grad_(False)  # fixed temperature, see ClipPretrainConfig
    clip.visual.positional_embedding.requires_grad_(False)  # see ClipPretrainConfig.crop_size
    trained = [p for p in clip.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay, foreach=FOREACH_STEP)
    losses = WindowedLoss("clip pretraining", config.steps, config.log_every, config.batch_size, log)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        batch = rng.choice(len(samples), size=config.batch_size, replace=False)
        pairs = [crop_tensors(*random_crop(samples[i], config, rng), config, tap_config, rng) for i in batch]
        images, masks = augment(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), rng)
        classes, labels = batch_classes([categories[i] for i in batch], [states[i] for i in batch])
        text = F.normalize(clip.encode_text(tokenizer(random_captions(classes, rng))), dim=-1)
        features = tap(images)
        loss = caption_loss(config.temperature * features.image_embedding @ text.T, labels, config.state_weight)
        loss = loss + config.dense_weight * dense_loss(heads, features.patch_tokens, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.add(step, loss)
    clip.eval().requires_grad_(False)
    return losses.history
