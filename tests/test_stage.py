"""`python -m model_store stage`: every official format, from an HTTP server, a relative path and a
file:// URL, converted to .safetensors with provenance; every wrong input is one line naming its flag.

The stand-ins are tests/test_convert.py's (`files`): tiny-profile-size files written the way each
official file is (OpenAI TorchScript archive, OpenAI-named state dict, open_clip .bin and
safetensors, SAM .pth and safetensors). The TorchScript stand-in is not OpenAI's published file,
so it is staged with its own sha256 as `--clip_sha256`, or with a pinned entry patched in for
`tiny`. The HTTP server is `http.server` on 127.0.0.1 in a daemon thread.
"""
from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipsam.backbones import build_clip, build_sam
from clipsam.umci import UMCI
from model_store import convert
from model_store import stage as stage_module
from model_store.__main__ import main
from model_store.convert import PublishedFile
from model_store.errors import StageError
from model_store.profiles import PROFILES, get_profile
from model_store.stage import stage
from model_store.store import ModelStore

from .conftest import REPO
from .test_convert import files  # noqa: F401 - the stand-in files fixture, shared

TINY = get_profile("tiny")
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
FORMAT = {"torchscript": "torchscript", "openai_state": "torch_zip", "open_clip_bin": "torch_zip",
          "open_clip_safetensors": "safetensors", "sam_pth": "torch_zip", "sam_safetensors": "safetensors",
          "umci_safetensors": "safetensors", "umci_pt": "torch_zip"}


