"""The model store's errors: one class per thing that can go wrong, each naming the URL involved.

A worker that cannot load its model must stop with a message a person can act on (which file,
which store, what to run), not with a torch traceback deep inside unpickling.
"""
from __future__ import annotations


class ModelStoreError(RuntimeError):
    """Base class of every model store error."""


class UnknownProfileError(ModelStoreError):
    """The profile name is not in the registry (and not in the store)."""


class ManifestNotFoundError(ModelStoreError):
    """The store has no `<profile>/manifest.json`."""


class InvalidManifestError(ModelStoreError):
    """manifest.json is not valid JSON or misses required fields."""


class MissingWeightFileError(ModelStoreError):
    """A file listed in the manifest is not in the store."""


class ChecksumMismatchError(ModelStoreError):
    """A file's sha256 (or size) differs from the manifest's."""


class CorruptCheckpointError(ModelStoreError):
    """A weight file passed its checksum but is not a loadable state dict for its model."""


class StageError(ModelStoreError):
    """Downloading or publishing real weights failed (no internet, HTTP error, bad checksum)."""
