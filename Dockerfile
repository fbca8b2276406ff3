# Dataflow GPU worker image for clipsam-pipeline (custom SDK container).
#
# Build and push (needs Docker and a registry; not buildable on the offline dev machines):
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/clipsam-worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/clipsam-worker:0.1.0
# and launch with --sdk_container_image=<that tag> --sdk_location=container (see README, "Dataflow").
#
# The Python minor version and the Beam version here must equal the launcher's (3.11, 2.77.0).
FROM apache/beam_python3.11_sdk:2.77.0 AS beam

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CUDA build of torch first, so the project install below does not pull a different one.
RUN pip install --upgrade pip \
 && pip install "torch==2.9.1" "torchvision==0.24.1" --index-url https://download.pytorch.org/whl/cu128

WORKDIR /opt/clipsam
COPY setup.py README.md ./
COPY clipsam ./clipsam
COPY model_store ./model_store
COPY transforms ./transforms
COPY pipeline ./pipeline
RUN pip install ".[gcp]"

# Beam's worker boot program; Dataflow starts the SDK harness through it.
COPY --from=beam /opt/apache/beam /opt/apache/beam
# Weights are not baked in: workers fetch them from --model_store into this cache once per VM.
ENV CLIPSAM_CACHE=/var/cache/clipsam
ENTRYPOINT ["/opt/apache/beam/boot"]
