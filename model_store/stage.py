"""`stage`: put real weights into a model store (needs internet, or a mirror URL per file).

Every downloaded file is loaded into the module its profile describes before it is published,
and re-saved as a plain state dict, so workers can read it with `weights_only=True` and a broken
download fails here, once, rather than on every worker of a nightly run.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import fsspec
from torch import nn

from clipsam.backbones import build_clip, build_sam
from clipsam.checkpoint import save_state
from clipsam.umci import UMCI

from .errors import ChecksumMismatchError, ManifestNotFoundError, StageError
from .loading import read_state_dict
from .manifest import Manifest
from .profiles import Profile, get_profile
from .store import CHUNK, ModelStore

LOG = logging.getLogger(__name__)
NO_NETWORK_HINT = (
    "this machine may have no internet access: run `stage` where the URL is reachable, "
    "or pass a reachable mirror (--clip_checkpoint / --sam_checkpoint / --umci_checkpoint)"
)


def download(url: str, dest: Path, expected_sha256: str | None = None, timeout: float = 60.0) -> str:
    """Stream `url` (http(s) or any fsspec URL) to `dest`; returns its sha256.

    Raises StageError for unreachable hosts and HTTP errors, ChecksumMismatchError when
    `expected_sha256` is given and differs. `dest` only appears once complete and verified.
    """
    digest, size = hashlib.sha256(), 0
    partial = dest.with_name(dest.name + ".part")
    try:
        with _open_source(url, timeout) as (source, total), open(partial, "wb") as out:
            next_log = 0.1
            for block in iter(lambda: source.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                size += len(block)
                if total and size / total >= next_log:
                    LOG.info("downloading %s: %d%% of %d MB", url, int(100 * size / total), total >> 20)
                    next_log += 0.1
        sha = digest.hexdigest()
        if expected_sha256 and sha != expected_sha256.lower():
            raise ChecksumMismatchError(f"checksum mismatch for {url}: expected sha256 {expected_sha256}, got {sha}")
        os.replace(partial, dest)
        LOG.info("downloaded %s (%d bytes, sha256 %s)", url, size, sha)
        return sha
    finally:
        if partial.exists():
            partial.unlink()


class _open_source:
    """Context manager yielding (readable, total size or 0) for http(s) or fsspec URLs."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def __enter__(self):
        try:
            if self.url.startswith(("http://", "https://")):
                self._handle = urllib.request.urlopen(self.url, timeout=self.timeout)
                return self._handle, int(self._handle.headers.get("Content-Length") or 0)
            self._handle = fsspec.open(self.url, "rb").open()
            return self._handle, int(getattr(self._handle, "size", 0) or 0)
        except urllib.error.HTTPError as exc:
            raise StageError(f"HTTP {exc.code} {exc.reason} when downloading {self.url}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StageError(f"cannot download {self.url}: {reason}; {NO_NETWORK_HINT}") from exc
        except FileNotFoundError as exc:
            raise StageError(f"cannot download {self.url}: no such file") from exc

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _verified_state_file(url: str, build: Callable[[], nn.Module], out: Path, expected_sha256: str | None) -> Path:
    """Download a checkpoint, check it loads strictly into its module, save it as a plain state dict."""
    raw = out.with_name(out.name + ".download")
    download(url, raw, expected_sha256)
    module = build()
    try:
        module.load_state_dict(read_state_dict(raw, url), strict=True)
    except RuntimeError as exc:
        raise StageError(f"{url} does not fit this profile's {out.stem} model: {exc}") from exc
    finally:
        raw.unlink()
    return save_state(module, out)


def _pretrained_clip(profile: Profile, out: Path) -> Path:
    """Let open_clip download its pretrained weights, then keep them as a plain state dict."""
    import open_clip

    try:
        model = open_clip.create_model(profile.clip_arch, pretrained=profile.clip_pretrained, force_quick_gelu=True)
    except Exception as exc:  # open_clip surfaces hub/network failures as many exception types
        raise StageError(
            f"cannot fetch open_clip {profile.clip_arch} weights {profile.clip_pretrained!r}: {exc}; {NO_NETWORK_HINT}"
        ) from exc
    return save_state(model, out)


def stage(
    profile_name: str,
    to_url: str,
    *,
    clip_checkpoint: str | None = None,
    sam_checkpoint: str | None = None,
    umci_checkpoint: str | None = None,
    sam_sha256: str | None = None,
) -> Manifest:
    """Download a profile's CLIP and SAM (and optionally UMCI) weights into the store at `to_url`.

    Without an explicit UMCI checkpoint the profile keeps the UMCI weights already in the store,
    if any; otherwise it has none until `pipeline.train_umci` writes one.
    """
    profile = get_profile(profile_name)
    config = profile.clipsam_config
    store = ModelStore(to_url)
    try:
        previous = store.read_manifest(profile.name)
    except ManifestNotFoundError:
        previous = None
    sam_url = sam_checkpoint or profile.sam_checkpoint_url
    if sam_url is None or (clip_checkpoint is None and profile.clip_arch is None):
        raise StageError(f"profile {profile.name!r} has no public weights; build it with `python -m model_store make-tiny`")
    clip_config = profile.clip_config()
    provenance = {"created_by": "model_store stage", "sam_source": sam_url,
                  "clip_source": clip_checkpoint or f"open_clip:{profile.clip_arch}/{profile.clip_pretrained}"}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        if clip_checkpoint:
            files["clip"] = _verified_state_file(clip_checkpoint, lambda: build_clip(clip_config), Path(tmp) / "clip.pt", None)
        else:
            files["clip"] = _pretrained_clip(profile, Path(tmp) / "clip.pt")
        files["sam"] = _verified_state_file(sam_url, lambda: build_sam(profile.sam_config), Path(tmp) / "sam.pt", sam_sha256)
        if umci_checkpoint:
            files["umci"] = _verified_state_file(umci_checkpoint, lambda: UMCI(config.umci), Path(tmp) / "umci.pt", None)
            provenance["umci_source"] = umci_checkpoint
        manifest = Manifest(
            profile=profile.name,
            clip_config=clip_config,
            sam_config=dict(profile.sam_config),
            clipsam_config=config.to_dict(),
            files={k: v for k, v in (previous.files if previous else {}).items() if k == "umci"},
            provenance=provenance,
        )
        return store.publish(manifest, files)
