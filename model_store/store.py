"""A model store at any fsspec URL, and the worker-local cache its files are copied into.

Layout: `<root>/<profile>/manifest.json` plus the weight files it lists. Workers never read
weights straight from object storage: `fetch` copies each file into `$CLIPSAM_CACHE` (default
`~/.cache/clipsam`) under its sha256, verifying the hash before an atomic rename, under a file
lock so the many SDK processes of one VM download each file once.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

import fsspec

from .errors import ChecksumMismatchError, ManifestNotFoundError, MissingWeightFileError, ModelStoreError
from .manifest import FileEntry, Manifest

LOG = logging.getLogger(__name__)
CHUNK = 8 << 20


def cache_dir() -> Path:
    """Where verified weight files are kept on this machine."""
    return Path(os.environ.get("CLIPSAM_CACHE", Path.home() / ".cache" / "clipsam"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def join_url(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


class ModelStore:
    """Profiles under one root URL (local directory, gs://, s3://, memory://, ...)."""

    def __init__(self, root: str, storage_options: Mapping[str, object] | None = None) -> None:
        self.root = root.rstrip("/") or root
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **dict(storage_options or {}))

    def url(self, profile: str, name: str = "") -> str:
        return join_url(self.root, profile, name) if name else join_url(self.root, profile)

    def _path(self, profile: str, name: str) -> str:
        return join_url(self._root_path, profile, name)

    def profiles(self) -> list[str]:
        """Profiles that have a manifest in this store."""
        try:
            found = self.fs.glob(join_url(self._root_path, "*", "manifest.json"))
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").split("/")[-2] for p in found)

    def read_manifest(self, profile: str) -> Manifest:
        path = self._path(profile, "manifest.json")
        try:
            with self.fs.open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
        except FileNotFoundError as exc:
            raise ManifestNotFoundError(
                f"no manifest for profile {profile!r} at {self.url(profile, 'manifest.json')} "
                f"(profiles in this store: {self.profiles() or 'none'}); "
                "create one with `python -m model_store make-tiny` or `python -m model_store stage`"
            ) from exc
        return Manifest.from_json(text, self.url(profile, "manifest.json"))

    def publish(self, manifest: Manifest, local_files: Mapping[str, str | os.PathLike]) -> Manifest:
        """Upload weight files (role → local path) and then the manifest that lists them.

        The manifest goes last, so a reader never sees a manifest whose files are missing.
        Roles not in `local_files` keep their existing entries.
        """
        files = dict(manifest.files)
        for role, local in local_files.items():
            name = Path(local).name
            files[role] = FileEntry(name=name, sha256=sha256_file(local), size=os.path.getsize(local))
            self.fs.makedirs(join_url(self._root_path, manifest.profile), exist_ok=True)
            self.fs.put_file(str(local), self._path(manifest.profile, name))
            LOG.info("uploaded %s (%d bytes) to %s", name, files[role].size, self.url(manifest.profile, name))
        manifest.files = files
        with self.fs.open(self._path(manifest.profile, "manifest.json"), "wb") as handle:
            handle.write(manifest.to_json().encode("utf-8"))
        return manifest

    def fetch(self, manifest: Manifest, role: str) -> Path:
        """Local, verified copy of one weight file of a profile (downloaded once per machine)."""
        entry = manifest.files.get(role)
        if entry is None:
            raise MissingWeightFileError(
                f"profile {manifest.profile!r} at {self.url(manifest.profile)} has no {role} weights in its manifest"
                + ("; train UMCI with `python -m pipeline.train_umci`" if role == "umci" else "")
            )
        target = cache_dir() / entry.sha256[:2] / f"{entry.sha256}-{entry.name}"
        if target.exists() and target.stat().st_size == entry.size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(target.with_name(target.name + ".lock")):
            if target.exists() and target.stat().st_size == entry.size:
                return target  # another process finished the download while we waited
            self._download_verified(manifest.profile, entry, target)
        return target

    def _download_verified(self, profile: str, entry: FileEntry, target: Path) -> None:
        url = self.url(profile, entry.name)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.name}.", suffix=".part")
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(handle, "wb") as out, self.fs.open(self._path(profile, entry.name), "rb") as src:
                for block in iter(lambda: src.read(CHUNK), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise ChecksumMismatchError(
                    f"checksum mismatch for {url}: manifest says sha256 {entry.sha256} ({entry.size} bytes), "
                    f"the store has sha256 {digest.hexdigest()} ({size} bytes); re-publish the profile"
                )
            os.replace(tmp, target)
            LOG.info("cached %s (%d bytes) at %s", url, size, target)
        except FileNotFoundError as exc:
            raise MissingWeightFileError(f"weight file missing from the model store: {url}") from exc
        except ModelStoreError:
            raise
        except OSError as exc:
            raise MissingWeightFileError(f"cannot read weight file {url}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class _file_lock:
    """An exclusive advisory lock (fcntl) held while a file is downloaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_file_lock":
        self._handle = open(self.path, "a+")
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()

