"""Model store: manifests, publishing, the verified local cache, errors, and the CLI."""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load_file, save_file

from model_store.errors import (
    ChecksumMismatchError,
    CorruptCheckpointError,
    ManifestNotFoundError,
    MissingWeightFileError,
    UnknownProfileError,
)
from model_store.loading import load_clipsam, load_stage2
from model_store.profiles import get_profile
from model_store.stage import stage
from model_store.store import ModelStore, cache_dir, sha256_file
from tiny.build import make_tiny

from .conftest import REPO


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def local_store(tmp_path, tiny_store) -> str:
    """A private, writable copy of the tiny profile (tests below damage it)."""
    root = tmp_path / "store"
    fs = fsspec.filesystem("file")
    fs.copy(str(Path(tiny_store) / "tiny"), str(root / "tiny"), recursive=True)
    return str(root)


def test_make_tiny_is_deterministic_small_and_loadable(tmp_path, fresh_cache):
    a = make_tiny(str(tmp_path / "a"), trained=False, use_cache=False)
    b = make_tiny(str(tmp_path / "b"), trained=False, use_cache=False)
    assert a.digests() == b.digests()
    assert a.provenance["trained"] is False
    total = sum(f.size for f in a.files.values())
    assert total < 30e6
    manifest = ModelStore(str(tmp_path / "a")).read_manifest("tiny")
    assert manifest.digests() == a.digests()
    assert set(manifest.files) == {"clip", "sam", "umci"}
    for entry in manifest.files.values():
        assert sha256_file(tmp_path / "a" / "tiny" / entry.name) == entry.sha256


def test_make_tiny_reuses_its_build_cache(tmp_path, fresh_cache):
    cache = tmp_path / "builds"
    first = make_tiny(str(tmp_path / "a"), trained=False, build_cache=cache)
    (build,) = [p for p in cache.iterdir() if p.is_dir()]
    stamp = (build / "tiny" / "manifest.json").stat().st_mtime_ns
    second = make_tiny(str(tmp_path / "b"), trained=False, build_cache=cache)
    assert second.digests() == first.digests() and second.provenance == first.provenance
    assert [p for p in cache.iterdir() if p.is_dir()] == [build]  # no second build
    assert (build / "tiny" / "manifest.json").stat().st_mtime_ns == stamp
    other_seed = make_tiny(str(tmp_path / "c"), seed=1, trained=False, build_cache=cache)
    assert other_seed.digests() != first.digests()
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_trained_tiny_store_records_its_training(tiny_store):
    """The store the test session runs on is the trained build (make-tiny's default)."""
    provenance = ModelStore(tiny_store).read_manifest("tiny").provenance
    assert provenance["trained"] is True
    losses = provenance["umci_training"]["epoch_losses"]
    assert losses[-1] < losses[0]
    assert set(provenance["data"]["umci_categories"]).isdisjoint(provenance["data"]["held_out_categories"])


def test_memory_store_round_trip(fresh_cache, tiny_store):
    root = f"memory://stores/{uuid.uuid4().hex}"
    manifest = make_tiny(root, trained=False)
    store = ModelStore(root)
    assert store.profiles() == ["tiny"]
    local = store.fetch(store.read_manifest("tiny"), "sam")
    assert local.is_file() and str(local).startswith(str(cache_dir()))
    assert sha256_file(local) == manifest.files["sam"].sha256
    _, loaded = load_clipsam(root, "tiny", device="cpu")
    assert loaded.digests() == manifest.digests()


def test_cache_downloads_once(local_store, fresh_cache):
    store = ModelStore(local_store)
    manifest = store.read_manifest("tiny")
    first = store.fetch(manifest, "umci")
    mtime = first.stat().st_mtime_ns
    # remove the source: a cached file must not be fetched again
    os.remove(Path(local_store) / "tiny" / manifest.files["umci"].name)
    assert store.fetch(manifest, "umci") == first
    assert first.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob("*.part"))


def test_checksum_mismatch_names_the_url(local_store, fresh_cache):
    manifest = ModelStore(local_store).read_manifest("tiny")
    path = Path(local_store) / "tiny" / manifest.files["sam"].name
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=f"checksum mismatch for {path}"):
        load_stage2(local_store, "tiny", device="cpu")
    assert not any(fresh_cache.rglob("*sam_tiny.safetensors"))  # nothing unverified left in the cache


def test_missing_weight_file(local_store, fresh_cache):
    manifest = ModelStore(local_store).read_manifest("tiny")
    missing = Path(local_store) / "tiny" / manifest.files["sam"].name
    missing.unlink()
    with pytest.raises(MissingWeightFileError, match=str(missing)):
        load_stage2(local_store, "tiny", device="cpu")


