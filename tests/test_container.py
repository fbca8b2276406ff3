"""The Dataflow worker container, as far as it can be checked without Docker.

Beam's boot program runs the SDK harness with the image's default `python`; unless
RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT is set it first makes a fresh virtual environment, which sees
none of the image's own installs. The test reads the Dockerfile, then rebuilds the environment the
image would have from exactly what it copies (a non-editable install into a folder of its own),
and in a separate interpreter that sees only that folder and the third-party packages (no
checkout on the path, no editable-install hooks) unpickles a stage handler pickled by the
launcher and imports the harness entry point, as a worker does.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import apache_beam as beam
import pytest

from .conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def setup_packages() -> list[str]:
    """Top-level packages setup.py installs (its find_packages include list)."""
    include = re.search(r"find_packages\(include=\[([^\]]*)\]", (REPO / "setup.py").read_text()).group(1)
    return sorted(name.strip().strip('"').rstrip("*") for name in include.split(","))


def test_boot_runs_in_the_environment_the_image_installs_into():
    steps = instructions()
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert bases == [f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{beam.__version__}"]
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert re.search(r"\bRUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1\b", env)
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "venv" not in runs and "virtualenv" not in runs  # installs go to the default environment
    assert "pip check" in runs
    assert "nvidia/cuda" not in " ".join(bases)  # one CUDA stack: the torch wheels' own
    assert [args for keyword, args in steps if keyword == "ENTRYPOINT"] == ['["/opt/apache/beam/boot"]']


def test_image_copies_every_package_setup_py_installs():
    copied = {shlex.split(args)[0].rstrip("/") for keyword, args in instructions() if keyword == "COPY"}
    missing = [p for p in setup_packages() if p not in copied]
    assert not missing, f"Dockerfile does not COPY {missing}"
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert on_disk <= set(setup_packages()), f"packages not installed by setup.py: {on_disk - set(setup_packages())}"


def _image_tree(root: Path) -> Path:
    """The WORKDIR of the image: what its COPY instructions bring, nothing else."""
    workdir = root / "opt" / "clipsam"
    workdir.mkdir(parents=True)
    for keyword, args in instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, target = shlex.split(args)
        for source in sources:
            path = REPO / source
            destination = workdir / (path.name if target.endswith("/") and target in ("./", ".") else target)
            if path.is_dir():
                shutil.copytree(path, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, workdir / path.name)
    return workdir


def test_worker_environment_unpickles_the_stage_handlers(tmp_path):
    from apache_beam.internal import pickler

    from transforms.stages import ModelSpec, Stage1Handler, Stage2Handler

    workdir = _image_tree(tmp_path / "image")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(workdir)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    payload = tmp_path / "handlers.pkl"
    spec = ModelSpec("gs://bucket/store", "tiny")
    payload.write_bytes(pickler.dumps([Stage1Handler(spec, max_batch_size=4), Stage2Handler(spec, max_batch_size=4)]))
    worker_code = (
        "import sys, apache_beam.runners.worker.sdk_worker_main\n"
        "from apache_beam.internal import pickler\n"
        f"handlers = pickler.loads(open({str(payload)!r}, 'rb').read())\n"
        "import transforms, inputs, clipsam, model_store\n"
        "assert all(m.__file__.startswith(sys.argv[1]) for m in (transforms, inputs, clipsam, model_store)), "
        "[m.__file__ for m in (transforms, inputs, clipsam, model_store)]\n"
        "print(type(handlers[0]).__name__, type(handlers[1]).__name__)\n"
    )
    # -S: no site hooks, so the checkout's editable install is invisible; only the image's folder
    # and the third-party packages are on the path.
    third_party = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-S", "-c", worker_code, str(site)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env={"PYTHONPATH": f"{site}:{third_party}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["Stage1Handler", "Stage2Handler"]


@pytest.mark.parametrize("package", ["tiny", "inputs"])
def test_a_package_left_out_of_the_image_is_caught(package, tmp_path, monkeypatch):
    """The check above fails when a package the workers need is not copied (the class of mistake
    this test exists for)."""
    text = DOCKERFILE.read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(re.sub(rf"^COPY {package} .*$", "", text, flags=re.M))
    monkeypatch.setattr(sys.modules[__name__], "DOCKERFILE", broken)
    with pytest.raises(AssertionError, match=package):
        test_image_copies_every_package_setup_py_installs()
