#!/usr/bin/env bash
# Launch the ClipSAM batch pipeline. Every flag is passed through to `python -m pipeline.run`
# (see `./run_pipeline.sh --help`), so Beam runner flags work as usual:
#   ./run_pipeline.sh --input=... --output=... --model_store=... --runner=DataflowRunner \
#       --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
# `./run_pipeline.sh --demo` runs the whole job on the bundled sample data with the tiny models.
# Relative paths in flags are relative to the folder you run it from, not to this checkout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
# The checkout's packages come first on the path; the working directory stays the caller's.
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--demo" ]; then
  shift
  exec "$python" -m pipeline.demo "$@"
fi
exec "$python" -m pipeline.run "$@"
