"""Writing weights and training state to disk: one writer for every checkpoint of the project."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn


def save_state(state: nn.Module | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a module's state dict (as contiguous CPU tensors, loadable with `weights_only=True`) or
    a mapping as given, atomically: a crash never leaves a partial file at `path`.

    The file is first written under its final name inside a hidden temporary folder beside `path`,
    then renamed: `torch.save` names the archive's records after the file, so the bytes (and the
    sha256 a store records) do not depend on a temporary name.
    """
    path = Path(path)
    if isinstance(state, nn.Module):
        state = {k: v.detach().cpu().contiguous() for k, v in state.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        torch.save(dict(state), scratch / path.name)
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
