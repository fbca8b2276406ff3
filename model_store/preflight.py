"""Launch-time check of a profile: everything that can be known without downloading weights.

A pipeline calls `check_profile` before it starts workers, so a typo in a store URL, a profile
without UMCI weights or a half-published profile stops the launch with one line naming the URL,
instead of failing on every worker later. It reads the manifest (validated as workers read it),
checks the roles inference needs are listed, and asks the store (fsspec `info`) that each listed
file exists with the manifest's size. Hashes are checked by the workers when they download.
"""
from __future__ import annotations

from typing import Iterable

from .errors import ChecksumMismatchError, ManifestNotFoundError, MissingWeightFileError, ModelStoreError, one_line
from .manifest import Manifest
from .store import ModelStore, missing_role_message

INFERENCE_ROLES = ("clip", "sam", "umci")


def open_store(url: str) -> ModelStore:
    """ModelStore(url), with a bad URL (unknown protocol, missing fsspec backend) as a ModelStoreError."""
    try:
        return ModelStore(url)
    except Exception as exc:  # fsspec backends raise many types for a bad URL
        raise ManifestNotFoundError(f"cannot open model store {url}: {one_line(exc)}") from None


def check_profile(url: str, profile: str, roles: Iterable[str] = INFERENCE_ROLES) -> Manifest:
    """The profile's validated manifest, after checking that each of `roles` has a file in the
    store of the manifest's size.

    Raises (each with one line naming the URL): UnknownProfileError for a profile name that is
    not a plain name; ManifestNotFoundError when the store or manifest cannot be read;
    InvalidManifestError for a manifest that does not validate; MissingWeightFileError for a
    role the manifest does not list or a file the store lacks; ChecksumMismatchError for a file
    whose size differs from the manifest's.
    """
    store = open_store(url)
    try:
        manifest = store.read_manifest(profile)
    except ModelStoreError:
        raise
    except Exception as exc:  # a backend's own error types (permissions, network)
        raise ManifestNotFoundError(f"cannot read manifest {store.url(profile, 'manifest.json')}: {one_line(exc)}") from None
    for role in roles:
        if role not in manifest.files:
            raise MissingWeightFileError(missing_role_message(manifest.profile, store.url(manifest.profile), role))
    for role in roles:
        entry = manifest.files[role]
        file_url = store.url(manifest.profile, entry.name)
        try:
            info = store.fs.info(store._path(manifest.profile, entry.name))
        except FileNotFoundError:
            raise MissingWeightFileError(f"weight file missing from the model store: {file_url}") from None
        except Exception as exc:  # a backend's own error types (permissions, network)
            raise MissingWeightFileError(f"cannot read weight file {file_url}: {one_line(exc)}") from None
        if info.get("type") not in (None, "file"):
            raise MissingWeightFileError(f"{file_url} in the model store is a {info.get('type')}, not a weight file")
        size = info.get("size")
        if size != entry.size:
            raise ChecksumMismatchError(
                f"size mismatch for {file_url}: manifest says {entry.size} bytes, the store has {size} bytes; "
                "re-publish the profile"
            )
    return manifest
