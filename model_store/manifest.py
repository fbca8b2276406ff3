"""`<root>/<profile>/manifest.json`: what a profile is made of, as data.

Like open_clip's model configs, a manifest fully describes how to build the modules (CLIP and
SAM configs, the ClipSAM method config) and lists each weight file with its sha256 and size,
so a worker can verify what it downloaded before it unpickles anything.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidManifestError

FORMAT_VERSION = 1
ROLES = ("clip", "sam", "umci")
MAX_NAME_BYTES = 255
_SHA256 = re.compile(r"[0-9a-f]{64}")


def name_problem(name: object) -> str | None:
    """Why `name` is not a single plain file or folder name, or None when it is one.

    A plain name is a non-empty str of at most MAX_NAME_BYTES UTF-8 bytes with no `/`, no
    backslash, no control character (NUL included), that does not start with `.` (so neither
    `.`, `..` nor hidden or partial files) and has no `..` in it. Store and cache paths are built
    from such names only, so a manifest cannot point a reader or writer outside its folder.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains a control character"
    if name.startswith("."):
        return "starts with '.'"
    if ".." in name:
        return "contains '..'"
    return None


def entry_problem(entry: "FileEntry") -> str | None:
    """Why a file entry is unusable (bad name, sha256 not 64 lowercase hex, bad size), or None."""
    problem = name_problem(entry.name)
    if problem:
        return f"file name {entry.name!r} {problem}"
    if not isinstance(entry.sha256, str) or not _SHA256.fullmatch(entry.sha256):
        return f"sha256 {entry.sha256!r} of {entry.name!r} is not 64 lowercase hex digits"
    if isinstance(entry.size, bool) or not isinstance(entry.size, int) or entry.size < 0:
        return f"size {entry.size!r} of {entry.name!r} is not a non-negative integer"
    return None


@dataclass(frozen=True)
class FileEntry:
    """One weight file of a profile (name is relative to the profile folder)."""

    name: str
    sha256: str
    size: int


@dataclass
class Manifest:
    """A profile's description.

    clip_config: open_clip CLIP config {embed_dim, vision_cfg, text_cfg, quick_gelu}.
    sam_config: see `clipsam.backbones.build_sam`.
    clipsam_config: `clipsam.config.ClipSAMConfig.to_dict()`.
    files: role ("clip", "sam", "umci") → FileEntry; a role may be absent (e.g. UMCI not trained yet).
    provenance: free-form facts (source URLs, training config, seeds) recorded by whoever wrote it.
    """

    profile: str
    clip_config: dict[str, Any]
    sam_config: dict[str, Any]
    clipsam_config: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, url: str) -> "Manifest":
        try:
            data = json.loads(text)
            files = {role: FileEntry(**entry) for role, entry in data.pop("files", {}).items()}
            manifest = cls(files=files, **data)
        except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: JSON that is not an object
            raise InvalidManifestError(f"invalid model store manifest at {url}: {exc}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise InvalidManifestError(
                f"manifest at {url} has format_version {manifest.format_version}; this code reads {FORMAT_VERSION}"
            )
        unknown = sorted(set(manifest.files) - set(ROLES))
        if unknown:
            raise InvalidManifestError(f"manifest at {url} lists unknown file roles {unknown}")
        problem = name_problem(manifest.profile)
        if problem:
            raise InvalidManifestError(f"manifest at {url}: profile name {manifest.profile!r} {problem}")
        for role, entry in sorted(manifest.files.items()):
            problem = entry_problem(entry)
            if problem:
                raise InvalidManifestError(f"manifest at {url}: {role} {problem}")
        return manifest

    def digests(self) -> dict[str, str]:
        """role → sha256, recorded in every output record for provenance."""
        return {role: entry.sha256 for role, entry in sorted(self.files.items())}
