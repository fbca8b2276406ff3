"""SAM as MMR uses it: a SamPredictor-like adapter over segment_anything's real `Sam` modules.

It takes arrays and returns arrays; it knows nothing of MMR (prompts come in as boxes, points and
labels; fusion happens in `clipsam.mmr`). Frames follow SamPredictor: prompts and returned masks
are in the original image's pixel frame (points (x, y), boxes (x0, y0, x1, y1) at pixel edges);
inside, the image is resized so its longest side is the encoder's input size and padded
bottom/right. Two differences from SamPredictor, both for throughput: `embed` runs the image
encoder on several images in one pass (on CUDA; see `clipsam.device.forward_chunks`), and
`decode` takes every component of an image in ONE batched mask-decoder call.

The counters (`encoder_images`, `encoder_calls`, `decoder_calls`) let tests and benchmarks show
that unprompted images never reach the image encoder and that an image costs one decoder call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.functional import resize, to_pil_image

from .device import forward_chunks

# Components are upsampled to full resolution this many at a time, bounding memory
# (3 float32 levels of a 1024² image are 12 MB per component).
UPSAMPLE_CHUNK = 8


@dataclass
class SamEmbedding:
    """SAM image embedding of one image.

    features: [1, C, h, w] on the model's device.
    input_size: (H, W) after ResizeLongestSide, before padding.
    original_size: (H, W) of the original image.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class SamMasks:
    """One decoder call's output for N prompted components, K = 3 mask levels each.

    low_res_logits: [N, K, m, m] tensor (SAM's low-resolution mask logits, m = 256).
    scores: float32 [N, K], SAM's predicted IoU per component and level.
    """

    low_res_logits: torch.Tensor
    scores: np.ndarray
    embedding: SamEmbedding


class SamAdapter:
    """Embed images and decode prompts with one `Sam` model (eval mode, on `device`)."""

    def __init__(self, sam: Sam, device: torch.device | str = "cpu") -> None:
        self.model = sam.eval().to(device)
        self.device = torch.device(device)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.encoder_images = 0  # images that went through the image encoder
        self.encoder_calls = 0  # encoder forward passes (batches)
        self.decoder_calls = 0

    @property
    def mask_input_size(self) -> int:
        """Side m of SAM's low-resolution mask frame (dense mask prompts and low-res logits)."""
        return int(self.model.prompt_encoder.mask_input_size[0])

    @torch.no_grad()
    def embed(self, images: list[np.ndarray], frames: list[tuple[int, int]] | None = None) -> list[SamEmbedding]:
        """RGB uint8 images [h, w, 3] (any sizes) → one embedding each. frames: the (H, W) each
        image stands for when it is a reduced copy of a larger frame (a JPEG decoded at reduced
        scale); prompts and masks are then in that frame. Default: the images' own sizes."""
        frames = frames or [image.shape[:2] for image in images]
        embeddings = []
        for chunk in forward_chunks(list(zip(images, frames)), self.device):
            inputs, sizes = [], []
            for image, frame in chunk:
                size = self.transform.get_preprocess_shape(frame[0], frame[1], self.transform.target_length)
                resized = np.array(resize(to_pil_image(np.ascontiguousarray(image)), size))
                tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()
                sizes.append(tuple(tensor.shape[-2:]))
                inputs.append(self.model.preprocess(tensor[None])[0])
            features = self.model.image_encoder(torch.stack(inputs, dim=0))
            self.encoder_calls += 1
            self.encoder_images += len(chunk)
            embeddings.extend(
                SamEmbedding(features=features[i : i + 1], input_size=sizes[i], original_size=tuple(frame))
                for i, (_, frame) in enumerate(chunk)
            )
        return embeddings

    @torch.no_grad()
    def to_mask_frame(self, values: np.ndarray, embedding: SamEmbedding) -> np.ndarray:
        """A map in the original frame (float [H, W]) → SAM's low-resolution mask frame, float32
        [m, m]: resized like the image (longest side), zero-padded bottom/right, area-averaged."""
        side = self.model.image_encoder.img_size
        low = self.mask_input_size
        resized = F.interpolate(torch.as_tensor(values, dtype=torch.float32)[None, None], size=embedding.input_size,
                                mode="bilinear", align_corners=False)
        padded = F.pad(resized, (0, side - embedding.input_size[1], 0, side - embedding.input_size[0]))
        return F.interpolate(padded, size=(low, low), mode="area")[0, 0].numpy()

    def boxes_to_mask_frame(self, boxes: np.ndarray, embedding: SamEmbedding) -> np.ndarray:
        """Boxes (x0, y0, x1, y1) [N, 4] in the original frame → the same boxes in units of SAM's
        low-resolution mask frame's cells (float64 [N, 4])."""
        scale = self.mask_input_size / self.model.image_encoder.img_size
        resized = self.transform.apply_boxes(np.asarray(boxes, np.float32), embedding.original_size)
        return np.asarray(resized, np.float64).reshape(-1, 4) * scale

    @torch.no_grad()
    def decode(self, embedding: SamEmbedding, boxes: np.ndarray, points: np.ndarray, labels: np.ndarray,
               mask_inputs: np.ndarray | None = None) -> SamMasks:
        """All N components of one image in one mask-decoder call, 3 levels each.

        boxes: float32 [N, 4]; points: float32 [N, P, 2]; labels: int [N, P] (1 foreground,
        −1 padding, which SAM's prompt encoder ignores), all in the original frame.
        mask_inputs: optional float32 [N, m, m] dense mask prompts (logits, SAM's mask frame).
        """
        if len(boxes) == 0:
            raise ValueError("decode needs at least one prompt; skip SAM for images without components")
        original = embedding.original_size
        boxes_t = torch.as_tensor(self.transform.apply_boxes(boxes, original), device=self.device)
        coords = torch.as_tensor(self.transform.apply_coords(points, original), device=self.device)
        labels_t = torch.as_tensor(labels, device=self.device)
        masks = None if mask_inputs is None else torch.as_tensor(mask_inputs, device=self.device)[:, None]
        sparse, dense = self.model.prompt_encoder(points=(coords, labels_t), boxes=boxes_t, masks=masks)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        self.decoder_calls += 1
        return SamMasks(low_res, iou.float().cpu().numpy(), embedding)

    @torch.no_grad()
    def level_probabilities(self, masks: SamMasks, chunk: int = UPSAMPLE_CHUNK
                            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(probs float32 [n, K, H, W] in [0, 1], scores float32 [n, K]) for consecutive groups of at
        most `chunk` components: σ of the mask logits upsampled to the original frame the way
        SamPredictor does (`Sam.postprocess_masks`). Groups keep memory bounded."""
        embedding = masks.embedding
        for start in range(0, len(masks.scores), chunk):
            logits = self.model.postprocess_masks(masks.low_res_logits[start : start + chunk].float(),
                                                  embedding.input_size, embedding.original_size)
            yield torch.sigmoid(logits).cpu().numpy(), masks.scores[start : start + chunk]
