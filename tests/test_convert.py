"""model_store.convert: every official checkpoint format, read safely and converted.

Stand-ins are built the way each official file is, at the `tiny` profile's sizes:
- OpenAI CLIP TorchScript: open_clip's `CLIP` from the tiny config, cast to OpenAI's mixed
  float16 (`convert_weights_to_lp`), given OpenAI's extra 0-d buffers (input_resolution,
  context_length, vocab_size), traced with `torch.jit.trace_module` (forward, encode_image,
  encode_text, as OpenAI's traced models are) and written with `torch.jit.save`;
- an OpenAI-named state dict: `torch.save(torch.jit.load(archive).state_dict())`;
- open_clip hub files: `torch.save(model.state_dict())` (.bin) and safetensors;
- SAM: `torch.save(sam.state_dict())` (.pth) and safetensors.
File names are deliberately unhelpful: formats are detected from content.
"""
from __future__ import annotations

import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipsam.backbones import build_clip, build_sam
from model_store import convert
from model_store.convert import PublishedFile
from model_store.errors import StageError
from model_store.profiles import get_profile
from model_store.stand_ins import write_openai_torchscript

TINY = get_profile("tiny")


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every stand-in file, and the tensors each was made from."""
    out = tmp_path_factory.mktemp("official_formats")
    torch.manual_seed(0)
    clip = build_clip(TINY.clip_config())
    open_clip_state = {k: v.clone() for k, v in clip.state_dict().items()}

    write_openai_torchscript(clip, TINY.clip_config(), out / "clip_model.dat")
    jit_state = _jit_load(out / "clip_model.dat").state_dict()
    torch.save(jit_state, out / "openai_state.weights")
    torch.save(open_clip_state, out / "open_clip_pytorch_model.bin")
    save_file(open_clip_state, str(out / "open_clip_model.st"))

    sam = build_sam(TINY.sam_config)
    sam_state = {k: v.clone() for k, v in sam.state_dict().items()}
    torch.save(sam_state, out / "sam_vit_tiny.pth")
    save_file(sam_state, str(out / "sam.weights"))
    return {
        "dir": out,
        "clip": {"torchscript": (out / "clip_model.dat", jit_state),
                 "openai_state": (out / "openai_state.weights", jit_state),
                 "open_clip_bin": (out / "open_clip_pytorch_model.bin", open_clip_state),
                 "open_clip_safetensors": (out / "open_clip_model.st", open_clip_state)},
        "sam": {"sam_pth": (out / "sam_vit_tiny.pth", sam_state),
                "sam_safetensors": (out / "sam.weights", sam_state)},
    }


CLIP_CASES = ["torchscript", "openai_state", "open_clip_bin", "open_clip_safetensors"]
SAM_CASES = ["sam_pth", "sam_safetensors"]
EXPECTED_FORMAT = {"torchscript": "torchscript", "openai_state": "torch_zip", "open_clip_bin": "torch_zip",
                   "open_clip_safetensors": "safetensors", "sam_pth": "torch_zip", "sam_safetensors": "safetensors"}


def _case(files: dict, name: str) -> tuple[str, Path, dict]:
    role = "clip" if name in CLIP_CASES else "sam"
    path, state = files[role][name]
    return role, path, state


def _sha_for(path: Path, fmt: str) -> str | None:
    """TorchScript stand-ins are not OpenAI's pinned files: the caller vouches for them."""
    return convert.sha256_file(path) if fmt == "torchscript" else None


