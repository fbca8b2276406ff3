"""`python -m model_store ...`: build, stage, inspect and verify model store profiles."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from .errors import ModelStoreError, one_line
from .profiles import PROFILES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("make-tiny", help="build (train) the small seeded `tiny` profile offline")
    tiny.add_argument("--out", required=True, help="model store root URL (local dir, gs://..., memory://...)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of every random initialisation and of the training data (default 0)")
    tiny.add_argument("--untrained", action="store_true",
                      help="seconds-long build of seeded random weights, for work on the plumbing (no accuracy)")
    tiny.add_argument("--no_cache", action="store_true",
                      help="always build, neither reading nor filling $CLIPSAM_CACHE/tiny-builds")

    sub.add_parser("ship-tiny", help="refresh the tiny store shipped in tiny/shipped/ from this checkout's default build "
                   "(trains it when no cached build matches; run after changing the recipe or training code)")

    rand = sub.add_parser("make-random", help="seeded random weights at a real profile's shapes "
                          "(benchmarks, plumbing tests, smoke tests; scores mean nothing)")
    rand.add_argument("--profile", required=True, choices=sorted(PROFILES))
    rand.add_argument("--out", required=True, help="model store root URL to publish into")
    rand.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    rand.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                      help="precision the weights are stored in (default fp32; fp16 halves the files)")

    _stage_parser(sub)

    show = sub.add_parser("show", help="print a profile's manifest from a store")
    show.add_argument("--store", required=True)
    show.add_argument("--profile", required=True)

    verify = sub.add_parser("verify", help="check a profile, download every file into the local cache and load it")
    verify.add_argument("--store", required=True)
    verify.add_argument("--profile", required=True)

    sub.add_parser("profiles", help="list the known profiles")
    return parser


def _stage_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `stage` subcommand; its epilog lists each real profile's official files."""
    from .stage import official_file

    lines = ["official files (used when the flag is not given; fetch them elsewhere on an offline machine):"]
    for name, profile in sorted(PROFILES.items()):
        for role in ("clip", "sam"):
            official = official_file(profile, role)
            if official:
                checked = f"sha256 {official.sha256}" if official.sha256 else "sha256 recorded at stage"
                lines.append(f"  {name} --{role}_checkpoint: {official.name} ({checked})\n    {official.url}")
    stage = sub.add_parser(
        "stage", help="convert a profile's official CLIP / SAM files (or your copies) into a store",
        description=textwrap.fill("Download or read the CLIP and SAM (and optionally UMCI) weights of a profile, check that "
                    "they fit it, convert them to .safetensors and publish them with their provenance. "
                    "SRC is an http(s) URL, any fsspec URL (gs://, s3://, file://, ...) or a local path "
                    "(relative to the current directory). Accepted: OpenAI CLIP .pt (TorchScript), "
                    "OpenAI-named state dicts, open_clip open_clip_pytorch_model.bin / open_clip_model.safetensors, "
                    "SAM sam_vit_*.pth / .safetensors; the format is read from the file's content.", 100),
        epilog="\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    stage.add_argument("--profile", required=True, choices=sorted(PROFILES), help="profile to stage (required)")
    stage.add_argument("--to", required=True, metavar="STORE", help="model store root URL to publish into (required)")
    stage.add_argument("--clip_checkpoint", metavar="SRC",
                       help="CLIP weights in any accepted format (default: the profile's official OpenAI .pt, "
                            "downloaded; none for tiny)")
    stage.add_argument("--clip_sha256", metavar="HEX",
                       help="sha256 the CLIP file must have; needed to accept a TorchScript .pt that is not "
                            "OpenAI's published file (default: none; OpenAI's .pt is checked against its pinned sha256)")
    stage.add_argument("--sam_checkpoint", metavar="SRC",
                       help="SAM weights, .pth or .safetensors (default: the profile's official sam_vit_*.pth, "
                            "downloaded; none for tiny)")
    stage.add_argument("--sam_sha256", metavar="HEX",
                       help="sha256 the SAM file must have (default: none; the file is checked by loading it "
                            "strictly and its sha256 recorded)")
    stage.add_argument("--umci_checkpoint", metavar="SRC",
                       help="trained UMCI weights, .safetensors or a torch.save state dict (default: keep the "
                            "UMCI the store already has for the profile, if any)")
    stage.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="network timeout of each download read (default: 60)")
    stage.add_argument("--tmp_dir", metavar="DIR",
                       help="folder for downloads and converted files before publishing (default: $TMPDIR)")
    return stage


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "make-tiny":
            from tiny.build import make_tiny

            manifest = make_tiny(args.out, seed=args.seed, trained=not args.untrained, use_cache=not args.no_cache)
            print(f"tiny profile written to {args.out.rstrip('/')}/tiny ({sum(f.size for f in manifest.files.values()) / 1e6:.1f} MB)")
        elif args.command == "ship-tiny":
            from tiny.build import SHIPPED, ship

            print(f"shipped tiny store refreshed at {SHIPPED} (build key {ship()}); commit that folder")
        elif args.command == "make-random":
            from .random_store import make_random

            manifest = make_random(args.out, args.profile, seed=args.seed, dtype=args.dtype)
            print(f"RANDOM weights for {args.profile} written to {args.out.rstrip('/')}/{args.profile} "
                  f"({sum(f.size for f in manifest.files.values()) / 1e6:.1f} MB); scores from them mean nothing")
        elif args.command == "stage":
            from .stage import stage

            manifest = stage(args.profile, args.to, clip_checkpoint=args.clip_checkpoint, clip_sha256=args.clip_sha256,
                             sam_checkpoint=args.sam_checkpoint, sam_sha256=args.sam_sha256,
                             umci_checkpoint=args.umci_checkpoint, timeout=args.timeout, tmp_dir=args.tmp_dir)
            print(f"staged {args.profile} into {args.to}: {', '.join(sorted(manifest.files))}")
        elif args.command == "show":
            from .store import ModelStore

            print(ModelStore(args.store).read_manifest(args.profile).to_json())
        elif args.command == "verify":
            from .loading import load_clipsam
            from .preflight import check_profile

            check_profile(args.store, args.profile)
            _, manifest = load_clipsam(args.store, args.profile, device="cpu")
            print(json.dumps({"profile": args.profile, "store": args.store, "digests": manifest.digests()}, indent=2))
        else:
            for name, profile in sorted(PROFILES.items()):
                print(f"{name:22s} {profile.description}")
    except ModelStoreError as exc:
        print(f"error: {one_line(exc, 2000)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
