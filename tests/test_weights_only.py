"""Workers read weights only as safetensors: no load path can unpickle anything, and a loaded
module's parameters are the memory-mapped tensors of the verified file (one copy)."""
from __future__ import annotations

import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from model_store.errors import CorruptCheckpointError
from model_store.loading import load_clipsam, load_stage1, load_stage2
from model_store.store import ModelStore


class Unpickled(AssertionError):
    """Something on a worker's load path tried to unpickle."""


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def no_pickle(monkeypatch):
    """Every way into an unpickler raises."""
    def refuse(*args, **kwargs):
        raise Unpickled("a worker load path tried to unpickle")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(torch.serialization, "_load", refuse)


@pytest.fixture()
def local_store(tmp_path, tiny_store) -> str:
    root = tmp_path / "store"
    fsspec.filesystem("file").copy(str(Path(tiny_store) / "tiny"), str(root / "tiny"), recursive=True)
    return str(root)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)


def test_store_files_are_safetensors(tiny_store):
    manifest = ModelStore(tiny_store).read_manifest("tiny")
    assert all(entry.name.endswith(".safetensors") for entry in manifest.files.values())


def test_loading_and_predicting_never_unpickle(tiny_store, fresh_cache, no_pickle):
    model, manifest = load_clipsam(tiny_store, "tiny", device="cpu")
    (prediction,) = model.predict_batch([_image()], ["bottle"])
    assert np.isfinite(prediction.image_score)
    stage1, _ = load_stage1(tiny_store, "tiny", device="cpu")
    stage2, _ = load_stage2(tiny_store, "tiny", device="cpu")
    assert stage1 is not None and stage2 is not None
    with pytest.raises(Unpickled):
        torch.load("anything")  # the guard itself is in place


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `path` (from /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.rstrip().endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_parameters_are_the_mapped_file(tiny_store, fresh_cache):
    """Every loaded parameter lies inside the mapping of its verified cache file (one copy of
    the weights, not a copy per load), and no tensor is left on the meta device (non-persistent
    buffers such as open_clip's attn_mask and SAM's pixel_mean are built)."""
    stage1, manifest = load_stage1(tiny_store, "tiny", device="cpu")
    stage2, _ = load_stage2(tiny_store, "tiny", device="cpu")
    store = ModelStore(tiny_store)
    for role, module in (("clip", stage1.clip), ("umci", stage1.umci), ("sam", stage2.sam.model)):
        ranges = _mapped_ranges(store.fetch(manifest, role))
        assert ranges, f"{role} file is not mapped"
        for name, tensor in module.named_parameters():
            pointer = tensor.data_ptr()
            assert any(lo <= pointer < hi for lo, hi in ranges), f"{role} {name} is a copy"
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("payload", [
    lambda p: torch.save({"weight": torch.zeros(3)}, p),  # a plain torch state dict: still a pickle
    lambda p: p.write_bytes(b"this is not a checkpoint at all"),
])
def test_a_pickle_in_the_manifest_is_refused(local_store, fresh_cache, tmp_path, payload, monkeypatch):
    store = ModelStore(local_store)
    bad = tmp_path / "sam.pt"
    payload(bad)
    store.publish(store.read_manifest("tiny"), {"sam": bad})
    url = f"{local_store}/tiny/sam.pt"

    def refuse(*args, **kwargs):
        raise Unpickled("unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "_load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with pytest.raises(CorruptCheckpointError) as caught:
        load_stage2(local_store, "tiny", device="cpu")
    text = str(caught.value)
    assert "\n" not in text and url in text and "not a safetensors file" in text
    assert "python -m model_store stage" in text


def test_make_random_store_loads_and_says_it_is_random(tmp_path, fresh_cache, no_pickle):
    from model_store.random_store import is_random, make_random
    from pipeline.report import write_report
    from pipeline.summary import RunSummary

    manifest = make_random(str(tmp_path / "rand"), "tiny", seed=3, dtype="fp16")
    assert is_random(manifest) and manifest.provenance["seed"] == 3
    assert all(entry.name.endswith(".safetensors") for entry in manifest.files.values())
    model, loaded = load_clipsam(str(tmp_path / "rand"), "tiny", device="cpu")
    assert is_random(loaded)
    assert next(model.stage2.sam.model.parameters()).dtype == torch.float32  # fp16 files, fp32 modules
    assert np.isfinite(model.predict_batch([_image()], ["bottle"])[0].image_score)

    summary = RunSummary(run_dir=str(tmp_path / "run"), failures_by_type={}, categories={}, metrics=None, elapsed_s=1.0,
                         files={"records": "r", "failures": "f"}, random_weights=True)
    assert "WARNING" in summary.text() and "RANDOM weights" in summary.text()
    (tmp_path / "run").mkdir()
    report = Path(write_report(summary))
    assert "RANDOM WEIGHTS" in report.read_text()
