"""A model store at any fsspec URL, and the worker-local cache its files are copied into.

Layout: `<root>/<profile>/manifest.json` plus the weight files it lists. Workers never read
weights straight from object storage: `fetch` copies each file into `$CLIPSAM_CACHE` (default
`~/.cache/clipsam`) as `weights/<sha256>`, verifying the hash before an atomic rename, under a file
lock so the many SDK processes of one VM download each file once.

Profile and file names come from remote data, so paths are built only from names that pass
`manifest.name_problem` (single plain names), cache files are named by their sha256 alone, and
every cache path is resolved and checked to lie inside the resolved cache folder before it is
written. A cache hit is trusted only while its verified-stamp (`weights/<sha256>.verified`: size,
mtime, ctime, inode and device recorded right after the sha256 check) still matches the file;
otherwise the file is hashed again, and downloaded again when it no longer matches.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping

import fsspec

from .errors import (
    CacheError,
    ChecksumMismatchError,
    InvalidManifestError,
    ManifestNotFoundError,
    MissingWeightFileError,
    ModelStoreError,
    UnknownProfileError,
    one_line,
)
from .manifest import FileEntry, Manifest, entry_problem, name_problem

LOG = logging.getLogger(__name__)
CHUNK = 8 << 20
WEIGHTS_DIR = "weights"
STAMP_SUFFIX = ".verified"
_STAMP_FIELDS = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev")


def cache_dir() -> Path:
    """Where verified weight files are kept on this machine."""
    return Path(os.environ.get("CLIPSAM_CACHE", Path.home() / ".cache" / "clipsam"))


def cached_path(entry: FileEntry) -> Path:
    """`<cache>/weights/<sha256>` for a valid entry, resolved; CacheError if it lies outside the cache."""
    problem = entry_problem(entry)
    if problem:
        raise InvalidManifestError(f"refusing to cache a weight file whose {problem}")
    root = cache_dir().resolve()
    folder = (root / WEIGHTS_DIR).resolve()
    if not folder.is_relative_to(root):
        raise CacheError(f"weights cache folder {root / WEIGHTS_DIR} resolves to {folder}, outside the cache {root}")
    target = folder / entry.sha256
    if target.parent != folder:
        raise CacheError(f"cache path {target} is outside the weights cache {folder}")
    return target


def missing_role_message(profile: str, profile_url: str, role: str) -> str:
    """One line: the profile's manifest lists no weights for `role`."""
    return (f"profile {profile!r} at {profile_url} has no {role} weights in its manifest"
            + ("; train UMCI with `python -m pipeline.train_umci`" if role == "umci" else ""))


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

    def check_profile_name(self, profile: str) -> None:
        """UnknownProfileError unless `profile` is a plain name (it becomes a folder of the store)."""
        problem = name_problem(profile)
        if problem:
            raise UnknownProfileError(f"profile name {profile!r} {problem}; not a profile of the store at {self.root}")

    def profiles(self) -> list[str]:
        """Profiles that have a manifest in this store."""
        try:
            found = self.fs.glob(join_url(self._root_path, "*", "manifest.json"))
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").split("/")[-2] for p in found)

    def read_manifest(self, profile: str) -> Manifest:
        """The validated manifest of `profile` (see `Manifest.from_json`); it must name `profile`."""
        self.check_profile_name(profile)
        path, url = self._path(profile, "manifest.json"), self.url(profile, "manifest.json")
        try:
            with self.fs.open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
        except FileNotFoundError:
            raise ManifestNotFoundError(
                f"no manifest for profile {profile!r} at {url} "
                f"(profiles in this store: {self.profiles() or 'none'}); "
                "create one with `python -m model_store make-tiny` or `python -m model_store stage`"
            ) from None
        except UnicodeDecodeError as exc:
            raise InvalidManifestError(f"invalid model store manifest at {url}: not UTF-8 ({exc.reason})") from None
        except OSError as exc:
            raise ManifestNotFoundError(f"cannot read manifest {url}: {one_line(exc)}") from None
        manifest = Manifest.from_json(text, url)
        if manifest.profile != profile:
            raise InvalidManifestError(f"manifest at {url} describes profile {manifest.profile!r}, not {profile!r}")
        return manifest

    def publish(self, manifest: Manifest, local_files: Mapping[str, str | os.PathLike]) -> Manifest:
        """Upload weight files (role → local path) and then the manifest that lists them.

        The manifest goes last, so a reader never sees a manifest whose files are missing.
        Roles not in `local_files` keep their existing entries.
        """
        problem = name_problem(manifest.profile)
        if problem:
            raise InvalidManifestError(f"cannot publish to {self.root}: profile name {manifest.profile!r} {problem}")
        files = dict(manifest.files)
        for role, local in local_files.items():
            name = Path(local).name
            problem = name_problem(name)
            if problem:
                raise InvalidManifestError(f"cannot publish {local} to {self.url(manifest.profile)}: "
                                           f"file name {name!r} {problem}")
            files[role] = FileEntry(name=name, sha256=sha256_file(local), size=os.path.getsize(local))
            self.fs.makedirs(join_url(self._root_path, manifest.profile), exist_ok=True)
            self.fs.put_file(str(local), self._path(manifest.profile, name))
            LOG.info("uploaded %s (%d bytes) to %s", name, files[role].size, self.url(manifest.profile, name))
        manifest.files = files
        with self.fs.open(self._path(manifest.profile, "manifest.json"), "wb") as handle:
            handle.write(manifest.to_json().encode("utf-8"))
        return manifest

    def fetch(self, manifest: Manifest, role: str) -> Path:
        """Local, verified copy of one weight file of a profile (downloaded once per machine).

        A cached copy is returned as is while its verified-stamp matches it; otherwise it is
        hashed again, and replaced by a fresh download when its sha256 is not the manifest's
        (ChecksumMismatchError when the store's copy does not match either).
        """
        entry = manifest.files.get(role)
        if entry is None:
            raise MissingWeightFileError(missing_role_message(manifest.profile, self.url(manifest.profile), role))
        problem = name_problem(manifest.profile)
        if problem:
            raise InvalidManifestError(f"manifest of the store at {self.root}: profile name {manifest.profile!r} {problem}")
        problem = entry_problem(entry)
        if problem:
            raise InvalidManifestError(f"manifest at {self.url(manifest.profile, 'manifest.json')}: {role} {problem}")
        target = cached_path(entry)
        if _stamp_matches(target, entry):
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = _file_lock(target.with_name(target.name + ".lock"))
            with lock:
                if _stamp_matches(target, entry):
                    return target  # another process downloaded or re-verified it while we waited
                if os.path.lexists(target):
                    if _verify_and_stamp(target, entry):
                        return target
                    LOG.warning("cached %s no longer matches sha256 %s of %s; downloading it again",
                                target, entry.sha256, self.url(manifest.profile, entry.name))
                    _discard(target)
                self._download_verified(manifest.profile, entry, target)
        except ModelStoreError:
            raise
        except OSError as exc:
            raise CacheError(f"cannot write the weights cache {target.parent}: {one_line(exc)}") from None
        return target

    def _download_verified(self, profile: str, entry: FileEntry, target: Path) -> None:
        """Copy the store's file to `target` (inside the cache) if its size and sha256 match `entry`."""
        url = self.url(profile, entry.name)
        if target != cached_path(entry):
            raise CacheError(f"refusing to write {target}: not the cache path of sha256 {entry.sha256}")
        try:
            src = self.fs.open(self._path(profile, entry.name), "rb")
        except FileNotFoundError:
            raise MissingWeightFileError(f"weight file missing from the model store: {url}") from None
        except OSError as exc:
            raise MissingWeightFileError(f"cannot read weight file {url}: {one_line(exc)}") from None
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.sha256}.", suffix=".part")
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(handle, "wb") as out, src:
                while True:
                    try:
                        block = src.read(CHUNK)
                    except OSError as exc:
                        raise MissingWeightFileError(f"cannot read weight file {url}: {one_line(exc)}") from None
                    if not block:
                        break
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise ChecksumMismatchError(
                    f"checksum mismatch for {url}: manifest says sha256 {entry.sha256} ({entry.size} bytes), "
                    f"the store has sha256 {digest.hexdigest()} ({size} bytes); re-publish the profile"
                )
            _remove(_stamp_path(target))
            os.replace(tmp, target)
            _write_stamp(target, entry, os.stat(target, follow_symlinks=False))
            LOG.info("cached %s (%d bytes) at %s", url, size, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + STAMP_SUFFIX)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _discard(target: Path) -> None:
    """Delete a cached file (or whatever stands at its path) and its stamp."""
    _remove(_stamp_path(target))
    if os.path.isdir(target) and not os.path.islink(target):
        raise CacheError(f"{target} in the weights cache is a folder, not a weight file; remove it")
    _remove(target)


