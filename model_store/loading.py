"""Turning a store's files into modules: manifest → configs → open_clip / SAM / UMCI + weights.

Every loader returns the model together with the manifest it was built from (digests, profile,
provenance), so the caller can record where its results came from; `clipsam` itself knows
nothing of stores.

Weights are read only from `.safetensors` files, memory-mapped: a model store is remote data, and
unpickling anything from it would be code execution, so no worker-side path opens a pickle
(a torch `.pt` listed in a manifest is refused, naming its URL). Modules are built with their
parameters on the `meta` device and take the mapped tensors as their parameters, so a loaded
stage holds one copy of its weights. Each stage loads only what it needs (stage 1 never loads
SAM, stage 2 never loads CLIP).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch import nn

from clipsam.backbones import build_clip, build_sam, clip_tokenizer
from clipsam.config import ClipSAMConfig
from clipsam.model import ClipSAM
from clipsam.stage1 import RoughMapper
from clipsam.stage2 import MMRRefiner
from clipsam.umci import UMCI
from inputs.decode import read_image

from .convert import detect_format
from .errors import CorruptCheckpointError, StageError, one_line
from .manifest import Manifest
from .store import ModelStore

LOG = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _key_list(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f", ... {len(keys) - shown} more" if len(keys) > shown else "")


def _mismatch(module: nn.Module, state: dict[str, torch.Tensor], exc: Exception) -> str:
    """One short clause for why a state dict does not fit `module`: counts of missing,
    unexpected and wrongly shaped keys with the first few names."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {label} key{'s' if len(keys) > 1 else ''} ({_key_list(keys)})"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shapes)) if keys]
    if parts:
        return "; ".join(parts)
    text = str(exc).strip()
    return one_line(text.splitlines()[0] if text else type(exc).__name__, 200)


NOT_SAFETENSORS = "not a safetensors file; restage it with `python -m model_store stage`"


def read_state_dict(path: Path, url: str) -> dict[str, torch.Tensor]:
    """A verified weight file → state dict of CPU tensors memory-mapped from `path` (no copy is
    made until a tensor is written to), or CorruptCheckpointError (one line) naming the store URL.

    Only `.safetensors` content is read (by its header, whatever the file's name); anything else,
    a torch pickle included, is refused without being opened by an unpickler.
    """
    try:
        fmt = detect_format(path, source=url)
    except StageError:
        fmt = None
    if fmt != "safetensors":
        raise CorruptCheckpointError(f"cannot read checkpoint {url}: {NOT_SAFETENSORS}") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on bad headers
        raise CorruptCheckpointError(f"cannot read checkpoint {url}: corrupt safetensors file "
                                     f"({one_line(exc, 160)})") from None
    if not state:
        raise CorruptCheckpointError(f"checkpoint {url} holds no tensors") from None
    return state


class _ParametersOnMeta:
    """While entered (in this thread), every parameter a module registers is replaced by a
    `meta` tensor of its shape and dtype: construction allocates (and randomly initialises) at
    most one parameter at a time and keeps none, while buffers are built on the CPU as the
    module's code computes them (open_clip's causal `attn_mask`, SAM's `pixel_mean`, ...), so
    the non-persistent ones a state dict does not carry come out right."""

    _local = threading.local()
    _lock = threading.Lock()
    _users = 0
    _original = staticmethod(nn.Module.register_parameter)

    @staticmethod
    def _register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        _ParametersOnMeta._original(module, name, param)
        if param is not None and getattr(_ParametersOnMeta._local, "active", False) and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    def __enter__(self) -> "_ParametersOnMeta":
        cls = type(self)
        with cls._lock:
            if cls._users == 0:
                nn.Module.register_parameter = cls._register
            cls._users += 1
        cls._local.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        cls = type(self)
        cls._local.active = False
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                nn.Module.register_parameter = cls._original


def build_empty(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with its parameters on the `meta` device (no memory) and its buffers on the CPU:
    the module `load_weights` fills with mapped tensors."""
    with _ParametersOnMeta():
        return build()


def _in_module_dtypes(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """`state` with floating tensors stored in another floating dtype than the module's (a
    half-precision store) cast to the module's dtype; the others untouched (still mapped)."""
    expected = {k: v.dtype for k, v in module.state_dict().items()}
    return {k: v.to(expected[k]) if k in expected and v.is_floating_point() and expected[k].is_floating_point
            and v.dtype != expected[k] else v for k, v in state.items()}


