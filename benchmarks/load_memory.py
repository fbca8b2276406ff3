"""Peak memory of loading each stage of a profile, each load in a fresh subprocess.

    python benchmarks/load_memory.py --profile clipsam-vitb-sam-b --store /tmp/rand_b [--old] [--append]

For stage 1 (CLIP + UMCI), stage 2 (SAM) and both, a child process imports everything the
loader needs, records its RSS (the baseline), loads through `model_store.load_stage1/2` or
`load_clipsam`, and reports the peak RSS (`ru_maxrss`) right after loading and again after
reading every weight once (a sum over each tensor, as a forward pass would page the mapped file
in). Reported: weight bytes (the manifest's file sizes), the baseline, the raw peak, peak minus
baseline, and (peak - baseline) / weight bytes.

`--old` also measures what the loader did before weights were safetensors: the same tensors
saved with `torch.save`, `torch.load(weights_only=True)` of each file, modules built normally
(random initialisation) and `load_state_dict` copying into them. `--append` appends the table to
benchmarks/RESULTS.md with the date, machine, command and git commit.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROLES = {"stage1": ("clip", "umci"), "stage2": ("sam",), "both": ("clip", "umci", "sam")}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(store: str, profile: str, stage: str, impl: str, pt_dir: str | None) -> dict:
    """Runs in a fresh process: import, measure the baseline, load, measure."""
    import torch  # noqa: F401 - the imports are part of the baseline

    from clipsam.backbones import build_clip, build_sam, clip_tokenizer
    from clipsam.config import ClipSAMConfig
    from clipsam.model import ClipSAM
    from clipsam.stage1 import RoughMapper
    from clipsam.stage2 import MMRRefiner
    from clipsam.umci import UMCI
    from model_store import load_clipsam, load_stage1, load_stage2
    from model_store.store import ModelStore

    manifest = ModelStore(store).read_manifest(profile)
    weight_bytes = sum(manifest.files[r].size for r in ROLES[stage])
    baseline_rss, baseline_max = _rss_bytes(), _maxrss_bytes()
    if impl == "new":
        if stage == "stage1":
            loaded = load_stage1(store, profile, device="cpu")[0]
        elif stage == "stage2":
            loaded = load_stage2(store, profile, device="cpu")[0]
        else:
            loaded = load_clipsam(store, profile, device="cpu")[0]
    else:  # the loader as it was: torch.load of a pickle + plain construction + a copying load_state_dict
        config = ClipSAMConfig.from_dict(manifest.clipsam_config)

        def old(module, role):
            module.load_state_dict(torch.load(Path(pt_dir) / f"{role}.pt", map_location="cpu", weights_only=True),
                                   strict=True)
            return module

        parts = []
        if stage in ("stage1", "both"):
            clip = old(build_clip(manifest.clip_config), "clip")
            umci = old(UMCI(config.umci), "umci")
            parts.append(RoughMapper(clip, clip_tokenizer(manifest.clip_config), umci, config, device="cpu"))
        if stage in ("stage2", "both"):
            parts.append(MMRRefiner(old(build_sam(manifest.sam_config), "sam"), config.mmr, device="cpu"))
        loaded = ClipSAM(*parts) if len(parts) == 2 else parts[0]
    after_load = _maxrss_bytes()
    modules = [m for part in ([loaded.stage1, loaded.stage2] if stage == "both" else [loaded])
               for m in vars(part).values() if isinstance(m, torch.nn.Module)]
    modules += [m.model for part in ([loaded.stage2] if stage == "both" else [loaded]) for m in vars(part).values()
                if hasattr(m, "model") and isinstance(m.model, torch.nn.Module)]
    with torch.no_grad():
        total = sum(float(t.float().sum()) for m in modules for t in m.state_dict().values())
    after_touch = _maxrss_bytes()
    return {"stage": stage, "impl": impl, "weight_bytes": weight_bytes, "baseline_rss": baseline_rss,
            "baseline_maxrss": baseline_max, "peak_after_load": after_load, "peak_after_touch": after_touch,
            "checksum": total}


def _pt_copies(store: str, profile: str, out: Path) -> None:
    """The store's tensors saved again as torch.save pickles (what stores held before)."""
    import torch
    from safetensors.torch import load_file

    from model_store.store import ModelStore

    store_ = ModelStore(store)
    manifest = store_.read_manifest(profile)
    for role in manifest.files:
        torch.save({k: v.clone() for k, v in load_file(store_.fetch(manifest, role)).items()}, out / f"{role}.pt")


def _row(result: dict) -> str:
    mb = 1 / 2**20
    weights = result["weight_bytes"]
    load_delta = result["peak_after_load"] - result["baseline_rss"]
    touch_delta = result["peak_after_touch"] - result["baseline_rss"]
    return (f"| {result['stage']} | {result['impl']} | {weights * mb:,.0f} | {result['baseline_rss'] * mb:,.0f} | "
            f"{result['peak_after_load'] * mb:,.0f} | {load_delta * mb:,.0f} | {load_delta / weights:.2f} | "
            f"{result['peak_after_touch'] * mb:,.0f} | {touch_delta / weights:.2f} |")


HEADER = ("| stage | loader | weights MiB | RSS after imports MiB | peak RSS after load MiB (raw ru_maxrss) | "
          "peak − imports MiB | ratio to weights | peak after reading every weight MiB | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--old", action="store_true", help="also measure the pre-safetensors loader")
    parser.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "IMPL", "PT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stage, impl, pt_dir = args.child
        if stage == "pt-copies":
            _pt_copies(args.store, args.profile, Path(pt_dir))
            return 0
        print(json.dumps(child(args.store, args.profile, stage, impl, pt_dir)))
        return 0

    from model_store.store import ModelStore

    store = ModelStore(args.store)
    manifest = store.read_manifest(args.profile)
    for role in manifest.files:  # warm the verified cache: the children measure loading, not copying
        store.fetch(manifest, role)
    results = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as pt_dir:
        impls = ["new"]
        if args.old:
            # in a child: this process stays small, and a child's ru_maxrss starts from its parent's
            # high-water mark when it is spawned
            subprocess.run([sys.executable, __file__, "--profile", args.profile, "--store", args.store,
                            "--child", "pt-copies", "old", pt_dir], check=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            impls.insert(0, "old")
        for stage in ROLES:
            for impl in impls:
                out = subprocess.run([sys.executable, __file__, "--profile", args.profile, "--store", args.store,
                                      "--child", stage, impl, pt_dir], check=True, capture_output=True, text=True,
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(result)
                print(_row(result), flush=True)
    table = "\n".join([HEADER, *(_row(r) for r in results)])
    print(table)
    if args.append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        command = "python benchmarks/load_memory.py " + " ".join(a for a in (argv or sys.argv[1:]))
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as handle:
            handle.write(f"\n## load_memory: {args.profile} ({'random' if manifest.provenance.get('random') else 'real'} weights)\n\n"
                         f"{dt.date.today().isoformat()}, {platform.node() or 'host'}: {os.cpu_count()} CPUs "
                         f"(nproc {len(os.sched_getaffinity(0))}), {ram:.0f} GiB RAM, git {commit} (plus uncommitted "
                         f"work), torch {__import__('torch').__version__}\n\n`{command}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
