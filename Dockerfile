# Dataflow GPU worker image for clipsam-pipeline (custom SDK container).
#
# Build and push (needs Docker and a registry; not buildable on the offline dev machines):
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/clipsam-worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/clipsam-worker:0.1.0
# and launch with --sdk_container_image=<that tag> --sdk_location=container (see README, "Dataflow").
#
# Beam's own SDK image is the base: its Python (3.11) and Beam (2.77.0) must equal the launcher's,
# and its boot program starts the SDK harness. Everything is installed into that image's default
# Python environment, and RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 tells the boot program to run
# the harness there: without it, boot creates a fresh virtual environment at start-up, which
# would not see the packages installed here.
#
# One CUDA stack: the torch wheels from PyPI carry their CUDA libraries (nvidia-* wheels); the
# driver comes from Dataflow (worker_accelerator=...;install-nvidia-driver). No CUDA base image.
FROM apache/beam_python3.11_sdk:2.77.0
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CLIPSAM_CACHE=/var/cache/clipsam

WORKDIR /opt/clipsam
COPY setup.py README.md ./
COPY clipsam ./clipsam
COPY inputs ./inputs
COPY model_store ./model_store
COPY tiny ./tiny
COPY transforms ./transforms
COPY pipeline ./pipeline
# The project, its torch/torchvision (with their CUDA libraries) and Beam's GCP extras, into the
# default environment; `pip check` fails the build if anything installed is inconsistent.
RUN python -m pip install --upgrade pip \
 && python -m pip install ".[gcp]" \
 && python -m pip check

# Weights are not baked in: workers fetch them from --model_store into $CLIPSAM_CACHE once per VM.
ENTRYPOINT ["/opt/apache/beam/boot"]