def _file_facts(info: os.stat_result) -> dict[str, int]:
    return {name: getattr(info, name) for name in _STAMP_FIELDS}


def _stamp_matches(target: Path, entry: FileEntry) -> bool:
    """Whether `target` is a regular file of the entry's size whose stamp records it as it is now."""
    try:
        info = os.stat(target, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            return False
        stamp = json.loads(_stamp_path(target).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp == {"sha256": entry.sha256, **_file_facts(info)}


def _write_stamp(target: Path, entry: FileEntry, info: os.stat_result) -> None:
    """Record (atomically) that `target`, as `info` describes it, has the entry's sha256."""
    stamp = _stamp_path(target)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.sha256}.", suffix=".verified.part")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump({"sha256": entry.sha256, **_file_facts(info)}, out, sort_keys=True)
        os.replace(tmp, stamp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _verify_and_stamp(target: Path, entry: FileEntry) -> bool:
    """Hash a cached file without a valid stamp; stamp it and return True when it matches `entry`."""
    try:
        before = os.stat(target, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode) or before.st_size != entry.size:
            return False
        matches = sha256_file(target) == entry.sha256
        after = os.stat(target, follow_symlinks=False)
    except OSError:
        return False
    if not matches or _file_facts(before) != _file_facts(after):
        return False
    _write_stamp(target, entry, after)
    return True


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

