"""Writing weights and training state to disk: one writer for every checkpoint of the project.

Weight files (everything a model store receives) are `.safetensors`: tensors only, read by
workers memory-mapped, never unpickled. Training-resume checkpoints (optimizer state, epoch
counters) stay `torch.save` files, read back only by the trainer with `weights_only=True`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

SAFETENSORS_SUFFIX = ".safetensors"


def plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as detached, contiguous CPU tensors, none sharing memory with another (tied or
    sliced tensors are copied apart; safetensors stores each tensor on its own)."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"a weight file holds str → tensor only; entry {name!r} is a {type(tensor).__name__}")
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if tensor.numel() and (storage.data_ptr() in seen
                               or storage.nbytes() != tensor.numel() * tensor.element_size()):
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def save_state(state: nn.Module | Mapping[str, Any], path: str | os.PathLike, *,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Save a module's state dict, or a mapping, atomically: a crash never leaves a partial file
    at `path`.

    `path` ending in `.safetensors`: a weight file, tensors only (`plain_tensors`: contiguous CPU,
    shared memory copied apart; TypeError for any non-tensor entry), with optional str → str
    `metadata` in its header; the same tensors give the same bytes. Any other suffix: `torch.save`
    of the mapping as given (a module becomes its state dict of contiguous CPU tensors), loadable
    with `weights_only=True` when it holds only tensors and plain containers; `metadata` is not
    allowed there.

    The file is first written under its final name inside a hidden temporary folder beside `path`,
    then renamed (`os.replace`): `torch.save` names the archive's records after the file, so the
    bytes (and the sha256 a store records) do not depend on a temporary name.
    """
    path = Path(path)
    safetensors = path.name.endswith(SAFETENSORS_SUFFIX)
    if isinstance(state, nn.Module):
        state = state.state_dict()
        if not safetensors:
            state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if safetensors:
        state = plain_tensors(state)
    elif metadata:
        raise ValueError(f"metadata is stored only in .safetensors files, not in {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        if safetensors:
            from safetensors.torch import save_file

            save_file(state, str(scratch / path.name), metadata=dict(metadata) if metadata else None)
        else:
            torch.save(dict(state), scratch / path.name)
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
