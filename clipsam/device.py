"""How work is laid out on the device: autocast and forward-pass sizes.

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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_chunks(items: Sequence[T], device: torch.device) -> Iterator[Sequence[T]]:
    """The slices of `items` that go through the model in one forward pass each."""
    size = len(items) if device.type == "cuda" else 1
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]
