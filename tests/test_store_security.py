"""Model store hardening: manifest names, a cache that stays inside itself and re-verifies hits,
the launch-time profile check, and one-line errors. Real files on disk, untrained tiny profile."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, load_file

from model_store.__main__ import main as cli
from model_store.errors import (
    ChecksumMismatchError,
    CorruptCheckpointError,
    InvalidManifestError,
    MissingWeightFileError,
    ModelStoreError,
    UnknownProfileError,
)
from model_store.loading import load_clipsam, load_stage1, load_stage2
from model_store.manifest import FileEntry, Manifest
from model_store.preflight import check_profile
from model_store.store import ModelStore, cache_dir, sha256_file
from tiny.build import make_tiny

BAD_NAMES = ["../x", "a/b", "..", ".hidden", "a\\b", "/etc/passwd", "", "a\x00b", "x" * 300, "sam..pt"]


@pytest.fixture(scope="module")
def untrained_store(tmp_path_factory) -> Path:
    """The tiny profile with seeded random weights (seconds to build); never modified."""
    root = tmp_path_factory.mktemp("untrained-store")
    make_tiny(str(root), trained=False, use_cache=False)
    return root


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLIPSAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def store_copy(tmp_path, untrained_store) -> str:
    """A private, writable copy of the untrained tiny profile (tests below damage it)."""
    shutil.copytree(untrained_store / "tiny", tmp_path / "store" / "tiny")
    return str(tmp_path / "store")


def _manifest_path(root: str) -> Path:
    return Path(root) / "tiny" / "manifest.json"


def _edit_manifest(root: str, edit) -> None:
    path = _manifest_path(root)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _one_line_naming(exc: BaseException, url: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert url in text, text
    return text


# --- manifest names ---


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_file_names_are_refused_at_read(store_copy, bad):
    _edit_manifest(store_copy, lambda data: data["files"]["sam"].update(name=bad))
    url = f"{store_copy}/tiny/manifest.json"
    with pytest.raises(InvalidManifestError, match=re.escape(url)) as caught:
        ModelStore(store_copy).read_manifest("tiny")
    assert repr(bad)[:60] in str(caught.value)
    assert "sam" in str(caught.value)
    _one_line_naming(caught.value, url)


@pytest.mark.parametrize("field, value, why", [
    ("sha256", "A" * 64, "64 lowercase hex"),
    ("sha256", "0" * 63, "64 lowercase hex"),
    ("sha256", None, "64 lowercase hex"),
    ("size", -1, "non-negative integer"),
    ("size", "12", "non-negative integer"),
    ("size", 1.5, "non-negative integer"),
    ("size", True, "non-negative integer"),
])
def test_bad_digests_and_sizes_are_refused_at_read(store_copy, field, value, why):
    _edit_manifest(store_copy, lambda data: data["files"]["clip"].update({field: value}))
    with pytest.raises(InvalidManifestError, match=re.escape(f"{store_copy}/tiny/manifest.json") + ".*" + why):
        ModelStore(store_copy).read_manifest("tiny")


@pytest.mark.parametrize("bad", ["../tiny", "tiny/..", ".", "", "a\\b"])
def test_unsafe_profile_names_are_refused(store_copy, bad):
    with pytest.raises(UnknownProfileError, match=re.escape(repr(bad))):
        ModelStore(store_copy).read_manifest(bad)
    _edit_manifest(store_copy, lambda data: data.update(profile=bad))
    with pytest.raises(InvalidManifestError, match=re.escape(f"{store_copy}/tiny/manifest.json")):
        ModelStore(store_copy).read_manifest("tiny")


def test_manifest_must_describe_the_profile_it_is_read_as(store_copy):
    shutil.copytree(Path(store_copy) / "tiny", Path(store_copy) / "other")
    with pytest.raises(InvalidManifestError, match="describes profile 'tiny', not 'other'"):
        ModelStore(store_copy).read_manifest("other")


def test_manifest_that_is_not_an_object(store_copy):
    _manifest_path(store_copy).write_text("[1, 2]")
    with pytest.raises(InvalidManifestError, match="invalid model store manifest"):
        ModelStore(store_copy).read_manifest("tiny")


def test_publish_refuses_unsafe_names(tmp_path, store_copy):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    hidden = tmp_path / ".umci.pt"
    hidden.write_bytes(b"x")
    with pytest.raises(InvalidManifestError, match="'.umci.pt' starts with '.'"):
        store.publish(manifest, {"umci": hidden})
    manifest.profile = "../elsewhere"
    with pytest.raises(InvalidManifestError, match="profile name '../elsewhere'"):
        store.publish(manifest, {})
    assert not (tmp_path / "elsewhere").exists()


def _tree(root: Path, skip: Path | None = None) -> set[str]:
    """Every file and folder below root (relative paths), except `skip` and what is below it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            continue
        found.update(str((here / name).relative_to(root)) for name in dirnames + filenames)
    return found


