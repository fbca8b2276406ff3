"""Cost of converting full-size official checkpoint formats with model_store.convert.

    python benchmarks/stage_official_formats.py [--profile clipsam-vitb-sam-b] [--dir DIR] [--keep]

Builds seeded random stand-ins at the profile's real sizes (default: open_clip ViT-B-16 and SAM
ViT-B) in every format users hold, written the way the official files are:
- OpenAI TorchScript: the CLIP cast to OpenAI's mixed float16, with OpenAI's 0-d extras,
  traced with `torch.jit.trace_module` and saved with `torch.jit.save`;
- OpenAI-named state dict (`torch.save` of the traced model's state_dict);
- open_clip `open_clip_pytorch_model.bin` and `open_clip_model.safetensors` (float32);
- SAM `sam_vit_b.pth` (`torch.save`) and the same keys as safetensors.
Then converts each in a fresh subprocess (`read_checkpoint` to float32, then `write_safetensors`)
and prints, per format: file size, read+convert seconds, write seconds, and the subprocess's peak
RSS (`resource.getrusage`) and its RSS after imports, in MiB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# torch, clipsam and model_store are imported inside the per-step subprocesses only: a child's
# ru_maxrss starts at its parent's peak (it survives fork and exec), so the parent stays small.


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def build_stand_ins(profile_name: str, out: Path) -> list[tuple[str, str, Path]]:
    """(label, role, path) of every stand-in file, written into `out`."""
    import torch
    from safetensors.torch import save_file

    from clipsam.backbones import build_clip, build_sam
    from model_store.profiles import get_profile
    from model_store.stand_ins import write_openai_torchscript

    profile = get_profile(profile_name)
    torch.manual_seed(0)
    config = profile.clip_config()
    clip = build_clip(config)
    files = []
    state = clip.state_dict()
    torch.save(state, out / "open_clip_pytorch_model.bin")
    files.append(("open_clip .bin", "clip", out / "open_clip_pytorch_model.bin"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "open_clip_model.safetensors"))
    files.append(("open_clip .safetensors", "clip", out / "open_clip_model.safetensors"))

    del state
    openai_state = write_openai_torchscript(clip, config, out / "ViT-openai.pt")
    del clip
    torch.save(openai_state, out / "openai_state_dict.pt")
    files.append(("OpenAI TorchScript", "clip", out / "ViT-openai.pt"))
    files.append(("OpenAI-named state dict", "clip", out / "openai_state_dict.pt"))
    del openai_state

    sam_state = build_sam(profile.sam_config).state_dict()
    torch.save(sam_state, out / "sam.pth")
    save_file({k: v.contiguous() for k, v in sam_state.items()}, str(out / "sam.safetensors"))
    files.append(("SAM .pth", "sam", out / "sam.pth"))
    files.append(("SAM .safetensors", "sam", out / "sam.safetensors"))
    return files


def convert_one(path: Path, role: str, profile: str) -> dict:
    """Run in a fresh process: read + convert one file, write it as safetensors, measure."""
    from model_store import convert

    baseline = _rss_mib()
    sha = convert.sha256_file(path) if convert.detect_format(path) == "torchscript" else None
    start = time.perf_counter()
    checkpoint = convert.read_checkpoint(path, role, profile, expected_sha256=sha)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    convert.write_safetensors(checkpoint.state, path.with_name(path.name + ".converted.safetensors"))
    write_s = time.perf_counter() - start
    path.with_name(path.name + ".converted.safetensors").unlink()
    return {"format": checkpoint.format, "read_s": read_s, "write_s": write_s,
            "rss_after_imports_mib": baseline, "peak_rss_mib": _rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="clipsam-vitb-sam-b")
    parser.add_argument("--dir", help="where to write the stand-ins (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stand-ins")
    parser.add_argument("--convert", help=argparse.SUPPRESS)  # internal: the per-file subprocess
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: the stand-in builder subprocess
    args = parser.parse_args()
    if args.convert:
        print(json.dumps(convert_one(Path(args.convert), args.role, args.profile)))
        return
    if args.build:
        files = build_stand_ins(args.profile, Path(args.build))
        print(json.dumps([(label, role, str(path)) for label, role, path in files]))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        built = subprocess.run([sys.executable, __file__, "--build", str(out), "--profile", args.profile],
                               check=True, capture_output=True, text=True)
        files = [(label, role, Path(path)) for label, role, path in json.loads(built.stdout.strip().splitlines()[-1])]
        print(f"built {len(files)} stand-ins for {args.profile} in {time.perf_counter() - start:.1f} s")
        print(f"{'format':26s} {'detected':13s} {'size MiB':>9s} {'read s':>7s} {'write s':>8s} "
              f"{'RSS imports':>12s} {'peak RSS':>9s}")
        for label, role, path in files:
            result = subprocess.run(
                [sys.executable, __file__, "--convert", str(path), "--role", role, "--profile", args.profile],
                check=True, capture_output=True, text=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{label:26s} {r['format']:13s} {path.stat().st_size / 2**20:9.0f} {r['read_s']:7.2f} "
                  f"{r['write_s']:8.2f} {r['rss_after_imports_mib']:12.0f} {r['peak_rss_mib']:9.0f}")
        if args.keep:
            kept = Path(args.dir or ".") / f"stand-ins-{args.profile}"
            kept.mkdir(exist_ok=True)
            for _, _, path in files:
                path.rename(kept / path.name)
            print(f"kept the stand-ins in {kept}")


if __name__ == "__main__":
    main()