def _assert_one_line(exc: pytest.ExceptionInfo, flag: str, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(flag + " "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("name", CLIP_CASES + SAM_CASES)
def test_detect_format_from_content(files: dict, name: str, tmp_path: Path) -> None:
    _, path, _ = _case(files, name)
    assert convert.detect_format(path) == EXPECTED_FORMAT[name]
    misnamed = tmp_path / "model.png"
    shutil.copy(path, misnamed)
    assert convert.detect_format(misnamed) == EXPECTED_FORMAT[name]


def test_legacy_torch_save_is_detected_and_read(files: dict, tmp_path: Path) -> None:
    _, _, sam_state = _case(files, "sam_pth")
    legacy = tmp_path / "sam_legacy.pth"
    torch.save(sam_state, legacy, _use_new_zipfile_serialization=False)
    assert convert.detect_format(legacy) == "torch_legacy"
    checkpoint = convert.read_checkpoint(legacy, "sam", TINY)
    assert all(torch.equal(checkpoint.state[k], v.float()) for k, v in sam_state.items())


def test_torchscript_reader_equals_jit_load(files: dict) -> None:
    path, _ = files["clip"]["torchscript"]
    reference = _jit_load(path).state_dict()
    state = convert.read_torchscript_state(path)
    assert list(state) == list(reference)
    for key, tensor in reference.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key
    # OpenAI's layout: mixed precision and the three 0-d extras.
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert state["visual.ln_pre.weight"].dtype == torch.float32
    assert {"input_resolution", "context_length", "vocab_size"} <= set(state)


@pytest.mark.parametrize("name", CLIP_CASES + SAM_CASES)
def test_every_format_converts_and_loads_strictly(files: dict, name: str) -> None:
    role, path, source = _case(files, name)
    fmt = EXPECTED_FORMAT[name]
    checkpoint = convert.read_checkpoint(path, role, "tiny", expected_sha256=_sha_for(path, fmt))
    module = build_clip(TINY.clip_config()) if role == "clip" else build_sam(TINY.sam_config)
    assert set(checkpoint.state) == set(module.state_dict())
    for key, tensor in checkpoint.state.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous(), key
        assert torch.equal(tensor, source[key].float()), key
    module.load_state_dict(checkpoint.state, strict=True)
    assert checkpoint.format == fmt and checkpoint.role == role
    assert checkpoint.sha256 == convert.sha256_file(path)
    if name in ("torchscript", "openai_state"):
        assert set(checkpoint.dropped_keys) == {"input_resolution", "context_length", "vocab_size", "attn_mask"}
    else:
        assert checkpoint.dropped_keys == ()


def test_torchscript_reader_without_buffer_declarations(files: dict, tmp_path: Path) -> None:
    """Archives whose code declares no `__buffers__` (older TorchScript): every tensor attribute counts."""
    path, reference = files["clip"]["torchscript"]
    older = tmp_path / "older.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(older, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".py"):
                data = b"\n".join(line for line in data.split(b"\n") if b"__buffers__" not in line)
            out.writestr(info, data)
    state = convert.read_torchscript_state(older)
    assert set(state) == set(reference) and all(torch.equal(state[k], v) for k, v in reference.items())


def test_malformed_expected_sha256(files: dict) -> None:
    path, _ = files["clip"]["torchscript"]
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "clip", TINY, expected_sha256="abc")
    _assert_one_line(exc, "--clip_sha256", "not a sha256")


def test_requested_dtype_is_kept(files: dict) -> None:
    path, source = files["clip"]["torchscript"]
    kept = convert.read_checkpoint(path, "clip", TINY, expected_sha256=convert.sha256_file(path), dtype=None)
    assert kept.state["visual.conv1.weight"].dtype == torch.float16
    assert kept.state["visual.ln_pre.weight"].dtype == torch.float32
    half = convert.read_checkpoint(path, "clip", TINY, expected_sha256=convert.sha256_file(path), dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in half.state.values())
    assert torch.equal(half.state["visual.ln_pre.weight"], source["visual.ln_pre.weight"].half())


def test_open_clip_training_checkpoint_is_unwrapped(files: dict, tmp_path: Path) -> None:
    _, _, source = _case(files, "open_clip_bin")
    wrapped = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in source.items()}}, wrapped)
    checkpoint = convert.read_checkpoint(wrapped, "clip", TINY)
    assert all(torch.equal(checkpoint.state[k], v) for k, v in source.items())


def test_torchscript_needs_the_published_or_an_explicit_sha256(files: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = files["clip"]["torchscript"]
    sha = convert.sha256_file(path)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "clip", TINY)
    _assert_one_line(exc, "--clip_checkpoint", f"--clip_sha256={sha}")
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "clip", TINY, expected_sha256="0" * 64)
    _assert_one_line(exc, "--clip_checkpoint", "checksum mismatch", sha)
    assert convert.read_checkpoint(path, "clip", TINY, expected_sha256=sha.upper()).sha256_check == "caller"
    monkeypatch.setitem(convert.PUBLISHED_CLIP_TORCHSCRIPT, "tiny", PublishedFile("tiny.pt", "https://x/tiny.pt", sha))
    assert convert.read_checkpoint(path, "clip", TINY).sha256_check == "published:tiny.pt"