@pytest.fixture(scope="module")
def stand_ins(files: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    """The stand-ins copied under their official-looking names into a folder the server serves,
    plus UMCI weights and broken files; name → (path, source tensors)."""
    root = tmp_path_factory.mktemp("mirror")
    names = {"torchscript": "ViT-tiny.pt", "openai_state": "openai_state_dict.pt",
             "open_clip_bin": "open_clip_pytorch_model.bin", "open_clip_safetensors": "open_clip_model.safetensors",
             "sam_pth": "sam_vit_tiny.pth", "sam_safetensors": "sam_vit_tiny.safetensors"}
    out = {}
    for case, name in names.items():
        role = "sam" if case.startswith("sam") else "clip"
        path, state = files[role][case]
        shutil.copy(path, root / name)
        out[case] = (root / name, state)
    torch.manual_seed(1)
    umci = {k: v.clone() for k, v in UMCI(TINY.clipsam_config.umci).state_dict().items()}
    save_file(umci, str(root / "umci.safetensors"))
    torch.save(umci, root / "umci.pt")
    out["umci_safetensors"] = (root / "umci.safetensors", umci)
    out["umci_pt"] = (root / "umci.pt", umci)
    sam_bytes = (root / names["sam_pth"]).read_bytes()
    (root / "sam_cut.pth").write_bytes(sam_bytes[: len(sam_bytes) // 2])
    (root / "notes.pt").write_bytes(b"<!DOCTYPE html><html><body>Sign in to continue</body></html>")
    out["root"] = root
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folder; `/cut/<name>` announces the file's full size and sends half of it."""

    timeout = 10  # socket timeout of each request: a stuck client cannot hang the server thread

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(stand_ins: dict):
    """Base URL of an HTTP server on 127.0.0.1 serving the mirror folder."""
    handler = functools.partial(_Handler, directory=str(stand_ins["root"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in NO_PROXY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture()
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def _sha(path: Path) -> str:
    return convert.sha256_file(path)


def _check_published(store: str, profile: str, role: str, source: dict, source_path: Path, shown: str,
                     check: str) -> None:
    """The published file of `role` is a .safetensors of the source's tensors (float32), loads
    strictly, and the manifest's provenance describes the source."""
    manifest = ModelStore(store).read_manifest(profile)
    entry = manifest.files[role]
    published = Path(store) / profile / entry.name
    assert entry.name == f"{role}_{entry.sha256[:16]}.safetensors"
    assert _sha(published) == entry.sha256
    tensors = load_file(str(published))
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, source[key].float()), key
    if role == "clip":
        build_clip(TINY.clip_config()).load_state_dict(tensors, strict=True)
    elif role == "sam":
        build_sam(TINY.sam_config).load_state_dict(tensors, strict=True)
    else:
        UMCI(TINY.clipsam_config.umci).load_state_dict(tensors, strict=True)
    record = manifest.provenance[role]
    assert record["source"] == shown
    assert record["source_format"] == FORMAT[_case_of(source_path)]
    assert record["source_sha256"] == _sha(source_path)
    assert record["sha256_check"] == check
    assert record["converted_sha256"] == entry.sha256


_CASE_BY_NAME: dict[str, str] = {}


def _case_of(path: Path) -> str:
    return _CASE_BY_NAME.get(Path(path).name, "")


@pytest.fixture(autouse=True)
def _names(stand_ins: dict) -> None:
    _CASE_BY_NAME.update({v[0].name: k for k, v in stand_ins.items() if isinstance(v, tuple)})


def _one_error_line(text: str, flag: str, *fragments: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ") and flag in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _cli(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, **NO_PROXY, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "model_store", "stage", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --- every format, every way of naming it ------------------------------------------------------


@pytest.mark.parametrize("clip_case,sam_case", [("torchscript", "sam_pth"), ("openai_state", "sam_safetensors"),
                                                ("open_clip_bin", "sam_pth"),
                                                ("open_clip_safetensors", "sam_safetensors")])
def test_stage_over_http(stand_ins: dict, server: str, tmp_path: Path, clip_case: str, sam_case: str) -> None:
    clip_path, clip_state = stand_ins[clip_case]
    sam_path, sam_state = stand_ins[sam_case]
    store = str(tmp_path / "store")
    sha = _sha(clip_path) if clip_case == "torchscript" else None
    clip_url, sam_url = f"{server}/{clip_path.name}", f"{server}/{sam_path.name}?token=secret"
    manifest = stage("tiny", store, clip_checkpoint=clip_url, clip_sha256=sha, sam_checkpoint=sam_url)
    assert set(manifest.files) == {"clip", "sam"}
    _check_published(store, "tiny", "clip", clip_state, clip_path, clip_url, "caller" if sha else "none")
    _check_published(store, "tiny", "sam", sam_state, sam_path, f"{server}/{sam_path.name}", "none")
    assert "secret" not in (Path(store) / "tiny" / "manifest.json").read_text()
    assert sorted(p.name for p in (Path(store) / "tiny").iterdir()) == sorted(
        ["manifest.json", manifest.files["clip"].name, manifest.files["sam"].name])


def test_stage_cli_relative_paths(stand_ins: dict, tmp_path: Path) -> None:
    """A user in the folder holding the files: relative paths, the TorchScript with --clip_sha256."""
    clip_path, clip_state = stand_ins["torchscript"]
    sam_path, sam_state = stand_ins["sam_pth"]
    store = tmp_path / "store"
    out = _cli(["--profile=tiny", f"--to={store}", f"--clip_checkpoint={clip_path.name}",
                f"--clip_sha256={_sha(clip_path)}", f"--sam_checkpoint=./{sam_path.name}",
                f"--umci_checkpoint={stand_ins['umci_pt'][0].name}"], cwd=stand_ins["root"])
    assert out.returncode == 0, out.stderr
    assert f"staged tiny into {store}: clip, sam, umci" in out.stdout
    _check_published(str(store), "tiny", "clip", clip_state, clip_path, clip_path.name, "caller")
    _check_published(str(store), "tiny", "sam", sam_state, sam_path, sam_path.name, "none")
    umci_path, umci_state = stand_ins["umci_pt"]
    _check_published(str(store), "tiny", "umci", umci_state, umci_path, umci_path.name, "none")
    assert json.loads((store / "tiny" / "manifest.json").read_text())["provenance"]["created_by"] == "model_store stage"


def test_stage_relative_path_from_repo_root_and_file_url(stand_ins: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clip_path, clip_state = stand_ins["open_clip_safetensors"]
    sam_path, sam_state = stand_ins["sam_safetensors"]
    monkeypatch.chdir(clip_path.parent.parent)
    relative = f"{clip_path.parent.name}/{clip_path.name}"
    store = tmp_path / "store"
    assert main(["stage", "--profile=tiny", f"--to={store}", f"--clip_checkpoint={relative}",
                 f"--sam_checkpoint={sam_path.as_uri()}"]) == 0
    _check_published(str(store), "tiny", "clip", clip_state, clip_path, clip_path.name, "none")
    _check_published(str(store), "tiny", "sam", sam_state, sam_path, sam_path.name, "none")


def test_official_files_are_the_default(stand_ins: dict, server: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Without flags, the profile's official files are downloaded; OpenAI's is checked against its pin."""
    clip_path, clip_state = stand_ins["torchscript"]
    sam_path, sam_state = stand_ins["sam_pth"]
    monkeypatch.setitem(convert.PUBLISHED_CLIP_TORCHSCRIPT, "tiny",
                        PublishedFile("ViT-tiny.pt", f"{server}/{clip_path.name}", _sha(clip_path)))
    monkeypatch.setitem(PROFILES, "tiny", dataclasses.replace(TINY, sam_checkpoint_url=f"{server}/{sam_path.name}"))
    monkeypatch.setattr(stage_module, "PROGRESS_MIN_BYTES", 1)
    store = tmp_path / "store"
    assert main(["stage", "--profile=tiny", f"--to={store}"]) == 0
    printed = capsys.readouterr().out
    assert "downloading ViT-tiny.pt: 100%" in printed and "downloading sam_vit_tiny.pth: 100%" in printed
    _check_published(str(store), "tiny", "clip", clip_state, clip_path, f"{server}/{clip_path.name}",
                     "published:ViT-tiny.pt")
    _check_published(str(store), "tiny", "sam", sam_state, sam_path, f"{server}/{sam_path.name}", "none")

    # The official URL serving anything but the pinned bytes is refused before it is read.
    monkeypatch.setitem(convert.PUBLISHED_CLIP_TORCHSCRIPT, "tiny",
                        PublishedFile("ViT-tiny.pt", f"{server}/{clip_path.name}", "0" * 64))
    assert main(["stage", "--profile=tiny", f"--to={tmp_path / 'other'}"]) == 2
    _one_error_line(capsys.readouterr().err, "--clip_checkpoint", "not the published " + "0" * 64)


def test_umci_is_kept_or_replaced(stand_ins: dict, tmp_path: Path) -> None:
    clip_path, _ = stand_ins["open_clip_bin"]
    sam_path, _ = stand_ins["sam_pth"]
    umci_path, umci_state = stand_ins["umci_safetensors"]
    store = str(tmp_path / "store")
    first = stage("tiny", store, clip_checkpoint=str(clip_path), sam_checkpoint=str(sam_path),
                  umci_checkpoint=str(umci_path))
    _check_published(store, "tiny", "umci", umci_state, umci_path, umci_path.name, "none")
    again = stage("tiny", store, clip_checkpoint=str(clip_path), sam_checkpoint=str(sam_path))
    assert again.files["umci"] == first.files["umci"]
    assert again.provenance["umci"] == first.provenance["umci"]
    _check_published(store, "tiny", "umci", umci_state, umci_path, umci_path.name, "none")
    fresh = stage("tiny", str(tmp_path / "fresh"), clip_checkpoint=str(clip_path), sam_checkpoint=str(sam_path))
    assert "umci" not in fresh.files and "umci" not in fresh.provenance


def test_help_documents_every_flag_with_its_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stage", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--profile", "--to", "--clip_checkpoint", "--clip_sha256", "--sam_checkpoint", "--sam_sha256",
                 "--umci_checkpoint", "--timeout", "--tmp_dir"):
        assert flag in text, flag
    assert text.count("(default:") + text.count("(required)") >= 9
    for profile in ("clipsam-vitb-sam-b", "clipsam-vitl-sam-h"):
        for role in ("clip", "sam"):
            official = stage_module.official_file(get_profile(profile), role)
            assert official.name in text and official.url in text
    assert convert.PUBLISHED_CLIP_TORCHSCRIPT["clipsam-vitb-sam-b"].sha256 in text


def test_official_files_of_the_real_profiles() -> None:
    vitb, vitl = get_profile("clipsam-vitb-sam-b"), get_profile("clipsam-vitl-sam-h")
    assert stage_module.official_file(vitb, "clip").url == (
        "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
    assert stage_module.official_file(vitl, "clip").name == "ViT-L-14-336px.pt"
    assert stage_module.official_file(vitb, "sam") == PublishedFile(
        "sam_vit_b_01ec64.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", "")
    assert stage_module.official_file(vitl, "sam").name == "sam_vit_h_4b8939.pth"
    assert stage_module.official_file(TINY, "clip") is None and stage_module.official_file(TINY, "sam") is None


# --- offline ------------------------------------------------------------------------------------


def _no_dns(*args: object, **kwargs: object) -> None:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_offline_official_clip_names_the_flag_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    store = tmp_path / "store"
    assert main(["stage", "--profile=clipsam-vitb-sam-b", f"--to={store}"]) == 2
    official = convert.PUBLISHED_CLIP_TORCHSCRIPT["clipsam-vitb-sam-b"]
    _one_error_line(capsys.readouterr().err, "--clip_checkpoint", "ViT-B-16.pt", official.url, "DNS lookup failed",
                    "--clip_checkpoint=/path/to/ViT-B-16.pt",
                    "likewise --sam_checkpoint=/path/to/sam_vit_b_01ec64.pth from "
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth")
    assert not store.exists() or not any(store.rglob("*.*"))


def test_offline_official_sam_names_the_flag_and_the_file(stand_ins: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    monkeypatch.setitem(PROFILES, "tiny", dataclasses.replace(TINY, sam_checkpoint_url=url))
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    assert main(["stage", "--profile=tiny", f"--to={tmp_path / 'store'}",
                 f"--clip_checkpoint={stand_ins['open_clip_bin'][0]}"]) == 2
    _one_error_line(capsys.readouterr().err, "--sam_checkpoint", "sam_vit_b_01ec64.pth", url, "offline")


def test_connection_refused_for_the_official_file(tmp_path: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port}/ViT-B-16.pt"
    monkeypatch.setitem(convert.PUBLISHED_CLIP_TORCHSCRIPT, "clipsam-vitb-sam-b",
                        PublishedFile("ViT-B-16.pt", url, "5" * 64))
    assert main(["stage", "--profile=clipsam-vitb-sam-b", f"--to={tmp_path / 'store'}"]) == 2
    _one_error_line(capsys.readouterr().err, "--clip_checkpoint not given", url, "connection refused", "offline")


# --- wrong input: one line naming the flag, exit 2, nothing published ---------------------------


def test_cli_sam_file_given_as_clip(stand_ins: dict, tmp_path: Path) -> None:
    sam = stand_ins["sam_pth"][0]
    out = _cli(["--profile=tiny", f"--to={tmp_path / 'store'}", f"--clip_checkpoint={sam}", f"--sam_checkpoint={sam}"])
    assert out.returncode == 2
    _one_error_line(out.stderr, "--clip_checkpoint", "SAM checkpoint", "pass it as --sam_checkpoint")
    assert not (tmp_path / "store" / "tiny").exists()


def test_cli_missing_relative_path(stand_ins: dict, tmp_path: Path) -> None:
    out = _cli(["--profile=tiny", f"--to={tmp_path / 'store'}", f"--clip_checkpoint={stand_ins['open_clip_bin'][0]}",
                "--sam_checkpoint=downloads/sam_vit_b_01ec64.pth"])
    assert out.returncode == 2
    _one_error_line(out.stderr, "--sam_checkpoint", "downloads/sam_vit_b_01ec64.pth", "no such file",
                    str(REPO / "downloads" / "sam_vit_b_01ec64.pth"))


def test_cli_torchscript_without_pinned_sha256(stand_ins: dict, tmp_path: Path) -> None:
    clip = stand_ins["torchscript"][0]
    out = _cli(["--profile=tiny", f"--to={tmp_path / 'store'}", f"--clip_checkpoint={clip}",
                f"--sam_checkpoint={stand_ins['sam_pth'][0]}"])
    assert out.returncode == 2
    _one_error_line(out.stderr, "--clip_checkpoint", "TorchScript", f"--clip_sha256={_sha(clip)}")
    assert out.stdout == ""


def _wrong(stand_ins: dict, server: str, closed_port: int, tmp_path: Path) -> dict:
    clip, sam = str(stand_ins["open_clip_bin"][0]), str(stand_ins["sam_pth"][0])
    root = stand_ins["root"]
    big = tmp_path / "vit_l_clip.pt"  # just the telling tensor of a ViT-L-14-336 CLIP
    torch.save({"visual.conv1.weight": torch.zeros(1024, 3, 14, 14), "visual.proj": torch.zeros(1024, 768)}, big)
    wrong_umci = tmp_path / "umci_vitb.safetensors"
    save_file({k: v.clone() for k, v in UMCI(get_profile("clipsam-vitb-sam-b").clipsam_config.umci)
               .state_dict().items()}, str(wrong_umci))
    return {
        "clip_as_sam": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={clip}"],
                        "--sam_checkpoint", ["CLIP checkpoint", "pass it as --clip_checkpoint"]),
        "vit_l_for_vit_b": (["--profile=clipsam-vitb-sam-b", f"--clip_checkpoint={big}", f"--sam_checkpoint={sam}"],
                            "--clip_checkpoint", ["clipsam-vitb-sam-b", "visual.conv1.weight", "[1024, 3, 14, 14]",
                                                  "expected [768, 3, 16, 16]"]),
        "truncated": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={root / 'sam_cut.pth'}"],
                      "--sam_checkpoint", ["sam_cut.pth", "truncated"]),
        "truncated_download": (["--profile=tiny", f"--clip_checkpoint={clip}",
                                f"--sam_checkpoint={server}/cut/sam_vit_tiny.pth"],
                               "--sam_checkpoint", ["cut short"]),
        "not_a_checkpoint": (["--profile=tiny", f"--clip_checkpoint={server}/notes.pt", f"--sam_checkpoint={sam}"],
                             "--clip_checkpoint", [f"{server}/notes.pt", "HTML"]),
        "http_404": (["--profile=tiny", f"--clip_checkpoint={server}/absent.pt", f"--sam_checkpoint={sam}"],
                     "--clip_checkpoint", ["HTTP 404"]),
        "unreachable": (["--profile=tiny", f"--clip_checkpoint={clip}",
                         f"--sam_checkpoint=http://127.0.0.1:{closed_port}/sam_vit_b_01ec64.pth"],
                        "--sam_checkpoint", ["connection refused"]),
        "missing_file_url": (["--profile=tiny", f"--clip_checkpoint={clip}",
                              f"--sam_checkpoint={(tmp_path / 'absent.pth').as_uri()}"],
                             "--sam_checkpoint", ["no such file"]),
        "bad_sha_flag": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={sam}",
                          "--sam_sha256=abc"], "--sam_sha256", ["not a sha256"]),
        "sha_mismatch": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--clip_sha256={'0' * 64}",
                          f"--sam_checkpoint={sam}"], "--clip_checkpoint", ["checksum mismatch"]),
        "no_official_for_tiny": (["--profile=tiny", f"--sam_checkpoint={sam}"],
                                 "--clip_checkpoint", ["required", "make-tiny"]),
        "umci_is_clip": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={sam}",
                          f"--umci_checkpoint={clip}"], "--umci_checkpoint", ["CLIP checkpoint"]),
        "umci_other_size": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={sam}",
                             f"--umci_checkpoint={wrong_umci}"], "--umci_checkpoint", ["another size"]),
        "umci_not_a_checkpoint": (["--profile=tiny", f"--clip_checkpoint={clip}", f"--sam_checkpoint={sam}",
                                   f"--umci_checkpoint={root / 'notes.pt'}"], "--umci_checkpoint", ["HTML"]),
        "folder": (["--profile=tiny", f"--clip_checkpoint={root}", f"--sam_checkpoint={sam}"],
                   "--clip_checkpoint", ["not a regular file"]),
    }


WRONG = ["clip_as_sam", "vit_l_for_vit_b", "truncated", "truncated_download", "not_a_checkpoint", "http_404",
         "unreachable", "missing_file_url", "bad_sha_flag", "sha_mismatch", "no_official_for_tiny", "umci_is_clip",
         "umci_other_size", "umci_not_a_checkpoint", "folder"]


@pytest.mark.parametrize("case", WRONG)
def test_wrong_input_is_one_line_naming_the_flag(stand_ins: dict, server: str, closed_port: int, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, case: str) -> None:
    args, flag, fragments = _wrong(stand_ins, server, closed_port, tmp_path)[case]
    store = tmp_path / "store"
    capsys.readouterr()
    assert main(["stage", f"--to={store}", *args]) == 2
    _one_error_line(capsys.readouterr().err, flag, *fragments)
    assert not list(store.rglob("manifest.json")) and not list(store.rglob("*.safetensors"))
    assert not list(store.glob("*/"))  # an empty profile folder made by stage is removed


def test_unwritable_store_fails_before_any_download(stand_ins: dict, tmp_path: Path, closed_port: int) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StageError, match=r"^--to .*cannot create"):
        stage("tiny", str(blocker / "store"), clip_checkpoint=f"http://127.0.0.1:{closed_port}/never.pt",
              sam_checkpoint=str(stand_ins["sam_pth"][0]))
