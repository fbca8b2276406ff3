"""Pytest fixtures for models: the seeded `tiny` profile, built once per test session.

CI builds the store once (`.ci/run` exports CLIPSAM_TINY_STORE) so the many tests that need
real models reuse it; a developer running one test file gets it built on the fly.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


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
    from model_store.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-store")
    make_tiny(str(root))
    return str(root)


@pytest.fixture(scope="session")
def tiny_model(tiny_store: str):
    """ClipSAM loaded from the tiny profile on the CPU."""
    from clipsam.model import ClipSAM

    return ClipSAM.from_store(tiny_store, "tiny", device="cpu")