def _attempt(action) -> BaseException | None:
    try:
        action()
    except Exception as exc:  # judged after the file trees are compared
        return exc
    return None


@pytest.mark.parametrize("default_cache", [False, True], ids=["CLIPSAM_CACHE", "cache-in-HOME"])
def test_hostile_manifest_writes_nothing_outside_the_cache(tmp_path, untrained_store, monkeypatch, default_cache):
    """A manifest whose file name climbs out of the profile folder. Before names were checked,
    the cache read `<store>/tiny/./../../../evil.pt` and wrote those bytes four folders above
    the cache's `<sha>-./` folder (beside the cache, or into HOME/.cache). Now nothing is read
    or written outside the cache."""
    home = tmp_path / "h1" / "h2" / "h3" / "home"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    if default_cache:
        monkeypatch.delenv("CLIPSAM_CACHE", raising=False)
        cache = home / ".cache" / "clipsam"
    else:
        cache = tmp_path / "c1" / "c2" / "c3" / "c4" / "cache"
        monkeypatch.setenv("CLIPSAM_CACHE", str(cache))
    assert cache_dir() == cache
    store_root = tmp_path / "srv" / "x" / "y" / "store"
    shutil.copytree(untrained_store / "tiny", store_root / "tiny")
    payload = b"attacker-chosen bytes\n" * 100
    (tmp_path / "srv" / "x" / "evil.pt").write_bytes(payload)  # what `tiny/./../../../evil.pt` reaches
    hostile = "./../../../evil.pt"
    entry = {"name": hostile, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    _edit_manifest(str(store_root), lambda data: data["files"].update(sam=entry))
    good = ModelStore(str(untrained_store)).read_manifest("tiny")
    # Manifests built in code (not read from JSON) are checked again before any path is made.
    crafted_name = Manifest(good.profile, good.clip_config, good.sam_config, good.clipsam_config,
                            files={"sam": FileEntry(**entry)})
    crafted_profile = Manifest("../../../x", good.clip_config, good.sam_config, good.clipsam_config,
                               files={"sam": FileEntry("evil.pt", entry["sha256"], entry["size"])})
    before, home_before = _tree(tmp_path, skip=cache), _tree(home, skip=cache)

    errors = [
        _attempt(lambda: load_stage2(str(store_root), "tiny", device="cpu")),
        _attempt(lambda: check_profile(str(store_root), "tiny")),
        _attempt(lambda: ModelStore(str(store_root)).fetch(crafted_name, "sam")),
        _attempt(lambda: ModelStore(str(store_root)).fetch(crafted_profile, "sam")),
    ]

    assert _tree(tmp_path, skip=cache) == before
    assert _tree(home, skip=cache) == home_before
    assert not [p for p in (cache.rglob("*") if cache.exists() else []) if p.is_file() and p.read_bytes() == payload]
    assert all(isinstance(exc, InvalidManifestError) for exc in errors), errors
    assert all(repr(hostile) in str(exc) for exc in errors[:3]) and "profile name '../../../x'" in str(errors[3])


# --- the cache: named by sha256, re-verified on a hit ---


def _umci_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _tamper(path: Path, keep_mtime: bool = False) -> None:
    """Flip one byte in place: same file, same size, different content."""
    time.sleep(0.05)  # past the file system's coarse timestamp tick of the verification
    info = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(info.st_size // 2)
        byte = handle.read(1)
        handle.seek(info.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size and path.stat().st_ino == info.st_ino


def test_cache_files_are_named_by_sha256_inside_the_cache(store_copy, fresh_cache):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    for role, entry in manifest.files.items():
        local = store.fetch(manifest, role)
        assert local == fresh_cache.resolve() / "weights" / entry.sha256
        stamp = json.loads(local.with_name(entry.sha256 + ".verified").read_text())
        assert stamp["sha256"] == entry.sha256 and stamp["st_size"] == entry.size
        assert stamp["st_ino"] == local.stat().st_ino
    assert not list(fresh_cache.rglob("*.part"))


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_tampered_cache_file_is_downloaded_again(store_copy, fresh_cache, keep_mtime):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    entry = manifest.files["umci"]
    cached = store.fetch(manifest, "umci")
    _tamper(cached, keep_mtime=keep_mtime)
    assert sha256_file(cached) != entry.sha256

    stage1, loaded = load_stage1(store_copy, "tiny", device="cpu")
    assert sha256_file(cached) == entry.sha256  # re-downloaded, verified
    expected = _umci_state(Path(store_copy) / "tiny" / entry.name)
    got = stage1.umci.state_dict()
    assert all(torch.equal(got[k].cpu(), expected[k]) for k in expected)
    assert loaded.digests()["umci"] == entry.sha256


def test_a_good_cache_file_without_its_stamp_is_hashed_not_downloaded(store_copy, fresh_cache):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    cached = store.fetch(manifest, "sam")
    stamp = cached.with_name(cached.name + ".verified")
    stamp.unlink()
    (Path(store_copy) / "tiny" / manifest.files["sam"].name).unlink()  # a download would fail
    inode = cached.stat().st_ino
    assert store.fetch(manifest, "sam") == cached
    assert cached.stat().st_ino == inode and stamp.exists()


def test_truncated_or_replaced_cache_file_is_downloaded_again(store_copy, fresh_cache):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    cached = store.fetch(manifest, "clip")
    with open(cached, "r+b") as handle:
        handle.truncate(100)
    assert sha256_file(store.fetch(manifest, "clip")) == manifest.files["clip"].sha256
    cached.unlink()
    cached.symlink_to(Path(store_copy) / "tiny" / manifest.files["sam"].name)  # a link, not a file
    assert store.fetch(manifest, "clip") == cached
    assert not cached.is_symlink() and sha256_file(cached) == manifest.files["clip"].sha256


def test_tampered_cache_and_store_raise_checksum_mismatch(store_copy, fresh_cache):
    store = ModelStore(store_copy)
    manifest = store.read_manifest("tiny")
    cached = store.fetch(manifest, "sam")
    _tamper(cached)
    source = Path(store_copy) / "tiny" / manifest.files["sam"].name
    _tamper(source)
    with pytest.raises(ChecksumMismatchError, match=re.escape(f"checksum mismatch for {source}")) as caught:
        load_stage2(store_copy, "tiny", device="cpu")
    _one_line_naming(caught.value, str(source))
    assert not cached.exists()  # the bad copy is gone, nothing unverified took its place
    assert not list(fresh_cache.rglob("*.part"))


# --- launch-time check ---


def test_check_profile_accepts_a_complete_profile(store_copy, fresh_cache):
    manifest = check_profile(store_copy, "tiny")
    assert set(manifest.files) == {"clip", "sam", "umci"}
    assert not fresh_cache.exists() or not list(fresh_cache.rglob("*"))  # nothing downloaded


def test_check_profile_missing_role(store_copy):
    _edit_manifest(store_copy, lambda data: data["files"].pop("umci"))
    with pytest.raises(MissingWeightFileError, match="has no umci weights") as caught:
        check_profile(store_copy, "tiny")
    _one_line_naming(caught.value, f"{store_copy}/tiny")


def test_check_profile_missing_file(store_copy):
    missing = Path(store_copy) / "tiny" / ModelStore(store_copy).read_manifest("tiny").files["sam"].name
    missing.unlink()
    with pytest.raises(MissingWeightFileError, match="missing from the model store") as caught:
        check_profile(store_copy, "tiny")
    _one_line_naming(caught.value, str(missing))


def test_check_profile_wrong_size(store_copy):
    path = Path(store_copy) / "tiny" / ModelStore(store_copy).read_manifest("tiny").files["clip"].name
    with open(path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumMismatchError, match="size mismatch") as caught:
        check_profile(store_copy, "tiny")
    _one_line_naming(caught.value, str(path))


@pytest.mark.parametrize("url", ["nosuchprotocol://bucket/models", "/definitely/not/here"])
def test_check_profile_bad_store_url(url):
    with pytest.raises(ModelStoreError) as caught:
        check_profile(url, "tiny")
    _one_line_naming(caught.value, url)


# --- one-line errors from workers and the CLI ---


def _publish_bad_umci(store_copy: str, tmp_path: Path, payload) -> str:
    store = ModelStore(store_copy)
    path = tmp_path / "bad_umci.pt"
    payload(path)
    store.publish(store.read_manifest("tiny"), {"umci": path})
    return f"{store_copy}/tiny/bad_umci.pt"


@pytest.mark.parametrize("payload, why", [
    (lambda p: torch.save({"weight": torch.zeros(3), "hook": functools.partial(print, "pwned")}, p),
     "not a safetensors file"),
    (lambda p: p.write_bytes(b"this is not a torch checkpoint"), "cannot read checkpoint"),
    (lambda p: save_file({"weight": torch.zeros(3)}, str(p)), "does not match the umci config"),
])
def test_worker_errors_are_one_short_line(store_copy, fresh_cache, tmp_path, payload, why):
    url = _publish_bad_umci(store_copy, tmp_path, payload)
    with pytest.raises(CorruptCheckpointError, match=why) as caught:
        load_clipsam(store_copy, "tiny", device="cpu")
    text = _one_line_naming(caught.value, url)
    assert text.count(url) == 1 and len(text) < 600
    assert "weights_only" not in text  # torch's advice to turn the safety off is not passed on
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_cli_verify_prints_one_line(store_copy, fresh_cache, tmp_path, capsys):
    url = _publish_bad_umci(store_copy, tmp_path, lambda p: save_file({"weight": torch.zeros(3)}, str(p)))
    assert cli(["verify", "--store", store_copy, "--profile", "tiny"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and url in err[0] and "1 unexpected key (weight)" in err[0]
    (Path(store_copy) / "tiny" / "bad_umci.pt").unlink()
    assert cli(["verify", "--store", store_copy, "--profile", "tiny"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: weight file missing from the model store: {url}"]
