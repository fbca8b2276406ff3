"""MMR, the SAM half: embed prompted images, decode all of an image's prompts in one call, fuse.

Uses segment_anything's real `Sam` modules with SamPredictor's conventions (ResizeLongestSide to
the encoder size, pixel-frame (x, y) prompts). It differs from SamPredictor in two ways that
matter at scale: the image encoder runs on a batch of images at once (on CUDA), and only on
images that have prompts (most line images are normal, so this is where the time goes); and every
component of an image goes through the mask decoder in ONE batched call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .config import MMRConfig
from .device import forward_chunks
from .mmr import ComponentPrompt, cells_in_boxes, fuse_levels, mask_prompt_logits

# Components are upsampled to full resolution in chunks of this many, bounding memory
# (3 float32 levels of a 1024² image are 12 MB per component).
UPSAMPLE_CHUNK = 8


@dataclass
class SamEmbedding:
    """SAM image embedding of one image: [1, C, h, w] plus the sizes postprocessing needs."""

    features: torch.Tensor
    input_size: tuple[int, int]  # (H, W) after ResizeLongestSide, before padding
    original_size: tuple[int, int]  # (H, W) of the original image


class SamRefiner:
    """Thin stateful wrapper over a `Sam` model that counts its encoder and decoder calls.

    The counters exist so tests and benchmarks can prove that unprompted images never reach
    the (expensive) image encoder and that each image costs exactly one decoder call.
    """

    def __init__(self, sam: Sam, device: torch.device | str = "cpu") -> None:
        self.sam = sam.eval().to(device)
        self.device = torch.device(device)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.encoder_images = 0  # images that went through the image encoder
        self.encoder_calls = 0  # encoder forward passes (batches)
        self.decoder_calls = 0

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> list[SamEmbedding]:
        """RGB uint8 images [H, W, 3] (any sizes) → one embedding each (see `forward_chunks`)."""
        embeddings = []
        for chunk in forward_chunks(images, self.device):
            inputs, sizes = [], []
            for image in chunk:
                resized = self.transform.apply_image(np.ascontiguousarray(image))
                tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()
                sizes.append(tuple(tensor.shape[-2:]))
                inputs.append(self.sam.preprocess(tensor[None])[0])
            features = self.sam.image_encoder(torch.stack(inputs, dim=0))
            self.encoder_calls += 1
            self.encoder_images += len(chunk)
            embeddings.extend(
                SamEmbedding(features=features[i : i + 1], input_size=sizes[i], original_size=tuple(image.shape[:2]))
                for i, image in enumerate(chunk)
            )
        return embeddings

    @torch.no_grad()
    def mask_inputs(self, embedding: SamEmbedding, rough_map: np.ndarray, prompts: list[ComponentPrompt],
                    config: MMRConfig) -> np.ndarray:
        """Dense mask prompts, one per component: the rough map (original frame, [H, W] in [0, 1])
        taken to SAM's low-resolution mask frame the way SamPredictor frames an image (resize the
        longest side, pad bottom/right), kept inside the component's box, as logits
        (`mmr.mask_prompt_logits`). Returns float32 [N, m, m], m = SAM's mask_input_size."""
        side = self.sam.image_encoder.img_size
        low = self.sam.prompt_encoder.mask_input_size[0]
        resized = F.interpolate(torch.as_tensor(rough_map, dtype=torch.float32)[None, None], size=embedding.input_size,
                                mode="bilinear", align_corners=False)
        padded = F.pad(resized, (0, side - embedding.input_size[1], 0, side - embedding.input_size[0]))
        values = F.interpolate(padded, size=(low, low), mode="area")[0, 0].numpy()
        boxes = self.transform.apply_boxes(np.stack([p.box for p in prompts]), embedding.original_size)
        return mask_prompt_logits(values[None], cells_in_boxes(boxes, low / side, low), config)

    @torch.no_grad()
    def decode(self, embedding: SamEmbedding, prompts: list[ComponentPrompt],
               mask_inputs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All prompts of one image in one decoder call (multimask output: 3 levels each);
        `mask_inputs` [N, m, m] (see `mask_inputs`) adds a dense mask prompt to each component.

        Returns (sam_map, scores): sam_map float32 [H, W] in [0, 1], the union (pixel-wise max) over
        components of each component's confidence-weighted level fusion; scores float32 [N, 3],
        SAM's predicted IoU per component and level.
        """
        if not prompts:
            raise ValueError("decode needs at least one prompt; skip SAM for images without components")
        boxes, coords, labels = _pack_prompts(prompts)
        original = embedding.original_size
        boxes = torch.as_tensor(self.transform.apply_boxes(boxes, original), device=self.device)
        coords = torch.as_tensor(self.transform.apply_coords(coords, original), device=self.device)
        labels = torch.as_tensor(labels, device=self.device)
        masks = None if mask_inputs is None else torch.as_tensor(mask_inputs, device=self.device)[:, None]
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=boxes, masks=masks)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        self.decoder_calls += 1
        scores = iou.float().cpu().numpy()
        sam_map = np.zeros(original, dtype=np.float32)
        for start in range(0, len(prompts), UPSAMPLE_CHUNK):
            chunk = low_res[start : start + UPSAMPLE_CHUNK].float()
            logits = self.sam.postprocess_masks(chunk, embedding.input_size, original)
            probs = torch.sigmoid(logits).cpu().numpy()
            fused = fuse_levels(probs, scores[start : start + UPSAMPLE_CHUNK])
            np.maximum(sam_map, fused.max(axis=0), out=sam_map)
        return sam_map, scores


def _pack_prompts(prompts: list[ComponentPrompt]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack per-component prompts; components with fewer points are padded with label −1,
    which SAM's prompt encoder treats as "not a point"."""
    most = max(len(p.points) for p in prompts)
    coords = np.zeros((len(prompts), most, 2), dtype=np.float32)
    labels = np.full((len(prompts), most), -1, dtype=np.int64)
    for i, prompt in enumerate(prompts):
        coords[i, : len(prompt.points)] = prompt.points
        labels[i, : len(prompt.labels)] = prompt.labels
    boxes = np.stack([p.box for p in prompts]).astype(np.float32)
    return boxes, coords, labels


def upsample_map(rough_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a [h, w] map in [0, 1] to the original image size (H, W), float32."""
    tensor = torch.as_tensor(rough_map, dtype=torch.float32)[None, None]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0]
    return out.clamp_(0.0, 1.0).numpy()