def test_published_sha256_are_pinned_per_profile() -> None:
    pins = convert.PUBLISHED_CLIP_TORCHSCRIPT
    assert pins["clipsam-vitb-sam-b"].sha256 == "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    assert pins["clipsam-vitl-sam-h"].sha256 == "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"
    assert all(pin.sha256 in pin.url and pin.url.endswith(pin.name) for pin in pins.values())


# --- wrong input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sam_pth", "sam_safetensors"])
def test_sam_file_given_as_clip(files: dict, name: str) -> None:
    _, path, _ = _case(files, name)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "clip", TINY)
    _assert_one_line(exc, "--clip_checkpoint", "SAM checkpoint", "--sam_checkpoint")


@pytest.mark.parametrize("name", CLIP_CASES)
def test_clip_file_given_as_sam(files: dict, name: str) -> None:
    _, path, _ = _case(files, name)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "sam", TINY, expected_sha256=_sha_for(path, EXPECTED_FORMAT[name]))
    _assert_one_line(exc, "--sam_checkpoint", "CLIP checkpoint", "--clip_checkpoint")


@pytest.mark.parametrize("name", CLIP_CASES)
def test_clip_of_another_size_names_a_telling_tensor(files: dict, name: str) -> None:
    _, path, _ = _case(files, name)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "clip", "clipsam-vitb-sam-b",
                                expected_sha256=_sha_for(path, EXPECTED_FORMAT[name]))
    _assert_one_line(exc, "--clip_checkpoint", "visual.conv1.weight", "[128, 3, 16, 16]", "expected [768, 3, 16, 16]")


@pytest.mark.parametrize("name", SAM_CASES)
def test_sam_of_another_size_names_a_telling_tensor(files: dict, name: str) -> None:
    _, path, _ = _case(files, name)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(path, "sam", "clipsam-vitb-sam-b", flag="--sam_mirror")
    _assert_one_line(exc, "--sam_mirror", "image_encoder.patch_embed.proj.weight", "[96, 3, 16, 16]",
                     "expected [768, 3, 16, 16]")


def test_missing_keys_are_reported(files: dict, tmp_path: Path) -> None:
    _, _, source = _case(files, "sam_pth")
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in source.items() if not k.startswith("mask_decoder.")}, partial)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(partial, "sam", TINY)
    _assert_one_line(exc, "--sam_checkpoint", "missing keys", "mask_decoder.")


@pytest.mark.parametrize("name", CLIP_CASES + SAM_CASES)
def test_truncated_file(files: dict, name: str, tmp_path: Path) -> None:
    role, path, _ = _case(files, name)
    data = path.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    flag = f"--{role}_checkpoint"
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(cut, role, TINY, expected_sha256=convert.sha256_file(cut))
    _assert_one_line(exc, flag, "truncated")


@pytest.mark.parametrize("content,what", [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG image"),
    (b"model weights go here\n", "text file"),
    (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "HTML"),
    (b"", "empty"),
    (b"PK\x03\x04" + b"\0" * 100, "zip"),
])
def test_not_a_checkpoint(tmp_path: Path, content: bytes, what: str) -> None:
    bogus = tmp_path / "ViT-B-16.pt"
    bogus.write_bytes(content)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(bogus, "clip", "clipsam-vitb-sam-b", source="https://mirror/ViT-B-16.pt")
    _assert_one_line(exc, "--clip_checkpoint", "https://mirror/ViT-B-16.pt", what)


def test_zip_that_is_not_pytorch(tmp_path: Path) -> None:
    other = tmp_path / "sam.pth"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(other, "sam", TINY)
    _assert_one_line(exc, "--sam_checkpoint", "not a PyTorch checkpoint")


# --- the restricted unpickler -----------------------------------------------------------------


