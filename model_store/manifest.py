"""`<root>/<profile>/manifest.json`: what a profile is made of, as data.

Like open_clip's model configs, a manifest fully describes how to build the modules (CLIP and
SAM configs, the ClipSAM method config) and lists each weight file with its sha256 and size,
so a worker can verify what it downloaded before it unpickles anything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidManifestError

FORMAT_VERSION = 1
ROLES = ("clip", "sam", "umci")


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
        except (ValueError, TypeError) as exc:
            raise InvalidManifestError(f"invalid model store manifest at {url}: {exc}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise InvalidManifestError(
                f"manifest at {url} has format_version {manifest.format_version}; this code reads {FORMAT_VERSION}"
            )
        unknown = sorted(set(manifest.files) - set(ROLES))
        if unknown:
            raise InvalidManifestError(f"manifest at {url} lists unknown file roles {unknown}")
        return manifest

    def digests(self) -> dict[str, str]:
        """role → sha256, recorded in every output record for provenance."""
        return {role: entry.sha256 for role, entry in sorted(self.files.items())}
