"""Training UMCI on a frozen CLIP (DESIGN §4.2): the only part of ClipSAM that learns.

Per tapped layer the loss is focal loss (γ = 2) on the 2-channel softmax map plus binary dice on
its abnormal channel; the layers' losses are summed. Adam (lr 1e-3, betas (0.5, 0.999)), batch 8,
optional 2×2 mosaic augmentation. The data is an abstract sequence of labelled images, so this
module stays free of I/O: the CLI (`pipeline/train_umci.py`) reads datasets from any URL, the tiny
profile build (`tiny/build.py`) feeds synthetic images straight from memory.

- CLIP is frozen and the preprocessing is deterministic, so each image's CLIP tokens are computed
  once, in index order, and kept up to `TrainConfig.feature_cache_mb`; later epochs run only UMCI.
  Mosaics are new images and go through CLIP.
- Every random choice (data order, mosaic partners) comes from ONE numpy generator whose state is
  checkpointed after each epoch with the model, the optimizer and torch's RNG state, so a resumed
  run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import save_state
from .clip_features import ClipFeatureTap, preprocess_images
from .config import ClipTapConfig
from .device import FOREACH_STEP, autocast
from .stage1 import RoughMapper

LOG = logging.getLogger(__name__)
CHECKPOINT_NAME = "umci_last.pt"


class LabelledImage(Protocol):
    """One training image. `image`: RGB uint8 [H, W, 3]; `mask`: bool [H, W] (all False when
    normal; another size is resized); `category`: class name used for the text prompts.

    `category` should be cheap to read: the mosaic augmentation groups samples by category
    before touching any pixels (lazy samples may decode `image`/`mask` on access).
    """

    image: np.ndarray
    mask: np.ndarray
    category: str


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of UMCI training (defaults: DESIGN §4.2).

    image_size: side of the square CLIP input the images are resized to (the maps and the loss
        live at this size too); it should equal the profile's `clip.input_size` used at inference.
    feature_cache_mb: memory budget for the frozen CLIP tokens kept between epochs; images beyond
        it are re-encoded every epoch (same numbers, only slower).
    log_every: batches between progress log lines.
    """

    epochs: int = 15
    image_size: int = 518
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    focal_gamma: float = 2.0
    mosaic_p: float = 0.2
    seed: int = 0
    feature_cache_mb: int = 2048
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.mosaic_p <= 1.0:
            raise ValueError(f"mosaic_p must be in [0, 1], got {self.mosaic_p}")
        if self.mosaic_p > 0 and self.image_size % 2:
            raise ValueError(f"the 2x2 mosaic needs an even image_size, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Settings a checkpoint must share with the run resuming it (epochs may grow)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("epochs", "feature_cache_mb", "log_every")}


# ----------------------------------------------------------------------------------- losses


def focal_loss(log_probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of −(1 − p_t)^γ · log p_t; log_probs [B, 2, H, W] log-softmax, target bool [B, H, W].

    Read from log-probabilities, not clamped probabilities, so that a layer saturated at UMCI's
    logit scale keeps its gradient (docs/decisions.md, "UMCI training").
    """
    # The true class's log-probability: the same numbers as `gather`, with a cheaper backward.
    log_p_true = torch.where(target, log_probs[:, 1], log_probs[:, 0])
    return (-(1.0 - log_p_true.exp()) ** gamma * log_p_true).mean()


def dice_loss(prob_abnormal: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image binary dice loss (smoothing 1, so a normal image is pushed towards an all-zero
    map instead of being undefined), averaged over the batch; [B, H, W] each."""
    target = target.float()
    inter = (prob_abnormal * target).flatten(1).sum(1)
    total = prob_abnormal.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1.0 - (2.0 * inter + 1.0) / (total + 1.0)).mean()


def umci_loss(layer_log_probs: Sequence[torch.Tensor], target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Σ over tapped layers of focal(2-channel map) + dice(abnormal channel); log_probs [B, 2, H, W],
    target bool [B, H, W]."""
    return sum(focal_loss(lp, target, gamma) + dice_loss(lp[:, 1].exp(), target) for lp in layer_log_probs)


# ------------------------------------------------------------------------------- data views


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool [H, W] → bool [size, size]: area-average then ≥ 0.5 (a pixel is defect if mostly so)."""
    t = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]
    return F.interpolate(t, size=(size, size), mode="area")[0, 0] >= 0.5


def prepare(sample: LabelledImage, size: int, tap_config: ClipTapConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample → (normalised CLIP input [3, size, size], bool mask [size, size])."""
    return preprocess_images([sample.image], tap_config)[0], resize_mask(sample.mask, size)


def mosaic(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile four (image [3, S, S], mask [S, S]) pairs 2×2 at half size: (image, mask) at S × S.

    Images shrink with antialiased bilinear resampling, masks by area-average then ≥ 0.5, so the
    tiled mask still marks the tiled defects. S must be even (`TrainConfig` checks it).
    """
    half = parts[0][0].shape[-1] // 2
    images = F.interpolate(torch.stack([p[0] for p in parts]), size=(half, half), mode="bilinear",
                           antialias=True, align_corners=False)
    masks = F.interpolate(torch.stack([p[1] for p in parts]).float()[:, None], size=(half, half), mode="area")[:, 0] >= 0.5
    image = torch.cat([torch.cat([images[0], images[1]], dim=2), torch.cat([images[2], images[3]], dim=2)], dim=1)
    mask = torch.cat([torch.cat([masks[0], masks[1]], dim=1), torch.cat([masks[2], masks[3]], dim=1)], dim=0)
    return image, mask


@dataclass(frozen=True)
class View:
    """One element of a batch: a plain sample (`indices` has one entry) or a 2×2 mosaic (four)."""

    indices: tuple[int, ...]

    @property
    def is_mosaic(self) -> bool:
        return len(self.indices) == 4


def epoch_views(rng: np.random.Generator, by_category: dict[str, np.ndarray], categories: Sequence[str],
                mosaic_p: float) -> list[View]:
    """A shuffled epoch: every sample once, each replaced with probability `mosaic_p` by a mosaic
    of itself and three random samples of its own category (with replacement)."""
    views = []
    for index in rng.permutation(len(categories)):
        if mosaic_p > 0 and rng.random() < mosaic_p:
            partners = rng.choice(by_category[categories[index]], size=3, replace=True)
            views.append(View((int(index), *map(int, partners))))
        else:
            views.append(View((int(index),)))
    return views


# ----------------------------------------------------------------------------------- trainer


class UMCITrainer:
    """Trains `mapper.umci` on labelled images with `mapper`'s frozen CLIP and prompt ensemble.

    The mapper's CLIP is tapped at `config.image_size` (its own `clip.input_size` is not used),
    so the same mapper class serves training and inference.
    """

    def __init__(self, mapper: RoughMapper, samples: Sequence[LabelledImage], config: TrainConfig) -> None:
        if len(samples) == 0:
            raise ValueError("no training samples")
        self.mapper = mapper
        self.samples = samples
        self.config = config
        self.device = mapper.device
        self.tap_config = dataclasses.replace(mapper.config.clip, input_size=config.image_size)
        self.tap = ClipFeatureTap(mapper.clip, self.tap_config)
        self.categories = [s.category for s in samples]
        self.by_category = {c: np.flatnonzero(np.array(self.categories) == c) for c in sorted(set(self.categories))}
        self.optimizer = torch.optim.Adam(mapper.umci.parameters(), lr=config.lr, betas=config.betas,
                                          foreach=FOREACH_STEP)
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.losses: list[float] = []
        self._cache: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}

    # -- features -------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        with autocast(self.device):
            return [t.float() for t in self.tap(images.to(self.device)).patch_tokens]

    def _fill_cache(self) -> None:
        """Encode the samples in index order, in fixed chunks, until the memory budget is used.

        Index order (not epoch order) makes every cached number independent of shuffling and of
        where a run was resumed.
        """
        budget = self.config.feature_cache_mb * 2**20
        used, chunk = 0, self.config.batch_size
        for start in range(0, len(self.samples), chunk):
            indices = range(start, min(start + chunk, len(self.samples)))
            prepared = [prepare(self.samples[i], self.config.image_size, self.tap_config) for i in indices]
            tokens = self._encode(torch.stack([p[0] for p in prepared]))
            per_image = sum(t[0].numel() * t.element_size() for t in tokens)
            for row, (i, (_, mask)) in enumerate(zip(indices, prepared)):
                if used + per_image > budget:
                    break
                self._cache[i] = ([t[row].clone() for t in tokens], mask.to(self.device))
                used += per_image
            if len(self._cache) < indices.stop:
                break
        LOG.info("cached CLIP tokens of %d images (%.0f MB)", len(self._cache), used / 2**20)

    def _batch(self, views: Sequence[View]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
        """CLIP tokens (per layer [B, h, w, C]), bool masks [B, S, S] and categories of a batch."""
        size = self.config.image_size
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for position, view in enumerate(views):
            if view.is_mosaic:
                fresh[position] = mosaic([prepare(self.samples[i], size, self.tap_config) for i in view.indices])
            elif view.indices[0] not in self._cache:
                fresh[position] = prepare(self.samples[view.indices[0]], size, self.tap_config)
        encoded = self._encode(torch.stack([fresh[p][0] for p in sorted(fresh)])) if fresh else []
        row_of = {p: row for row, p in enumerate(sorted(fresh))}
        layers, masks = [], []
        for position, view in enumerate(views):
            if position in fresh:
                layers.append([t[row_of[position]] for t in encoded])
                masks.append(fresh[position][1].to(self.device))
            else:
                tokens, mask = self._cache[view.indices[0]]
                layers.append(tokens)
                masks.append(mask)
        per_layer = [torch.stack([sample[k] for sample in layers]) for k in range(len(layers[0]))]
        return per_layer, torch.stack(masks), [self.categories[v.indices[0]] for v in views]

    # -- optimisation ---------------------------------------------------------------------

    def _step(self, views: Sequence[View]) -> float:
        tokens, masks, categories = self._batch(views)
        text = self.mapper.text.stack(categories)
        size = (self.config.image_size, self.config.image_size)
        with autocast(self.device):
            output = self.mapper.umci(tokens, text, size)
        loss = umci_loss(output.layer_log_probs, masks, self.config.focal_gamma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def run_epoch(self, log: Callable[[str], None] = LOG.info) -> float:
        """One pass over the data; returns the mean loss per sample."""
        views = epoch_views(self.rng, self.by_category, self.categories, self.config.mosaic_p)
        self.mapper.umci.train()
        batch_size = self.config.batch_size
        n_batches = math.ceil(len(views) / batch_size)
        total, seen, start = 0.0, 0, time.perf_counter()
        for b in range(n_batches):
            batch = views[b * batch_size : (b + 1) * batch_size]
            total += self._step(batch) * len(batch)
            seen += len(batch)
            if (b + 1) % self.config.log_every == 0 or b + 1 == n_batches:
                log(f"epoch {self.epoch + 1}/{self.config.epochs} batch {b + 1}/{n_batches} "
                    f"running loss {total / seen:.4f} ({seen / (time.perf_counter() - start):.1f} img/s)")
        self.mapper.umci.eval()
        self.epoch += 1
        self.losses.append(total / seen)
        return self.losses[-1]

    def fit(self, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
            log: Callable[[str], None] = LOG.info) -> list[float]:
        """Train up to `config.epochs`, checkpointing after every epoch; returns per-epoch mean losses.

        resume: continue from `checkpoint_dir`'s last checkpoint when there is one (an error if
        it was written with other settings).
        """
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume and directory is not None and (directory / CHECKPOINT_NAME).exists():
            self.load_checkpoint(directory / CHECKPOINT_NAME)
            log(f"resumed after epoch {self.epoch} from {directory / CHECKPOINT_NAME}")
        if self.epoch < self.config.epochs and self.config.feature_cache_mb > 0:
            self._fill_cache()
        while self.epoch < self.config.epochs:
            loss = self.run_epoch(log)
            log(f"epoch {self.epoch}/{self.config.epochs} mean loss {loss:.4f}")
            if directory is not None:
                self.save_checkpoint(directory / CHECKPOINT_NAME)
        return list(self.losses)

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "umci": {k: v.detach().cpu() for k, v in self.mapper.umci.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "losses": list(self.losses),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "config": self.config.resume_key(),
            "num_samples": len(self.samples),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Atomic write: a crash never leaves a half checkpoint."""
        save_state(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.config.resume_key() or state["num_samples"] != len(self.samples):
            raise ValueError(
                f"checkpoint {path} was written by another training setup "
                f"({state['config']}, {state['num_samples']} samples); use a fresh work dir"
            )
        self.mapper.umci.load_state_dict(state["umci"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.losses = [float(x) for x in state["losses"]]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])


def train_umci(mapper: RoughMapper, samples: Sequence[LabelledImage], config: TrainConfig,
               checkpoint_dir: str | os.PathLike | None = None, resume: bool = False) -> list[float]:
    """Train `mapper.umci` in place (CLIP stays frozen); returns the per-epoch mean losses."""
    return UMCITrainer(mapper, samples, config).fit(checkpoint_dir, resume)
