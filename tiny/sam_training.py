"""Training of the small segment_anything `Sam` that MMR uses in the `tiny` profile.

Every part of SAM (image encoder, prompt encoder, mask decoder) is trained from scratch, in two
steps:

1. `pretrain_encoder`: the image encoder alone learns to segment defects and generic blobs from
   the image, through a throw-away head;
2. `train_sam`: the whole model learns prompted segmentation on the prompts MMR sends:
   - MMR's own prompts (`mmr_prompts`): the components of the image's stage-1 map, each with its
     box, its points and (with `MMRConfig.mask_prompt`) the rough map inside the box as dense
     mask prompt; false alarms included, with an empty target;
   - drawn prompts (`make_prompts`): a loosened, jittered box around a defect region (or on
     defect-free surface), 0..`max_points` positive points, and a simulated rough map
     (`rough_like_map`) as dense mask prompt.
   The decoder predicts 3 masks per prompt (`multimask_output=True`); `prompt_losses` trains the
   best of them fully and all three a little, and the IoU head regresses each mask's actual IoU.

Data: labelled defect images (any source) plus generic random blobs (`random_blob`). Images,
masks and boxes are in SAM's input frame S × S (boxes (x0, y0, x1, y1) at pixel edges, points
(x, y)); dense mask prompts are logits in SAM's low-resolution mask frame m × m.
Why a dense prompt, an encoder pretraining step and this loss: docs/decisions.md, "SAM training".
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.modeling import Sam

from clipsam.config import MMRConfig
from clipsam.device import FOREACH_STEP
from .loss_log import WindowedLoss
from clipsam.mmr import EIGHT_CONNECTED, box_mask, cells_in_boxes, extract_prompts, mask_prompt_logits
from clipsam.train import LabelledImage

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamTrainConfig:
    """Hyper-parameters of the tiny SAM's training (defaults: the `tiny` profile's recipe).

    steps / prompts_per_image: `train_sam`'s optimiser steps and prompts per image.
    batch_size / weight_decay: images per step and AdamW weight decay, in both training steps.
    lr / warmup_steps: `train_sam`'s schedule (linear warm-up, then cosine decay to 0); `lr` is
        the peak rate of every part but the image encoder.
    encoder_lr: peak learning rate of the image encoder in `train_sam`; low, so that it keeps what
        `pretrain_encoder` taught it.
    encoder_pretrain_steps / encoder_pretrain_lr / encoder_pretrain_blob_p: `pretrain_encoder`'s
        steps, encoder learning rate (constant) and share of generic-blob images.
    pixel_weight / dice_weight / iou_weight: weights of the pixel BCE, the overlap term
        (`tversky_loss`) and the IoU head's squared error in `prompt_losses`.
    miss_weight: weight in [0, 1] of missed defect pixels in the overlap term (0.5: dice; above
        0.5 a missed defect pixel costs more than an extra one).
    level_weight: weight of the mean mask loss over all 3 levels, added to the best level's (MMR
        fuses all three levels, so none may stay untrained).
    box_loosen: (min, max) fraction of the box side added on every side, drawn per prompt
        (rough-map components are blurred by the CLIP patch grid, so their boxes are loose).
    box_pad_px: (min, max) pixels added on every side on top of `box_loosen`.
    box_jitter: std of each box edge's random shift, as a fraction of the box side.
    max_points: up to this many positive points per drawn prompt (uniform 0..max_points).
    blob_p: share of training images that are generic random blobs instead of data samples.
    negative_p: share of drawn prompts that are boxes on random surface (target: whatever defect
        they cover, usually nothing; prior: the ellipse inscribed in the box, a false alarm).
    mask_prompt_p: share of drawn prompts that carry a dense mask prompt (`rough_like_map`);
        none unless `MMRConfig.mask_prompt`.
    mmr_prompt_p: share of data images with a stage-1 map whose prompts are MMR's own
        (`mmr_prompts`); the others, and images whose map has no component, get drawn prompts.
    rough_grid: patch grid side of the simulated rough maps.
    seed: seed of every random choice; log_every: steps per loss-history entry and log line.
    """

    steps: int = 400
    batch_size: int = 8
    prompts_per_image: int = 2
    lr: float = 2e-3
    encoder_lr: float = 1e-4
    encoder_pretrain_steps: int = 800
    encoder_pretrain_lr: float = 3e-4
    encoder_pretrain_blob_p: float = 0.6
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    pixel_weight: float = 1.0
    dice_weight: float = 1.0
    miss_weight: float = 0.75
    iou_weight: float = 1.0
    level_weight: float = 0.3
    box_loosen: tuple[float, float] = (0.0, 0.5)
    box_pad_px: tuple[float, float] = (0.0, 0.0)
    box_jitter: float = 0.1
    max_points: int = 2
    blob_p: float = 0.3
    negative_p: float = 0.2
    mask_prompt_p: float = 1.0
    mmr_prompt_p: float = 1.0
    rough_grid: int = 16
    seed: int = 0
    log_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromptTargets:
    """Prompts and targets of one image, in its pixel frame (S × S, S = SAM's input size).

    boxes: float32 [P, 4] (x0, y0, x1, y1); points: float32 [P, K, 2] (x, y); labels: int64 [P, K]
    (1 positive, −1 padding); masks: bool [P, S, S] target of each prompt; priors: bool [P, S, S]
    the region a simulated rough map of the prompt shows (the target, or for a false alarm a blob
    where there is no defect); mask_inputs: float32 [P, m, m] dense mask prompt logits in SAM's
    low-resolution frame and has_mask_input: bool [P] which prompts use theirs (None before
    `attach_mask_prompts`: none).
    """

    boxes: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    priors: np.ndarray
    mask_inputs: np.ndarray | None = None
    has_mask_input: np.ndarray | None = None


# ------------------------------------------------------------------------------------ data


def _bilinear_matrix(size: int, coarse: int) -> np.ndarray:
    """[size, coarse] weights that upsample `coarse` samples to `size` linearly (edges clamped)."""
    pos = np.clip((np.arange(size) + 0.5) * coarse / size - 0.5, 0, coarse - 1)
    low = np.minimum(np.floor(pos).astype(int), coarse - 2)
    frac = (pos - low).astype(np.float32)
    weights = np.zeros((size, coarse), np.float32)
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def random_blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """bool [size, size]: 1-3 wobbly ellipses, a quarter of them long and thin like scratches."""
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = (float(v) for v in rng.uniform(0.1, 0.9, 2) * size)
        ry, rx = (float(v) for v in rng.uniform(0.03, 0.2, 2) * size)
        if rng.random() < 0.25:  # a thin stroke
            ry, rx = float(rng.uniform(0.004, 0.012)) * size, float(rng.uniform(0.08, 0.3)) * size
        theta, phase, amount = (float(v) for v in rng.uniform(0, 1, 3) * (np.pi, 2 * np.pi, 1))
        # Only the window that can hold the blob (radius ≤ 1.25 · its longer axis) is evaluated.
        reach = 1.25 * max(rx, ry) + 1
        top, bottom = max(0, int(cy - reach)), min(size, int(cy + reach) + 1)
        left, right = max(0, int(cx - reach)), min(size, int(cx + reach) + 1)
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (dy * np.cos(theta) - dx * np.sin(theta)) / ry
        wobble = 1 + 0.25 * amount * np.sin(3 * np.arctan2(v, u) + phase)
        mask[top:bottom, left:right] |= u**2 + v**2 <= wobble**2
    return mask


def random_blob(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A generic training image: a smooth random background with the blobs of
    `random_blob_mask` in another colour and texture. Returns (RGB uint8 [size, size, 3],
    bool mask [size, size])."""
    up = _bilinear_matrix(size, 4)
    coarse = rng.uniform(0, 1, (4, 4, 3)).astype(np.float32)
    background = np.stack([up @ coarse[..., c] @ up.T for c in range(3)], axis=-1)
    background += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.08))
    mask = random_blob_mask(size, rng)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    texture = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.08))
    image = np.where(mask[..., None], colour + texture, background)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def square(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image/mask pair to size × size (bilinear / nearest): SAM's input frame."""
    if image.shape[:2] == (size, size) and mask.shape == (size, size):
        return image, mask
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(torch.from_numpy(np.ascontiguousarray(mask))[None, None].float(), size=(size, size), mode="nearest")
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), m[0, 0].numpy() > 0.5


def resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """A float map [H, W] resized (bilinear) to size × size, float32: SAM's input frame."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (size, size):
        return values
    return F.interpolate(torch.as_tensor(values)[None, None], size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def _loose_box(rows: np.ndarray, cols: np.ndarray, size: int, config: SamTrainConfig,
               rng: np.random.Generator) -> np.ndarray:
    """Bounding box of the given pixels, loosened, padded and jittered, clipped to the image."""
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = y1 - y0, x1 - x0
    loosen = rng.uniform(*config.box_loosen)
    pad = rng.uniform(*config.box_pad_px)
    jitter = rng.normal(0, config.box_jitter, 4) * np.array([w, h, w, h])
    box = np.array([x0 - loosen * w - pad, y0 - loosen * h - pad, x1 + loosen * w + pad, y1 + loosen * h + pad]) + jitter
    box = np.clip(box, 0, size)
    box[2:] = np.maximum(box[2:], box[:2] + 1)
    return box.astype(np.float32)


def rough_like_map(target: np.ndarray, grid: int, low: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [low, low] in [0, 1]: what a rough anomaly map of `target` (bool [S, S]) looks like.

    UMCI scores patches of a `grid` × `grid` CLIP grid, bilinearly upsampled: a defect shows as a
    blurred blob whose height depends little on how much of a patch it covers (a thin scratch can
    score 0.8), over a background that is rarely exactly 0. So: defect fraction per patch, raised
    to a random power < 1, scaled, on a random background level, with patch noise.
    """
    cells = F.interpolate(torch.as_tensor(target, dtype=torch.float32)[None, None], size=(grid, grid), mode="area")[0, 0].numpy()
    background = rng.uniform(0.0, 0.35)
    height = rng.uniform(0.55, 1.0)
    values = background + (height - background) * cells ** rng.uniform(0.2, 0.8)
    values = np.clip(values + rng.normal(0, 0.08, values.shape), 0.0, 1.0).astype(np.float32)
    up = _bilinear_matrix(low, grid)
    return up @ values @ up.T


