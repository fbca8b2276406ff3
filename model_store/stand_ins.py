"""Stand-ins for the official checkpoint files: seeded random weights at a profile's real shapes,
written the way each official file is. For tests and benchmarks of `stage`; never real weights.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def write_openai_torchscript(clip: nn.Module, clip_config: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """Write `clip` (an open_clip `CLIP`, left unchanged) as OpenAI publishes its CLIP files: cast
    to OpenAI's mixed float16, with OpenAI's 0-d buffers (input_resolution, context_length,
    vocab_size), traced with `torch.jit.trace_module` (forward, encode_image, encode_text) and
    written with `torch.jit.save`. Returns the archive's state dict: OpenAI's names, what a
    converter must reproduce and what `torch.save(jit.load(path).state_dict())` writes."""
    from open_clip.model import convert_weights_to_lp

    openai = copy.deepcopy(clip)
    convert_weights_to_lp(openai)
    size = clip_config["vision_cfg"]["image_size"]
    context = clip_config["text_cfg"].get("context_length", 77)
    for name, value in (("input_resolution", size), ("context_length", context),
                        ("vocab_size", clip_config["text_cfg"].get("vocab_size", 49408))):
        if hasattr(openai, name):  # open_clip keeps the last two as plain ints
            delattr(openai, name)
        openai.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, size, size, dtype=torch.float16)
    text = torch.zeros(1, context, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            openai, {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)}, check_trace=False)
        torch.jit.save(traced, str(path))
    return {k: v.detach().clone() for k, v in traced.state_dict().items()}
