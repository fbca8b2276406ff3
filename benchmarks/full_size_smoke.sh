#!/usr/bin/env bash
# Full-size check of the official-checkpoint path, as a user runs it (CPU):
# 1. ViT-B-16 / SAM ViT-B stand-ins (seeded random weights at the real shapes) in every official
#    format, each staged with `python -m model_store stage`, then a 2-image pipeline run on the
#    store staged from OpenAI's TorchScript .pt + SAM's .pth;
# 2. `make-random` of clipsam-vitl-sam-h, then a 2-image pipeline run on it.
# Prints the wall time and peak RSS (/usr/bin/time -v) of every command.
#   bash benchmarks/full_size_smoke.sh [WORKDIR]      (needs ~12 GB of disk, ~6 GB of memory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
export CLIPSAM_CACHE="$work/cache"
measure() {  # label, command...: run it, print "label: wall s, peak RSS MiB"
  local label="$1"; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" > "$work/last.log" 2>&1 || { cat "$work/last.log"; exit 1; }
  local wall rss
  wall=$(grep "Elapsed (wall clock)" "$work/time.txt" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time.txt" | awk '{printf "%.0f", $NF / 1024}')
  printf '%-58s wall %8s  peak RSS %6s MiB\n' "$label" "$wall" "$rss"
}
images="$work/images/part"
mkdir -p "$images"
cp "$repo"/tests/data/real/mvtec_ad/bottle/test/broken_large/000.png "$images/a.png"
cp "$repo"/tests/data/real/mvtec_ad/bottle/test/good/000.png "$images/b.png"

"$py" "$repo/benchmarks/stage_official_formats.py" --dir "$work" --keep > "$work/convert.txt"
cat "$work/convert.txt"
stand="$work/stand-ins-clipsam-vitb-sam-b"
measure "make-random clipsam-vitb-sam-b (for its UMCI)" \
  "$py" -m model_store make-random --profile=clipsam-vitb-sam-b --out="$work/random-b"
umci=$(ls "$work"/random-b/clipsam-vitb-sam-b/umci_*.safetensors)
stage() {  # CLIP file, SAM file: stage them (a TorchScript stand-in is vouched for by its sha256)
  local extra=()
  case "$1" in *ViT-openai.pt) extra=(--clip_sha256="$(sha256sum "$1" | cut -d' ' -f1)");; esac
  measure "stage $(basename "$1") + $(basename "$2")" "$py" -m model_store stage --profile=clipsam-vitb-sam-b \
    --to="$work/store-b" --clip_checkpoint="$1" "${extra[@]}" --sam_checkpoint="$2" --umci_checkpoint="$umci"
}
stage "$stand/open_clip_pytorch_model.bin" "$stand/sam.pth"
stage "$stand/open_clip_model.safetensors" "$stand/sam.pth"
stage "$stand/openai_state_dict.pt" "$stand/sam.pth"
stage "$stand/ViT-openai.pt" "$stand/sam.safetensors"   # the store the run below uses
measure "run 2 images, clipsam-vitb-sam-b (TorchScript + SAM safetensors)" \
  "$repo/run_pipeline.sh" --input="$work/images" --output="$work/out" --model_store="$work/store-b" \
  --profile=clipsam-vitb-sam-b --run_id=vitb --report=off
measure "make-random clipsam-vitl-sam-h" \
  "$py" -m model_store make-random --profile=clipsam-vitl-sam-h --out="$work/random-h"
measure "run 2 images, clipsam-vitl-sam-h (make-random)" \
  "$repo/run_pipeline.sh" --input="$work/images" --output="$work/out" --model_store="$work/random-h" \
  --profile=clipsam-vitl-sam-h --run_id=vith --report=off
echo "work folder: $work"