def load_weights(module: nn.Module | Callable[[], nn.Module], store: ModelStore, manifest: Manifest,
                 role: str) -> nn.Module:
    """Fetch, verify and load one role's weights (strict) into a module.

    `module`: a factory (e.g. `lambda: build_sam(config)`), built with `build_empty` so that the
    module's parameters are the memory-mapped tensors of the verified file itself (one copy of the
    weights in memory, `load_state_dict(assign=True)`); or an already-built module, whose
    parameters are filled in place (a copy). Floating tensors stored in another precision than the
    module's are cast to it (`make-random --dtype=fp16` stores; those tensors are copies). Any tensor left on `meta` after loading (a
    parameter the file lacks) is a CorruptCheckpointError, like missing or unexpected keys.
    """
    url = store.url(manifest.profile, manifest.files[role].name) if role in manifest.files else store.url(manifest.profile)
    path = store.fetch(manifest, role)
    assign = not isinstance(module, nn.Module)
    if assign:
        module = build_empty(module)
    state = _in_module_dtypes(read_state_dict(path, url), module)
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CorruptCheckpointError(
            f"checkpoint {url} does not match the {role} config in the manifest: {_mismatch(module, state, exc)}"
        ) from None
    left = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if left:
        raise CorruptCheckpointError(f"checkpoint {url} leaves {len(left)} tensors of the {role} model unset "
                                     f"({_key_list(left)})") from None
    return module


def open_profile(url: str, profile: str, overrides: dict[str, Any] | None = None
                 ) -> tuple[ModelStore, Manifest, ClipSAMConfig]:
    """The store at `url`, the profile's manifest, and its method config with `overrides`
    ({section: {field: value}}, see `ClipSAMConfig.replace`) applied."""
    store = ModelStore(url)
    manifest = store.read_manifest(profile)
    config = ClipSAMConfig.from_dict(manifest.clipsam_config)
    return store, manifest, config.replace(**overrides) if overrides else config


def load_stage1(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None
                ) -> tuple[RoughMapper, Manifest]:
    """Stage 1 (CLIP + UMCI) of a profile, weights verified and loaded, and its manifest."""
    store, manifest, config = open_profile(url, profile, overrides)
    device = device or default_device()
    clip = load_weights(lambda: build_clip(manifest.clip_config), store, manifest, "clip")
    umci = load_weights(lambda: UMCI(config.umci), store, manifest, "umci")
    LOG.info("loaded stage 1 of profile %s from %s on %s", profile, url, device)
    return RoughMapper(clip, clip_tokenizer(manifest.clip_config), umci, config, device=device), manifest


def load_stage2(url: str, profile: str, device: str | None = None, *, overrides: dict[str, Any] | None = None
                ) -> tuple[MMRRefiner, Manifest]:
    """Stage 2 (SAM + MMR) of a profile, weights verified and loaded, and its manifest."""
    store, manifest, config = open_profile(url, profile, overrides)
    device = device or default_device()
    sam = load_weights(lambda: build_sam(manifest.sam_config), store, manifest, "sam")
    LOG.info("loaded stage 2 of profile %s from %s on %s", profile, url, device)
    return MMRRefiner(sam, config.mmr, device=device, tiling=config.tile), manifest


def load_clipsam(url: str, profile: str = "tiny", device: str | None = None, *,
                 overrides: dict[str, Any] | None = None) -> tuple[ClipSAM, Manifest]:
    """Both stages of a profile, and its manifest: `model, manifest = load_clipsam(url, "tiny")`.

    The model reads paths and URLs given to `predict` with `inputs.read_image`, the pipeline's
    reader and decoder (`clipsam` itself reads no files), so a notebook prediction of a file sees
    the pixels and decode notes the pipeline's record of that file has.
    """
    stage1, manifest = load_stage1(url, profile, device, overrides=overrides)
    stage2, _ = load_stage2(url, profile, device, overrides=overrides)
    return ClipSAM(stage1, stage2, image_reader=read_image), manifest
