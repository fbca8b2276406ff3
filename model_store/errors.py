"""The model store's errors: one class per thing that can go wrong, each naming the URL involved.

A worker that cannot load its model must stop with a message a person can act on (which file,
which store, what to run), not with a torch traceback deep inside unpickling.
"""
from __future__ import annotations

MAX_REASON_CHARS = 300


def one_line(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """`text` with its whitespace runs (newlines included) collapsed to one space, cut at `limit`
    characters: for quoting an inner exception inside a one-line error message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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


class CacheError(ModelStoreError):
    """The local weights cache cannot be written, or a path in it resolves outside the cache."""


class CorruptCheckpointError(ModelStoreError):
    """A weight file passed its checksum but is not a loadable state dict for its model."""


class StageError(ModelStoreError):
    """Downloading or publishing real weights failed (no internet, HTTP error, bad checksum)."""
