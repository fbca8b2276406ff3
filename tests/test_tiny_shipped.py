"""The trained tiny store shipped in tiny/shipped/: current with this checkout, intact, and used.

Whoever changes the recipe or any weight-shaping source (`tiny.build.WEIGHT_SOURCES`) refreshes
it with `python -m model_store ship-tiny` and commits tiny/shipped/; until then this fails.
"""
from __future__ import annotations

import hashlib

from model_store.store import ModelStore
from tiny.build import SHIPPED, TINY, build_key, make_tiny, shipped_key
from tiny.recipe import TinyRecipe


def test_shipped_store_is_the_build_of_this_checkout():
    assert shipped_key() == build_key(0, True, TinyRecipe()), (
        "tiny/shipped/ was built from other training code or recipe: run `python -m model_store ship-tiny` "
        "(trains for ~10 min on 2 cores) and commit tiny/shipped/")


def test_shipped_files_are_the_ones_its_manifest_names():
    manifest = ModelStore(str(SHIPPED)).read_manifest(TINY)
    assert manifest.provenance["trained"] is True and manifest.provenance["seed"] == 0
    for entry in manifest.files.values():
        data = (SHIPPED / TINY / entry.name).read_bytes()
        assert entry.name.endswith(".safetensors")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256)


def test_make_tiny_copies_the_shipped_store_instead_of_training(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_CACHE", str(tmp_path / "cache"))
    build_cache = tmp_path / "builds"
    manifest = make_tiny(str(tmp_path / "store"), build_cache=build_cache)
    shipped = ModelStore(str(SHIPPED)).read_manifest(TINY)
    assert {role: e.sha256 for role, e in manifest.files.items()} == {role: e.sha256 for role, e in shipped.files.items()}
    assert not build_cache.exists()  # nothing was trained or cached
