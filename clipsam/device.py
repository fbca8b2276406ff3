"""How work is laid out on the device: autocast, forward-pass sizes and the optimizer step.

On CPU each image gets its own forward pass, so an image's scores do not depend on which images
share its (dynamically formed) Beam batch and reruns are bit-identical. On CUDA the whole batch
goes through at once, in bf16 autocast (DESIGN §11). Why: docs/decisions.md, "Determinism".
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")

# Every trainer asks for torch's multi-tensor ("foreach") optimizer step, which torch picks by
# default only for CUDA tensors: `torch.optim.AdamW(..., foreach=FOREACH_STEP)`. On the CPU it
# gives the same parameters bit for bit, faster (docs/decisions.md, "Determinism").
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
