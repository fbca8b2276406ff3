"""How work is laid out on the device: autocast, forward-pass sizes and the optimizer step.

On CPU each image gets its own forward pass. Batched matrix products on CPU choose their
blocking (and so their summation order) by batch size, so an image's scores would change in
the last bits with the images that happen to share its batch, and reruns of the pipeline
(whose batches Beam forms dynamically) would not be bit-identical. A CPU is saturated by one
image anyway. On CUDA the whole batch goes through at once, in bf16 autocast (DESIGN §11),
where batching is what keeps the GPU busy.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")

# torch takes its multi-tensor ("foreach") optimizer step by default only for CUDA tensors. On the
# CPU it leaves bit-identical parameters in about half the time (measured on the tiny CLIP, SAM and
# UMCI), so every trainer here asks for it: `torch.optim.AdamW(..., foreach=FOREACH_STEP)`.
FOREACH_STEP = True


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere (losses stay float32: softmaxes run in float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_chunks(items: Sequence[T], device: torch.device) -> Iterator[Sequence[T]]:
    """The slices of `items` that go through the model in one forward pass each."""
    size = len(items) if device.type == "cuda" else 1
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]
