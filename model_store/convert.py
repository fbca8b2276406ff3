"""Reading the checkpoint files users actually hold, safely, and converting them to plain state dicts.

`stage` is handed whatever a person downloaded: OpenAI's CLIP TorchScript archives
(`ViT-B-16.pt`, `ViT-L-14-336px.pt`), OpenAI-named state dicts saved with `torch.save`, open_clip
hub files (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`), SAM's official
`sam_vit_{b,l,h}_*.pth` or a safetensors file with SAM's keys. This module recognises each from
the file's content (never its name), reads its tensors without executing anything from the file,
checks that they are the model the profile describes, and returns a state dict that loads with
`load_state_dict(strict=True)` into `build_clip(profile.clip_config())` or
`build_sam(profile.sam_config)`.

Container formats (`detect_format`):
    "torchscript"   a `torch.jit.save` zip: `<root>/data.pkl`, `<root>/data/<n>` and
                    `<root>/constants.pkl` or `<root>/code/...`. Read by `read_torchscript_state`
                    with a restricted unpickler; the archive's code is never run (only its
                    `__parameters__` / `__buffers__` declarations are read, as text).
    "torch_zip"     a `torch.save` zip (`<root>/data.pkl`, no code): `torch.load(weights_only=True)`.
    "torch_legacy"  a pre-zip `torch.save` pickle: `torch.load(weights_only=True)`.
    "safetensors"   8-byte little-endian header length, JSON header, raw data; `safetensors.torch`.

Every wrong input raises `StageError` with a single-line message that names the command-line
flag the file came from (`--clip_checkpoint`, `--sam_checkpoint`, ...).

The OpenAI TorchScript files are pinned to their published sha256 per profile
(`PUBLISHED_CLIP_TORCHSCRIPT`); any other TorchScript archive is read only when the caller passes
its sha256 explicitly (`expected_sha256`, the `--clip_sha256` flag), and the checkpoint records
which of the two vouched for it.
"""
from __future__ import annotations

import ast
import collections
import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from clipsam.backbones import build_clip, build_sam
from clipsam.checkpoint import SAFETENSORS_SUFFIX, save_state

from .errors import StageError, one_line
from .profiles import PROFILES, Profile, get_profile
from .store import sha256_file

ROLES = ("clip", "sam")
FORMATS = ("torchscript", "torch_zip", "torch_legacy", "safetensors")
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit


@dataclass(frozen=True)
class PublishedFile:
    """One official file: its published name, URL and sha256."""

    name: str
    url: str
    sha256: str


# OpenAI's CLIP TorchScript archives, keyed by profile name (profiles.py has no per-profile slot
# for them). The sha256 is part of OpenAI's own URL.
PUBLISHED_CLIP_TORCHSCRIPT: dict[str, PublishedFile] = {
    "clipsam-vitb-sam-b": PublishedFile(
        "ViT-B-16.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    ),
    "clipsam-vitl-sam-h": PublishedFile(
        "ViT-L-14-336px.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
    ),
}

# Entries of an OpenAI-named CLIP state dict that are not weights of open_clip's `CLIP`: OpenAI's
# JIT models carry the first three as 0-d tensors, and TorchScript keeps open_clip's
# non-persistent `attn_mask` buffer. They are dropped only when the target model lacks them.
CLIP_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

# Keys whose shapes tell architectures apart, checked first so a mismatch names the telling one.
TELLING_KEYS = {
    "clip": ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
             "token_embedding.weight", "positional_embedding"),
    "sam": ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "image_encoder.neck.0.weight",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
}
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
CLIP_MARKERS = ("visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight")
HF_CLIP_PREFIXES = ("vision_model.", "text_model.")


