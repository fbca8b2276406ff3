"""Pytest fixtures for models: the trained `tiny` profile, built once and reused.

CI builds the store once (`.ci/run` exports CLIPSAM_TINY_STORE) so the many tests that need
real models reuse it. Without it, the store is taken from make-tiny's build cache in the
user's cache folder (trained on the first run, a few minutes; copied afterwards).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# make-tiny's build cache lives in the user's cache, captured before the tests isolate
# CLIPSAM_CACHE: a trained build is worth keeping between test sessions.
USER_BUILD_CACHE = Path(os.environ.get("CLIPSAM_CACHE", Path.home() / ".cache" / "clipsam")) / "tiny-builds"


@pytest.fixture(scope="session", autouse=True)
def isolated_weight_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep tests from reading or filling the user's ~/.cache/clipsam."""
    path = tmp_path_factory.mktemp("clipsam-cache")
    os.environ["CLIPSAM_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, isolated_weight_cache: Path) -> str:
    """Root URL of a model store holding the `tiny` profile."""
    prebuilt = os.environ.get("CLIPSAM_TINY_STORE")
    if prebuilt and Path(prebuilt, "tiny", "manifest.json").exists():
        return prebuilt
    from tiny.build import make_tiny

    root = tmp_path_factory.mktemp("tiny-store")
    make_tiny(str(root), build_cache=USER_BUILD_CACHE)
    return str(root)


@pytest.fixture(scope="session")
def tiny_model(tiny_store: str):
    """ClipSAM loaded from the tiny profile on the CPU."""
    from model_store import load_clipsam

    return load_clipsam(tiny_store, "tiny", device="cpu")[0]


@pytest.fixture(scope="session")
def untrained_store(tmp_path_factory: pytest.TempPathFactory, isolated_weight_cache: Path) -> str:
    """Root URL of a store with the `tiny` profile's seeded random weights (seconds to build):
    for tests of the plumbing, where what the models say does not matter."""
    from tiny.build import make_tiny

    root = tmp_path_factory.mktemp("untrained-store")
    make_tiny(str(root), trained=False, use_cache=False)
    return str(root)
