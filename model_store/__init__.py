"""Model storage: profiles, manifests, the fsspec store, the verified local cache, staging and loading.

>>> from model_store import load_clipsam
>>> model, manifest = load_clipsam("/path/to/store", "tiny")
>>> pred = model.predict("gs://bucket/screw/000.png", "screw")  # a path/URL, PIL image or array

`load_clipsam` gives the model the pipeline's image reader (`inputs.read_image`), so model_store
imports `inputs` (which imports only `clipsam`).
"""
from .errors import ModelStoreError
from .loading import load_clipsam, load_stage1, load_stage2
from .manifest import FileEntry, Manifest
from .preflight import check_profile
from .profiles import PROFILES, Profile, get_profile
from .store import ModelStore

__all__ = ["FileEntry", "Manifest", "ModelStore", "ModelStoreError", "PROFILES", "Profile", "get_profile",
           "check_profile", "load_clipsam", "load_stage1", "load_stage2"]