def attach_mask_prompts(prompts: PromptTargets, size: int, low: int, config: SamTrainConfig, mmr: MMRConfig,
                        rng: np.random.Generator) -> PromptTargets:
    """Give a `mask_prompt_p` share of the prompts (none unless `mmr.mask_prompt`) a rough-map-like
    dense mask prompt of their prior region, kept inside their box, as the logits MMR sends
    (`mmr.mask_prompt_logits`)."""
    count = len(prompts.boxes)
    has = rng.random(count) < (config.mask_prompt_p if mmr.mask_prompt else 0.0)
    logits = np.zeros((count, low, low), np.float32)
    for i in np.nonzero(has)[0]:
        values = rough_like_map(prompts.priors[i], config.rough_grid, low, rng)
        logits[i] = mask_prompt_logits(values, cells_in_boxes(prompts.boxes[i], low / size, low)[0], mmr)
    return dataclasses.replace(prompts, mask_inputs=logits, has_mask_input=has)


def make_prompts(mask: np.ndarray, count: int, config: SamTrainConfig, rng: np.random.Generator) -> PromptTargets:
    """`count` prompts for one image with its defect mask (bool [S, S]).

    A positive prompt picks one 8-connected defect region: box = its loosened, jittered bounding
    box; points = 0..max_points random pixels of the region; target = every defect pixel inside
    the box (MMR's boxes may hold several nearby regions, and all of them are the defect). A
    negative prompt (always when the mask is empty) is a random box whose prior is the ellipse
    inscribed in it (a false alarm of the rough map); its target is whatever defect it happens
    to cover, usually nothing.
    """
    size = mask.shape[0]
    regions, n_regions = ndimage.label(mask, structure=EIGHT_CONNECTED)
    slots = max(1, config.max_points)
    boxes, points, labels, targets, priors = [], [], [], [], []
    for _ in range(count):
        point_xy = np.zeros((slots, 2), np.float32)
        point_labels = np.full(slots, -1, np.int64)
        if n_regions == 0 or rng.random() < config.negative_p:
            side = rng.uniform(0.08, 0.4, 2) * size
            corner = rng.uniform(0, 1, 2) * (size - side)
            box = np.array([corner[0], corner[1], corner[0] + side[0], corner[1] + side[1]], np.float32)
            target = mask & box_mask(box, (size, size))
            centre, radius = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
            yy, xx = np.mgrid[0:size, 0:size] + 0.5
            prior = ((xx - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2 <= 1
        else:
            rows, cols = np.nonzero(regions == int(rng.integers(1, n_regions + 1)))
            box = _loose_box(rows, cols, size, config, rng)
            target = mask & box_mask(box, (size, size))
            n_points = int(rng.integers(0, config.max_points + 1))
            picks = rng.integers(len(rows), size=n_points)
            point_xy[:n_points] = np.stack([cols[picks] + 0.5, rows[picks] + 0.5], axis=1)
            point_labels[:n_points] = 1
            prior = target
        priors.append(prior)
        boxes.append(box)
        points.append(point_xy)
        labels.append(point_labels)
        targets.append(target)
    return PromptTargets(np.stack(boxes), np.stack(points), np.stack(labels), np.stack(targets), np.stack(priors))


def augment_pair(*arrays: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The same random flip / 90° rotation of an image and the maps that go with it ([H, W, ...] each)."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = [np.rot90(a, turns, axes=(0, 1)) for a in arrays]
    if flip:
        out = [a[:, ::-1] for a in out]
    return tuple(np.ascontiguousarray(a) for a in out)


def mmr_prompts(mask: np.ndarray, rough_map: np.ndarray, count: int, mmr: MMRConfig, low: int, slots: int,
                rng: np.random.Generator) -> PromptTargets | None:
    """Up to `count` of the prompts MMR itself draws from `rough_map` (float [S, S], the stage-1
    map of this image): box, points and (with `mmr.mask_prompt`) dense mask prompt of random
    components; target = the defect pixels inside the box (nothing, for a false alarm). None when
    the map has no component.
    """
    components = extract_prompts(rough_map, mmr)
    if not components:
        return None
    size = mask.shape[0]
    picks = rng.choice(len(components), size=min(count, len(components)), replace=False)
    values = F.interpolate(torch.as_tensor(rough_map, dtype=torch.float32)[None, None], size=(low, low), mode="area")[0, 0].numpy()
    boxes, points, labels, targets, inputs = [], [], [], [], []
    for index in picks:
        component = components[int(index)]
        n = min(slots, len(component.points))
        point_xy, point_labels = np.zeros((slots, 2), np.float32), np.full(slots, -1, np.int64)
        point_xy[:n], point_labels[:n] = component.points[:n], component.labels[:n]
        boxes.append(component.box)
        points.append(point_xy)
        labels.append(point_labels)
        targets.append(mask & box_mask(component.box, (size, size)))
        inputs.append(mask_prompt_logits(values, cells_in_boxes(component.box, low / size, low)[0], mmr))
    targets_array = np.stack(targets)
    return PromptTargets(np.stack(boxes).astype(np.float32), np.stack(points), np.stack(labels), targets_array,
                         targets_array, np.stack(inputs), np.full(len(picks), mmr.mask_prompt))


# ---------------------------------------------------------------------------------- losses


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with a bool target, per mask; 1 when both are empty. [..., H, W] → [...]."""
    predicted = logits > 0
    inter = (predicted & target).flatten(-2).sum(-1).float()
    union = (predicted | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss with smoothing 1 (an empty target asks for an empty mask); [..., H, W] → [...]."""
    inter = (prob * target).flatten(-2).sum(-1)
    return 1.0 - (2.0 * inter + 1.0) / (prob.flatten(-2).sum(-1) + target.flatten(-2).sum(-1) + 1.0)


def tversky_loss(prob: torch.Tensor, target: torch.Tensor, miss_weight: float) -> torch.Tensor:
    """Per-mask overlap loss 1 − (TP + 1) / (TP + (1 − w)·FP + w·FN + 1) with w = `miss_weight`
    (0.5: dice, `soft_dice_loss` up to its smoothing); an empty target asks for an empty mask.
    [..., H, W] → [...]."""
    tp = (prob * target).flatten(-2).sum(-1)
    fp = (prob * (1 - target)).flatten(-2).sum(-1)
    fn = ((1 - prob) * target).flatten(-2).sum(-1)
    return 1.0 - (tp + 1.0) / (tp + (1.0 - miss_weight) * fp + miss_weight * fn + 1.0)


def prompt_losses(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
                  config: SamTrainConfig) -> torch.Tensor:
    """Per-prompt loss: best-of-3 (pixel_weight · BCE + dice_weight · `tversky_loss`) + level_weight · the
    same averaged over the 3 levels + iou_weight · MSE of the IoU head.

    logits [P, 3, S, S] (upsampled to the image frame, where thin scratches still have full-width
    pixels), iou_pred [P, 3], target [P, S, S] float in {0, 1}. The IoU head learns the IoU of
    each thresholded mask with the target. Returns [P].
    """
    expanded = target[:, None].expand_as(logits)
    pixel = F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").flatten(-2).mean(-1)
    mask_loss = config.pixel_weight * pixel + config.dice_weight * tversky_loss(torch.sigmoid(logits), expanded, config.miss_weight)
    iou_loss = F.mse_loss(iou_pred, mask_iou(logits.detach(), expanded >= 0.5), reduction="none").mean(1)
    return mask_loss.min(dim=1).values + config.level_weight * mask_loss.mean(dim=1) + config.iou_weight * iou_loss


# --------------------------------------------------------------------------------- training


def decode(sam: Sam, embedding: torch.Tensor, prompts: PromptTargets,
           image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts through the prompt encoder and the mask decoder (3 levels), in one decoder call.
    Prompts with a dense mask prompt (`has_mask_input`) get its embedding, the others SAM's
    "no mask" embedding.

    embedding [B, C, h, w]; image_index int64 [P] says which image each prompt belongs to (None:
    all belong to image 0). Returns (low-resolution mask logits [P, 3, 4h, 4w], predicted IoU
    [P, 3]). segment_anything's decoder takes one image per call and repeats its embedding per
    prompt; here the per-prompt embedding is handed over inside the dense prompt embedding (the
    decoder only ever adds the two) with a zero image embedding, which batches many images'
    prompts into one call.
    """
    device = embedding.device
    points = (torch.as_tensor(prompts.points, device=device), torch.as_tensor(prompts.labels, device=device))
    boxes = torch.as_tensor(prompts.boxes, device=device)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    if prompts.has_mask_input is not None and prompts.has_mask_input.any():
        masks = torch.as_tensor(prompts.mask_inputs, device=device)[:, None]
        _, with_mask = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        dense = torch.where(torch.as_tensor(prompts.has_mask_input, device=device)[:, None, None, None], with_mask, dense)
    if image_index is None:
        image_embedding, dense_embedding = embedding[:1], dense
    else:
        image_embedding = torch.zeros_like(embedding[:1])
        dense_embedding = dense + embedding[image_index.to(device)]
    low_res, iou = sam.mask_decoder(
        image_embeddings=image_embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense_embedding,
        multimask_output=True,
    )
    return low_res, iou


def encode(sam: Sam, images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 images already at SAM's input size → image embeddings [B, C, h, w]."""
    device = next(sam.parameters()).device
    batch = torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in images]).to(device)
    return sam.image_encoder(sam.preprocess(batch.float()))


def _concat_prompts(prompts: Sequence[PromptTargets]) -> tuple[PromptTargets, torch.Tensor]:
    """Many images' prompts as one PromptTargets and the image index of each prompt."""
    fields = [f.name for f in dataclasses.fields(PromptTargets)]
    merged = PromptTargets(*(np.concatenate([getattr(p, f) for p in prompts]) for f in fields))
    index = torch.cat([torch.full((len(p.boxes),), i, dtype=torch.int64) for i, p in enumerate(prompts)])
    return merged, index


def _learning_rate(step: int, config: SamTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + np.cos(np.pi * progress))


class PromptSampler:
    """Draws training images and their prompts (module docstring), all from one generator.

    samples: labelled images; rough_maps: the stage-1 map of each (float [H, W] in [0, 1], the
    image's frame) or None where there is none. Images are resized to SAM's input size S.
    """

    def __init__(self, sam: Sam, samples: Sequence[LabelledImage], rough_maps: Sequence[np.ndarray | None] | None,
                 config: SamTrainConfig, mmr: MMRConfig, rng: np.random.Generator) -> None:
        self.size = sam.image_encoder.img_size
        self.low = sam.prompt_encoder.mask_input_size[0]
        self.config, self.mmr, self.rng = config, mmr, rng
        maps = list(rough_maps) if rough_maps is not None else [None] * len(samples)
        if len(maps) != len(samples):
            raise ValueError(f"{len(maps)} rough maps for {len(samples)} samples")
        self.data = [(sample, rough) for sample, rough in zip(samples, maps)
                     if np.asarray(sample.mask).any() or config.negative_p > 0 or rough is not None]

    def image(self) -> tuple[np.ndarray, PromptTargets]:
        """One training image (RGB uint8 [S, S, 3]) with its prompts and targets."""
        config, rng = self.config, self.rng
        if not self.data or rng.random() < config.blob_p:
            image, mask = random_blob(self.size, rng)
            return image, self._drawn(mask)
        sample, rough = self.data[int(rng.integers(len(self.data)))]
        image, mask = square(sample.image, np.asarray(sample.mask, bool), self.size)
        if rough is None or rng.random() >= config.mmr_prompt_p:
            image, mask = augment_pair(image, mask, rng=rng)
            return image, self._drawn(mask)
        image, mask, rough = augment_pair(image, mask, resize_map(rough, self.size), rng=rng)
        prompts = mmr_prompts(mask, rough, config.prompts_per_image, self.mmr, self.low, max(1, config.max_points), rng)
        return image, prompts if prompts is not None else self._drawn(mask)

    def _drawn(self, mask: np.ndarray) -> PromptTargets:
        prompts = make_prompts(mask, self.config.prompts_per_image, self.config, self.rng)
        return attach_mask_prompts(prompts, self.size, self.low, self.config, self.mmr, self.rng)


def pretrain_encoder(sam: Sam, samples: Sequence[LabelledImage], config: SamTrainConfig,
                     log: Callable[[str], None] = LOG.info) -> list[float]:
    """Teach the image encoder to segment defects and blobs from the image alone, before
    `train_sam`; returns the mean loss of every `log_every` steps.

    A throw-away 1×1 head on the embedding [B, C, h, w], pixel-shuffled to SAM's low-resolution
    mask grid m × m, is trained with the encoder (BCE + dice against the area-averaged mask; the
    head at 10× the encoder's learning rate) on `samples` and, for a share
    `encoder_pretrain_blob_p`, generic blobs. Only the encoder's weights are kept. Why this step
    exists: docs/decisions.md, "SAM training".
    """
    rng = np.random.default_rng(config.seed + 1)
    encoder = sam.image_encoder
    grid, low = sam.prompt_encoder.image_embedding_size[0], sam.prompt_encoder.mask_input_size[0]
    factor = low // grid
    generator = torch.Generator().manual_seed(config.seed + 1)
    head = torch.nn.Conv2d(sam.prompt_encoder.embed_dim, factor * factor, 1).to(next(sam.parameters()).device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.fill_(-2.0)  # start near "no defect", the answer for almost every pixel
    optimizer = torch.optim.AdamW([{"params": list(encoder.parameters())},
                                   {"params": list(head.parameters()), "lr": 10 * config.encoder_pretrain_lr}],
                                  lr=config.encoder_pretrain_lr, weight_decay=config.weight_decay,
                                  foreach=FOREACH_STEP)
    data = list(samples)
    encoder.train()
    losses = WindowedLoss("sam encoder pretraining", config.encoder_pretrain_steps, config.log_every, config.batch_size, log)
    for step in range(config.encoder_pretrain_steps):
        images, masks = [], []
        for _ in range(config.batch_size):
            if not data or rng.random() < config.encoder_pretrain_blob_p:
                image, mask = random_blob(encoder.img_size, rng)
            else:
                sample = data[int(rng.integers(len(data)))]
                image, mask = augment_pair(*square(sample.image, np.asarray(sample.mask, bool), encoder.img_size), rng=rng)
            images.append(image)
            masks.append(mask)
        logits = F.pixel_shuffle(head(encode(sam, images)), factor)[:, 0]
        target = F.interpolate(torch.as_tensor(np.stack(masks))[:, None].float(), size=(low, low), mode="area")[:, 0]
        target = target.to(logits.device)
        pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        loss = (pixel + soft_dice_loss(torch.sigmoid(logits), target)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.add(step, loss)
    return losses.history


def train_sam(sam: Sam, samples: Sequence[LabelledImage], config: SamTrainConfig, mmr: MMRConfig,
              rough_maps: Sequence[np.ndarray | None] | None = None,
              log: Callable[[str], None] = LOG.info) -> list[float]:
    """Train every part of `sam` in place; returns the mean loss of every `log_every` steps.

    samples: labelled images (any sizes; resized to SAM's input size), defect or normal;
    rough_maps: optional stage-1 map per sample, for MMR's own prompts (`mmr_prompt_p`);
    mmr: the MMR settings the model will be used with (threshold, dense prompt gain).
    The model is left in eval mode.
    """
    rng = np.random.default_rng(config.seed)
    sampler = PromptSampler(sam, samples, rough_maps, config, mmr, rng)
    size = sampler.size
    sam.train()
    others = [p for name, p in sam.named_parameters() if not name.startswith("image_encoder.")]
    optimizer = torch.optim.AdamW([{"params": list(sam.image_encoder.parameters()), "share": config.encoder_lr / config.lr},
                                   {"params": others, "share": 1.0}], lr=config.lr, weight_decay=config.weight_decay,
                                  foreach=FOREACH_STEP)
    device = next(sam.parameters()).device
    losses = WindowedLoss("sam training", config.steps, config.log_every, config.batch_size, log)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config) * group["share"]
        images, per_image = zip(*(sampler.image() for _ in range(config.batch_size)))
        prompts, index = _concat_prompts(per_image)
        logits, iou = decode(sam, encode(sam, images), prompts, index)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        target = torch.as_tensor(prompts.masks).float().to(device)
        loss = prompt_losses(logits, iou, target, config).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.add(step, loss)
    sam.eval()
    return losses.history


@torch.no_grad()
def mmr_prompt_iou(sam: Sam, samples: Sequence[LabelledImage], rough_maps: Sequence[np.ndarray],
                   mmr: MMRConfig) -> dict[str, float]:
    """How much SAM improves on the prompts MMR sends, on components that overlap a defect.

    For every such component of every sample's stage-1 map: IoU with the defect pixels in its
    box of (a) the rough map thresholded at τ inside the box ("rough") and (b) SAM's best of 3
    masks ("sam"). Returns the means over components, and "components" (how many).
    """
    sam.eval()
    rng = np.random.default_rng(0)  # every component is taken; only their order is drawn
    size, low = sam.image_encoder.img_size, sam.prompt_encoder.mask_input_size[0]
    scores: dict[str, list[float]] = {"rough": [], "sam": []}
    for sample, rough in zip(samples, rough_maps):
        image, mask = square(sample.image, np.asarray(sample.mask, bool), size)
        rough = resize_map(rough, size)
        prompts = mmr_prompts(mask, rough, 10**6, mmr, low, 2, rng)
        if prompts is None:
            continue
        keep = prompts.masks.any(axis=(1, 2))
        if not keep.any():
            continue
        prompts = PromptTargets(*(getattr(prompts, f.name)[keep] for f in dataclasses.fields(PromptTargets)))
        logits, _ = decode(sam, encode(sam, [image]), prompts)
        full = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        target = torch.as_tensor(prompts.masks)
        boxes = torch.as_tensor(np.stack([box_mask(b, (size, size)) for b in prompts.boxes]))
        rough_logits = torch.as_tensor(rough - mmr.prompt_threshold)[None].expand_as(target)
        rough_inside = torch.where(boxes, rough_logits, torch.full_like(rough_logits, -1.0))
        scores["rough"] += mask_iou(rough_inside, target).tolist()
        scores["sam"] += mask_iou(full, target[:, None].expand_as(full)).max(dim=1).values.tolist()
    if not scores["sam"]:
        raise ValueError("mmr_prompt_iou: no stage-1 component overlaps a defect")
    return {"rough": float(np.mean(scores["rough"])), "sam": float(np.mean(scores["sam"])),
            "components": len(scores["sam"])}