@dataclass
class Checkpoint:
    """A checkpoint read and converted by `read_checkpoint`.

    state: tensor name → CPU tensor, exactly the keys of the profile's module, every shape equal to
        the module's; floating tensors in the requested dtype.
    role: "clip" or "sam". format: one of FORMATS (the container, see `detect_format`).
    source: the URL or file name it came from (as given to `read_checkpoint`).
    sha256: the source file's sha256.
    sha256_check: who vouched for the file's bytes: "published:<file name>" (OpenAI's pinned
        sha256), "caller" (an explicit expected sha256 matched) or "none".
    dropped_keys: source entries that are not weights of the module (e.g. `input_resolution`).
    """

    state: dict[str, torch.Tensor]
    role: str
    format: str
    source: str
    sha256: str
    sha256_check: str
    dropped_keys: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(path: str | os.PathLike, *, flag: str = "checkpoint", source: str | None = None) -> str:
    """The container format of the file at `path`, from its bytes: one of FORMATS.

    Keys on: a zip (local-file signature `PK\\x03\\x04` and a readable central directory) with one
    `<root>/data.pkl` → "torchscript" when `<root>/constants.pkl` or `<root>/code/` is present,
    else "torch_zip"; a pickle opcode stream (`\\x80` protocol byte 2-5) → "torch_legacy"; a
    little-endian u64 header length followed by a JSON object whose tensors' data offsets end
    exactly at the end of the file → "safetensors".

    Raises StageError (one line, naming `flag` and `source` or the file name) for an empty, truncated
    or unreadable file and for anything else (an image, a text or HTML page, ...).
    """
    path = Path(path)
    where = f"{flag} {source or path.name}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise StageError(f"{where}: cannot read the file ({one_line(exc, 120)})") from None
    if size == 0:
        raise StageError(f"{where}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, where)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch_legacy"
    if _is_safetensors(path, head, size, where):
        return "safetensors"
    raise StageError(f"{where}: not a checkpoint: {_what_is(head)}")


def _zip_kind(path: Path, where: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise StageError(f"{where}: truncated or corrupt zip archive ({one_line(exc, 120)})") from None
    root = _archive_root(names)
    if root is None:
        raise StageError(f"{where}: a zip file but not a PyTorch checkpoint (it has no <root>/data.pkl)")
    if root + "constants.pkl" in names or any(n.startswith(root + "code/") for n in names):
        return "torchscript"
    return "torch_zip"


def _archive_root(names: list[str]) -> str | None:
    """The `<root>/` prefix of a PyTorch zip archive (the folder holding data.pkl), or None."""
    roots = [n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    return roots[0] if len(roots) == 1 else None


def _is_safetensors(path: Path, head: bytes, size: int, where: str) -> bool:
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_SAFETENSORS_HEADER:
        return False
    if header_len > size - 8:
        raise StageError(f"{where}: truncated safetensors file (header of {header_len} bytes, file of {size})")
    with open(path, "rb") as handle:
        handle.seek(8)
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False
    data_len = size - 8 - header_len
    if max(ends, default=0) > data_len:
        raise StageError(f"{where}: truncated safetensors file (tensors need {max(ends)} data bytes, "
                         f"the file has {data_len})")
    return True


def _what_is(head: bytes) -> str:
    signatures = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                  b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF document", b"7z\xbc\xaf": "a 7z archive"}
    for magic, what in signatures.items():
        if head.startswith(magic):
            return what
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "an HTML/XML page (an error page saved in place of the download?)"
    if text.startswith((b"version https://git-lfs", b"version")):
        return "a Git LFS pointer, not the file it points to"
    try:
        head.decode("utf-8")
        return f"a text file starting {head[:24].decode('utf-8', 'replace')!r}"
    except UnicodeDecodeError:
        return f"unrecognised content starting {head[:8]!r}"


# ---------------------------------------------------------------------------------------------
# TorchScript archives, read without running them


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class RefusedPickle(Exception):
    """A pickle asked for something the restricted unpickler does not provide."""


@dataclass(frozen=True)
class _StorageKind:
    dtype: torch.dtype


class _ScriptObject:
    """Stand-in for a TorchScript class instance (`__torch__.*`): keeps its pickled state only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


def _script_class(qualname: str) -> type:
    return type("ScriptObject", (_ScriptObject,), {"qualname": qualname})


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor) or not _ints(size) or not _ints(stride) or len(size) != len(stride) \
            or not isinstance(offset, int) or offset < 0:
        raise RefusedPickle("malformed tensor record")
    if any(s == 0 for s in size):
        return torch.empty(tuple(size), dtype=storage.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if any(st < 0 for st in stride) or last >= storage.numel():
        raise RefusedPickle(f"tensor of shape {list(size)} lies outside its storage of {storage.numel()} elements")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _ints(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_parameter(data: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise RefusedPickle("malformed parameter record")
    return data


def _first(value: Any, *_rest: Any) -> Any:
    return value


def _as_list(value: Any, *_rest: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


# (module, name) → what the restricted unpickler hands back. Nothing here runs code from the file.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _first,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl`: tensors, containers and `__torch__.*` module stand-ins.

    Any other global (os.system, builtins.eval, torch functions, ...) raises RefusedPickle before
    it is looked up, so nothing named by the file is imported or called.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._storages: dict[str, torch.Tensor] = {}
        self._script_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            return self._script_classes.setdefault(qualname, _script_class(qualname))
        raise RefusedPickle(f"refused to load the global {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageKind) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise RefusedPickle(f"unexpected persistent id {one_line(repr(pid), 80)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise RefusedPickle(f"bad storage key {key!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, kind.dtype, numel)
        storage = self._storages[key]
        if storage.dtype != kind.dtype:
            raise RefusedPickle(f"storage {key} read as two dtypes")
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self._root}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise RefusedPickle(f"missing storage record {name}") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != numel * itemsize:
            raise RefusedPickle(f"storage record {name} has {info.file_size} bytes, expected {numel * itemsize}")
        raw = torch.empty(info.file_size, dtype=torch.uint8)
        if info.file_size:
            with self._archive.open(info) as handle:
                view = memoryview(raw.numpy())
                got = 0
                while got < info.file_size:
                    n = handle.readinto(view[got:])
                    if not n:
                        raise RefusedPickle(f"storage record {name} is truncated")
                    got += n
        return raw.view(dtype)


_DECLARATION = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_CLASS = re.compile(r"^class\s+([A-Za-z_][A-Za-z_0-9]*)\s*\(\s*Module\s*\)\s*:")


def _module_declarations(archive: zipfile.ZipFile, root: str) -> dict[str, set[str] | None]:
    """`__torch__.pkg.Class` → names of its parameters and buffers, read as text from the archive's
    `code/` files (never compiled or executed); None for a class that declares no `__buffers__`
    (then all its tensor attributes count). Only classes declared `(Module)` are listed."""
    declared: dict[str, set[str]] = {}
    has_buffers: set[str] = set()
    prefix = root + "code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix): -len(".py")].replace("/", ".")
        current: str | None = None
        for line in archive.read(name).decode("utf-8", "replace").splitlines():
            match = _CLASS.match(line)
            if match:
                current = f"{module}.{match.group(1)}"
                declared[current] = set()
                continue
            if line and not line[0].isspace():
                current = None
                continue
            match = _DECLARATION.match(line)
            if current and match:
                try:
                    names = ast.literal_eval(match.group(2))
                except (ValueError, SyntaxError):
                    continue
                declared[current].update(n for n in names if isinstance(n, str))
                if match.group(1) == "__buffers__":
                    has_buffers.add(current)
    return {name: (names if name in has_buffers else None) for name, names in declared.items()}


def read_torchscript_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors `torch.jit.load(path).state_dict()` would return (same names, dtypes, values;
    floating tensors keep the archive's dtype), read without running the archive.

    Walks the unpickled module tree of `<root>/data.pkl`: a module's tensors are those its class
    declares in `__parameters__` / `__buffers__` in the archive's `code/` (all of its tensor
    attributes when the archive declares no `__buffers__` for it); submodules are attributes holding
    `__torch__.*` objects.

    Raises RefusedPickle for a pickle that references any global other than tensor rebuilding,
    storage types, OrderedDict, TorchScript's list helpers and `__torch__.*` classes, or whose
    storages do not match their records; zipfile / OSError for an unreadable archive.
    """
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive.namelist())
        if root is None:
            raise RefusedPickle("no <root>/data.pkl in the archive")
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder").strip() != b"little":
            raise RefusedPickle("big-endian archives are not supported")
        declared = _module_declarations(archive, root)
        top = _RestrictedUnpickler(archive.read(root + "data.pkl"), archive, root).load()
    if not isinstance(top, _ScriptObject):
        raise RefusedPickle(f"data.pkl holds a {type(top).__name__}, not a TorchScript module")
    state: dict[str, torch.Tensor] = {}
    _collect(top, "", declared, state, depth=0)
    return state


def _collect(obj: _ScriptObject, prefix: str, declared: dict[str, set[str] | None], out: dict[str, torch.Tensor],
             depth: int) -> None:
    if depth > 64:
        raise RefusedPickle("module tree nested too deeply")
    tensors = declared.get(getattr(obj, "qualname", ""))
    for name, value in obj.state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor) and (tensors is None or name in tensors):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject) and (not declared or value.qualname in declared):
            _collect(value, f"{prefix}{name}.", declared, out, depth + 1)