def _hostile_pickle(module: str, name: str, argument: str) -> bytes:
    """PROTO 2; GLOBAL module name; BINUNICODE argument; TUPLE1; REDUCE; STOP — i.e. module.name(argument)."""
    encoded = argument.encode()
    return (b"\x80\x02" + b"c" + f"{module}\n{name}\n".encode() + b"X" + len(encoded).to_bytes(4, "little")
            + encoded + b"\x85" + b"R" + b".")


def _torchscript_lookalike(path: Path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/code/__torch__/model.py", "class CLIP(Module):\n  __parameters__ = []\n")
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "exec"),
                                         ("subprocess", "getoutput"), ("torch", "load")])
def test_restricted_unpickler_refuses_other_globals(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w')" if name == "exec" else f"touch {marker}"
    hostile = tmp_path / "ViT-B-16.pt"
    _torchscript_lookalike(hostile, _hostile_pickle(module, name, command))
    assert convert.detect_format(hostile) == "torchscript"
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(hostile, "clip", TINY, expected_sha256=convert.sha256_file(hostile))
    _assert_one_line(exc, "--clip_checkpoint", f"refused to load the global {module}.{name}")
    assert not marker.exists()


def test_hostile_pickle_is_really_hostile(tmp_path: Path) -> None:
    """The crafted bytes do run the command under plain pickle, so the test above means something."""
    marker = tmp_path / "ran"
    pickle.loads(_hostile_pickle("os", "system", f"touch {marker}"))
    assert marker.exists()


def test_hostile_plain_torch_zip_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "open_clip_pytorch_model.bin"
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("archive/data.pkl", _hostile_pickle("os", "system", f"touch {marker}"))
        archive.writestr("archive/version", "3\n")
    assert convert.detect_format(hostile) == "torch_zip"
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(hostile, "clip", TINY)
    _assert_one_line(exc, "--clip_checkpoint", "refused", "os.system")
    assert not marker.exists()


def test_storage_outside_its_record_is_refused(files: dict, tmp_path: Path) -> None:
    """A tensor record claiming more elements than its storage holds is refused, not read past."""
    path, _ = files["clip"]["torchscript"]
    forged = tmp_path / "forged.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(forged, "w") as out:
        root = next(n for n in source.namelist() if n.endswith("/data.pkl")).rsplit("/", 1)[0]
        for info in source.infolist():
            data = source.read(info)
            if info.filename == f"{root}/data/0":
                data = data[: len(data) // 2]
            out.writestr(info, data)
    with pytest.raises(StageError) as exc:
        convert.read_checkpoint(forged, "clip", TINY, expected_sha256=convert.sha256_file(forged))
    _assert_one_line(exc, "--clip_checkpoint", "storage record")


# --- writing and provenance -------------------------------------------------------------------


def test_write_safetensors_and_provenance(files: dict, tmp_path: Path) -> None:
    path, _ = files["clip"]["torchscript"]
    checkpoint = convert.read_checkpoint(path, "clip", TINY, expected_sha256=convert.sha256_file(path),
                                         source="https://mirror/ViT-tiny.pt")
    out = tmp_path / "clip.safetensors"
    sha = convert.write_safetensors(checkpoint.state, out, metadata={"profile": "tiny"})
    assert sha == convert.sha256_file(out)
    assert convert.detect_format(out) == "safetensors"
    back = load_file(str(out))
    assert set(back) == set(checkpoint.state)
    assert all(torch.equal(back[k], v) for k, v in checkpoint.state.items())
    build_clip(TINY.clip_config()).load_state_dict(back, strict=True)
    record = convert.provenance(checkpoint, sha)
    assert record == {
        "source": "https://mirror/ViT-tiny.pt",
        "source_format": "torchscript",
        "source_sha256": convert.sha256_file(path),
        "sha256_check": "caller",
        "dropped_keys": ",".join(checkpoint.dropped_keys),
        "converted_sha256": sha,
    }
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_write_safetensors_separates_shared_and_strided_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    state = {"a": base, "b": base, "c": base.view(3, 4).t(), "d": base[2:5]}
    out = tmp_path / "shared.safetensors"
    convert.write_safetensors(state, out)
    back = load_file(str(out))
    assert all(torch.equal(back[k], v) for k, v in state.items())