def test_missing_manifest_and_unknown_profile(tmp_path, local_store):
    with pytest.raises(ManifestNotFoundError, match=str(tmp_path / "nowhere" / "tiny" / "manifest.json")):
        ModelStore(str(tmp_path / "nowhere")).read_manifest("tiny")
    with pytest.raises(ManifestNotFoundError, match="profiles in this store: \\['tiny'\\]"):
        ModelStore(local_store).read_manifest("clipsam-vitl-sam-h")
    with pytest.raises(UnknownProfileError, match="known profiles: clipsam-vitb-sam-b, clipsam-vitl-sam-h, tiny"):
        get_profile("vit-huge")


def test_corrupt_checkpoint_with_valid_checksum(local_store, fresh_cache):
    """A file that matches its manifest but is not a state dict (e.g. published by mistake)."""
    store = ModelStore(local_store)
    manifest = store.read_manifest("tiny")
    bogus = Path(local_store) / "bogus.pt"
    bogus.write_bytes(b"this is not a torch checkpoint")
    store.publish(manifest, {"umci": bogus})
    with pytest.raises(CorruptCheckpointError, match=f"cannot read checkpoint {local_store}/tiny/bogus.pt"):
        load_clipsam(local_store, "tiny", device="cpu")


def test_checkpoint_of_the_wrong_shape(local_store, fresh_cache):
    store = ModelStore(local_store)
    wrong = Path(local_store) / "wrong.safetensors"
    save_file({"weight": torch.zeros(3)}, str(wrong))
    store.publish(store.read_manifest("tiny"), {"sam": wrong})
    with pytest.raises(CorruptCheckpointError, match="does not match the sam config"):
        load_stage2(local_store, "tiny", device="cpu")


def test_pickled_code_is_refused(local_store, fresh_cache):
    """Only safetensors are read: a pickle that would run code on load is refused, never opened."""
    store = ModelStore(local_store)
    evil = Path(local_store) / "evil.pt"
    torch.save({"weight": torch.zeros(3), "hook": functools.partial(print, "pwned")}, evil)
    store.publish(store.read_manifest("tiny"), {"umci": evil})
    with pytest.raises(CorruptCheckpointError, match="evil.pt"):
        load_clipsam(local_store, "tiny", device="cpu")


def test_invalid_manifest(local_store):
    (Path(local_store) / "tiny" / "manifest.json").write_text("{not json")
    with pytest.raises(Exception, match="invalid model store manifest"):
        ModelStore(local_store).read_manifest("tiny")


# --- stage end to end: a tiny store's own files staged over HTTP on 127.0.0.1 and loaded ---


@pytest.fixture()
def http_mirror(tmp_path):
    """Serve a folder over HTTP on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stage_from_mirror_publishes_a_loadable_profile(http_mirror, tiny_store, tmp_path, fresh_cache):
    root, base = http_mirror
    manifest = ModelStore(tiny_store).read_manifest("tiny")
    for entry in manifest.files.values():
        (root / entry.name).write_bytes((Path(tiny_store) / "tiny" / entry.name).read_bytes())
    target = str(tmp_path / "staged")
    staged = stage(
        "tiny",
        target,
        clip_checkpoint=f"{base}/{manifest.files['clip'].name}",
        sam_checkpoint=f"{base}/{manifest.files['sam'].name}",
        umci_checkpoint=f"{base}/{manifest.files['umci'].name}",
        sam_sha256=manifest.files["sam"].sha256,
    )
    assert staged.provenance["sam"]["source"].startswith(base)  # tests/test_stage.py covers stage in depth
    for role, entry in staged.files.items():  # converted to .safetensors with the same tensors
        ours = load_file(Path(target) / "tiny" / entry.name)
        theirs = load_file(Path(tiny_store) / "tiny" / manifest.files[role].name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    _, loaded = load_clipsam(target, "tiny", device="cpu")
    assert loaded.digests() == staged.digests()


def test_cli_make_tiny_show_and_errors(tmp_path, fresh_cache):
    env = {**os.environ, "CLIPSAM_CACHE": str(fresh_cache)}
    run = functools.partial(subprocess.run, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = run([sys.executable, "-m", "model_store", "make-tiny", "--untrained", "--out", str(tmp_path / "cli")])
    assert out.returncode == 0, out.stderr
    assert "tiny profile written to" in out.stdout
    shown = run([sys.executable, "-m", "model_store", "show", "--store", str(tmp_path / "cli"), "--profile", "tiny"])
    assert json.loads(shown.stdout)["profile"] == "tiny"
    missing = run([sys.executable, "-m", "model_store", "verify", "--store", str(tmp_path / "none"), "--profile", "tiny"])
    assert missing.returncode == 2
    assert f"error: no manifest for profile 'tiny' at {tmp_path / 'none'}/tiny/manifest.json" in missing.stderr