# ---------------------------------------------------------------------------------------------
# Reading and converting


def _torch_load(path: Path, fmt: str, where: str) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch_zip")
    except Exception as exc:  # noqa: BLE001 - torch.load raises many unrelated types on bad input
        text = str(exc)
        if "Weights only load failed" in text or "WeightsUnpickler error" in text:
            lines = [line.strip() for line in text.splitlines()[1:] if line.strip()
                     and not line.strip().startswith(("Check the documentation", "Please file an issue"))]
            reason = lines[0].split("WeightsUnpickler error:", 1)[-1].strip() if lines else "unsupported content"
            raise StageError(f"{where}: refused by the tensors-only loader ({one_line(reason, 160)}); "
                             "nothing from it was run") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise StageError(f"{where}: truncated or corrupt checkpoint ({one_line(first, 160)})") from None
    return _unwrap(loaded, where)


def _unwrap(loaded: Any, where: str) -> dict[str, torch.Tensor]:
    """A state dict from what a checkpoint file holds: the dict itself, or its "state_dict" /
    "model" entry (training checkpoints), with a DataParallel `module.` prefix removed."""
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        raise StageError(f"{where}: holds a {type(loaded).__name__}, not a state dict of tensors")
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise StageError(f"{where}: not a state dict of tensors (entry {one_line(repr(bad[0]), 60)} is not a tensor)")
    state = dict(loaded)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise StageError(f"{where}: corrupt safetensors file ({one_line(exc, 160)})") from None


