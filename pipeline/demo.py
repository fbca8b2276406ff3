"""`./run_pipeline.sh --demo`: the whole job on bundled data and the tiny models, no arguments.

Assembles one MVTec-AD-layout input folder from the real MVTec images bundled under
tests/data/real (CC BY-NC-SA 4.0, see LICENSE_AND_SOURCES.md there) and seeded synthetic
line images of two held-out synthetic categories, with good parts to calibrate the OK/NG
thresholds on (their train split); takes the tiny model store shipped with the package (or builds it when the
checkout changed its recipe), and runs the pipeline locally: calibration, then scoring, with
overlays of the NG parts and report.html. The tiny models are small and trained on synthetic
defects only: the demo shows the pipeline, not production accuracy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tiny.synthetic import TEST_CATEGORIES

from .logs import show_progress
from .make_synthetic import write_synthetic_dataset
from .run import main as run_main

REPO = Path(__file__).resolve().parents[1]
REAL_ROOTS = [REPO / "tests/data/real/mvtec_ad", REPO / "tests/data/real/mvtec_ad_256"]
DEMO_SYNTHETIC = TEST_CATEGORIES[:2]
CALIBRATION_GOOD = 12  # good parts per synthetic category to calibrate on (pipeline.threshold needs 10)


def prepare_input(workdir: Path) -> Path:
    """<workdir>/input, made once: the real categories copied + synthetic categories generated,
    MVTec-AD layout. Its test split is scored; the synthetic categories' train/good images (never
    scored) are the good parts the OK/NG thresholds are calibrated on. The real categories have
    no train split, so they keep the profile default, and the run says so."""
    target = workdir / "input"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for root in REAL_ROOTS:
        for category in sorted(p for p in root.iterdir() if p.is_dir()):
            shutil.copytree(category, target / category.name)
    write_synthetic_dataset(str(target), DEMO_SYNTHETIC, seed=0, size=256, n_train_good=CALIBRATION_GOOD,
                            n_test_good=4, n_test_defect=1)
    (target / ".complete").touch()
    return target


def prepare_store(store: Path) -> Path:
    """<store>/tiny from the current recipe and code. `make_tiny` copies the shipped store when
    its build key (seed, recipe, training sources) matches the checkout, else a cached build, and
    trains only when neither matches (and says so) instead of running stale weights."""
    from tiny.build import make_tiny

    make_tiny(str(store))
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_pipeline.sh --demo", description=__doc__)
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "demo"), help="where demo inputs and the tiny store live")
    parser.add_argument("--output", default=str(REPO / "out" / "demo"), help="output root (default ./out/demo)")
    known, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    show_progress()
    workdir = Path(known.workdir)
    os.environ.setdefault("CLIPSAM_CACHE", str(workdir / "weights-cache"))
    store = prepare_store(workdir / "model-store")
    data = prepare_input(workdir)
    args = [
        f"--input={data}",
        f"--calibrate_on={data}",
        f"--output={known.output}",
        f"--model_store={store}",
        "--profile=tiny",
        "--runner=FnApiRunner",
        "--store_maps",
        *extra,
    ]
    print("demo: python -m pipeline.run " + " ".join(args))
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
