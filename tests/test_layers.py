"""The layer rule of the repository (README "Repository layout"): imports run one way,
`pipeline → transforms → inputs / model_store → clipsam`, and `tiny → model_store, clipsam`;
`model_store → inputs` too, for one thing: `load_clipsam` gives the notebook API the pipeline's
image reader (`inputs.read_image`; `clipsam` must not read files itself).

Every module of every package is read with `ast` (imports inside functions count too: a lazy
import is still a dependency) and imported for real, so a cycle that only shows at import
time fails here as well.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO

# package → the project packages its modules may import (besides itself).
ALLOWED = {
    "clipsam": set(),
    "model_store": {"clipsam", "inputs"},
    "inputs": {"clipsam"},
    "tiny": {"clipsam", "model_store"},
    "transforms": {"clipsam", "model_store", "inputs"},
    "pipeline": {"clipsam", "model_store", "inputs", "transforms", "tiny"},
}
# Third-party packages a layer must not touch: the science runs on arrays alone, and input
# reading is shared with training, which runs without Beam.
FORBIDDEN_THIRD_PARTY = {
    "clipsam": {"apache_beam", "fsspec", "gcsfs", "pyarrow"},
    "inputs": {"apache_beam", "pyarrow"},
    "model_store": {"apache_beam"},
    "tiny": {"apache_beam"},
}
# `python -m <package>` entry points are command lines: they sit above every layer.
ENTRY_POINT = "__main__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> list[Path]:
    return sorted(p for package in ALLOWED for p in (REPO / package).rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Absolute names of what `path` imports (relative imports resolved): `from a import b` gives
    `a.b` when `a/b.py` is a project module (a submodule is what is imported), else `a`."""
    modules = {module_name(p) for p in project_modules()}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                names.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return names


def test_every_package_imports_only_the_layers_below_it():
    broken = []
    for path in project_modules():
        if path.stem == ENTRY_POINT:
            continue
        own = module_name(path).split(".")[0]
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in ALLOWED and top != own and top not in ALLOWED[own]:
                broken.append(f"{path.relative_to(REPO)} imports {name}")
            if top in FORBIDDEN_THIRD_PARTY.get(own, ()):
                broken.append(f"{path.relative_to(REPO)} imports {name} ({own} must not use {top})")
    assert not broken, "\n".join(sorted(broken))


def test_no_import_cycle_between_modules():
    modules = {module_name(p): p for p in project_modules()}
    graph = {
        name: {m for m in imported_names(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: module_name(p))
def test_module_imports(path: Path):
    if path.stem == ENTRY_POINT:
        pytest.skip("entry points run as scripts")
    importlib.import_module(module_name(path))


def test_public_api_of_each_package():
    from clipsam import ClipSAM, ClipSAMConfig, Prediction  # noqa: F401
    from inputs import ImageElement, InputUnit, list_inputs, read_unit  # noqa: F401
    from model_store import ModelStore, load_clipsam  # noqa: F401
    from tiny import make_tiny  # noqa: F401