def read_raw_state(path: str | os.PathLike, fmt: str, *, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a file of container format `fmt` (from `detect_format`), unconverted: names,
    dtypes and values as stored. StageError (one line, prefixed with `where`) when unreadable."""
    path = Path(path)
    if fmt == "torchscript":
        try:
            return read_torchscript_state(path)
        except RefusedPickle as exc:
            raise StageError(f"{where}: unsafe or malformed TorchScript archive ({one_line(exc, 160)}); "
                             "nothing from it was run") from None
        except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, ValueError, RuntimeError) as exc:
            raise StageError(f"{where}: truncated or corrupt TorchScript archive ({one_line(exc, 160)})") from None
    if fmt in ("torch_zip", "torch_legacy"):
        return _torch_load(path, fmt, where)
    if fmt == "safetensors":
        return _read_safetensors(path, where)
    raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")


def identify_role(state: Mapping[str, Any]) -> str | None:
    """Which model a state dict's names belong to: "sam" (keys under image_encoder. /
    prompt_encoder. / mask_decoder.), "clip" (OpenAI / open_clip names: visual.conv1.weight,
    visual.proj, text_projection or token_embedding.weight), "hf_clip" (Hugging Face transformers
    names: vision_model. / text_model.), or None."""
    keys = list(state)
    if any(k.startswith(SAM_PREFIXES) for k in keys):
        return "sam"
    if any(k in CLIP_MARKERS for k in keys):
        return "clip"
    if any(k.startswith(HF_CLIP_PREFIXES) for k in keys):
        return "hf_clip"
    return None


@lru_cache(maxsize=8)
def _expected_shapes(profile_name: str, role: str) -> dict[str, tuple[int, ...]]:
    profile = get_profile(profile_name)
    return expected_shapes(profile, role)


def expected_shapes(profile: Profile, role: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the profile's CLIP or SAM state dict, from a module built on the meta device
    (no memory, no weights)."""
    with torch.device("meta"):
        module = build_clip(profile.clip_config()) if role == "clip" else build_sam(profile.sam_config)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _published_match(sha: str) -> tuple[str, PublishedFile] | None:
    for name, published in PUBLISHED_CLIP_TORCHSCRIPT.items():
        if published.sha256 == sha:
            return name, published
    return None


def _check_fit(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], role: str, profile: Profile,
               where: str, sha: str) -> None:
    shaped = [k for k in TELLING_KEYS[role] if k in state and k in expected] + list(expected)
    for key in shaped:
        if key in state and tuple(state[key].shape) != expected[key]:
            known = _published_match(sha)
            hint = f" (it is OpenAI's {known[1].name}, the file of profile {known[0]})" if known else ""
            raise StageError(f"{where}: a {role.upper()} of another size than profile {profile.name}{hint}: "
                             f"{key} has shape {list(state[key].shape)}, expected {list(expected[key])}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(keys)} {label} key{'s' if len(keys) > 1 else ''} ({', '.join(keys[:3])}"
                 f"{', ...' if len(keys) > 3 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise StageError(f"{where}: does not fit profile {profile.name}'s {role.upper()}: {'; '.join(parts)}")


def read_checkpoint(
    path: str | os.PathLike,
    role: str,
    profile: str | Profile,
    *,
    flag: str | None = None,
    source: str | None = None,
    expected_sha256: str | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> Checkpoint:
    """Read any supported checkpoint file for `role` ("clip" or "sam") of `profile` and convert it.

    path: a local file in one of FORMATS (detected from its content, see `detect_format`).
    flag: the command-line flag the file came from, named in every error (default
        `--<role>_checkpoint`). source: the URL or name to report (default: the file name).
    expected_sha256: the file's sha256 as the caller vouches for it (the `--<role>_sha256` flag);
        when given, any other sha256 is an error. A TorchScript archive is accepted only if its
        sha256 is OpenAI's published one for `profile` (PUBLISHED_CLIP_TORCHSCRIPT) or equals
        `expected_sha256` (recorded in `Checkpoint.sha256_check`).
    dtype: floating tensors are cast to it (float32 by default); None keeps the stored dtypes
        (OpenAI's archives are mixed float16 / float32). Integer tensors are never cast.

    Returns a Checkpoint whose `state` has exactly the keys and shapes of
    `build_clip(profile.clip_config())` / `build_sam(profile.sam_config)`, as contiguous CPU
    tensors; OpenAI's extra entries (input_resolution, context_length, vocab_size) and a
    TorchScript `attn_mask` are dropped. The TorchScript reader never runs the archive's code.

    Raises StageError, one line naming `flag`, for: a file that is not a checkpoint or is truncated;
    a TorchScript pickle referencing anything but tensors and module stand-ins; a checksum that
    differs from `expected_sha256`; an unpinned TorchScript archive without `expected_sha256`; a
    SAM checkpoint given as CLIP or the reverse; a model of another size (naming one tensor with
    its found and expected shape); missing or unexpected keys. A malformed `expected_sha256` raises
    StageError naming the sha256 flag instead. ValueError for a `role` outside ROLES.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    profile = get_profile(profile) if isinstance(profile, str) else profile
    flag = flag or f"--{role}_checkpoint"
    sha_flag = flag.replace("_checkpoint", "_sha256") if flag.endswith("_checkpoint") else f"--{role}_sha256"
    path = Path(path)
    where = f"{flag} {source or path.name}"
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise StageError(f"{sha_flag} {expected_sha256!r}: not a sha256 (64 hexadecimal digits)")
    fmt = detect_format(path, flag=flag, source=source)
    sha = sha256_file(path)
    if expected_sha256 and sha != expected_sha256.lower():
        raise StageError(f"{where}: checksum mismatch: sha256 is {sha}, {sha_flag} says {expected_sha256.lower()}")
    raw = read_raw_state(path, fmt, where=where)

    found = identify_role(raw)
    other = "sam" if role == "clip" else "clip"
    if found == other:
        telltale = "image_encoder.*, mask_decoder.*" if found == "sam" else "visual.*, text_projection"
        raise StageError(f"{where}: this is a {found.upper()} checkpoint (keys {telltale}), not a {role.upper()} one; "
                         f"pass it as --{found}_checkpoint")
    if found == "hf_clip":
        raise StageError(f"{where}: Hugging Face transformers CLIP names (vision_model.*, text_model.*) are not "
                         "supported; use OpenAI's .pt or open_clip's open_clip_pytorch_model.bin / "
                         "open_clip_model.safetensors")
    if found is None:
        raise StageError(f"{where}: not a {role.upper()} state dict (no {role.upper()} keys; first key "
                         f"{one_line(next(iter(raw)), 60)!r})")

    expected = _expected_shapes(profile.name, role) if PROFILES.get(profile.name) is profile \
        else expected_shapes(profile, role)
    dropped = tuple(k for k in raw if role == "clip" and k in CLIP_NON_WEIGHT_KEYS and k not in expected)
    for key in dropped:
        del raw[key]
    _check_fit(raw, expected, role, profile, where, sha)

    check = "none"
    if expected_sha256:
        check = "caller"
    if fmt == "torchscript":
        published = PUBLISHED_CLIP_TORCHSCRIPT.get(profile.name) if role == "clip" else None
        if published and sha == published.sha256:
            check = f"published:{published.name}"
        elif not expected_sha256:
            pinned = f"OpenAI's published {published.name} (sha256 {published.sha256})" if published else \
                f"a published file for profile {profile.name} (none is pinned)"
            raise StageError(f"{where}: TorchScript archive with sha256 {sha} is not {pinned}; "
                             f"to accept it, pass {sha_flag}={sha}")

    state = {k: _convert(v, dtype) for k, v in raw.items()}
    return Checkpoint(state=state, role=role, format=fmt, source=source or path.name, sha256=sha,
                      sha256_check=check, dropped_keys=dropped)


def _convert(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach()
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.contiguous()


# ---------------------------------------------------------------------------------------------
# Writing and provenance


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> str:
    """Write `state` to `path` as .safetensors with `clipsam.checkpoint.save_state` (contiguous CPU
    tensors, tensors that share memory copied apart, atomic); returns its sha256.
    `metadata`: optional str → str pairs stored in the header."""
    if not str(path).endswith(SAFETENSORS_SUFFIX):
        raise ValueError(f"write_safetensors writes .safetensors files, not {Path(path).name}")
    return sha256_file(save_state(state, path, metadata=metadata))


def provenance(checkpoint: Checkpoint, converted_sha256: str | None = None) -> dict[str, str]:
    """JSON-able record of a conversion: source (URL or file name), source_format, source_sha256,
    sha256_check (see Checkpoint), dropped_keys (comma-separated) and converted_sha256 (when given)."""
    record = {
        "source": checkpoint.source,
        "source_format": checkpoint.format,
        "source_sha256": checkpoint.sha256,
        "sha256_check": checkpoint.sha256_check,
    }
    if checkpoint.dropped_keys:
        record["dropped_keys"] = ",".join(checkpoint.dropped_keys)
    if converted_sha256:
        record["converted_sha256"] = converted_sha256
    return record
