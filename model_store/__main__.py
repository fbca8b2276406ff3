"""`python -m model_store ...`: build, stage, inspect and verify model store profiles."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import ModelStoreError
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

    stage = sub.add_parser("stage", help="download a real profile's weights into a store (needs internet)")
    stage.add_argument("--profile", required=True, choices=sorted(PROFILES))
    stage.add_argument("--to", required=True, help="model store root URL to publish into")
    stage.add_argument("--clip_checkpoint", help="URL of a CLIP state dict to use instead of open_clip's download")
    stage.add_argument("--sam_checkpoint", help="URL of the SAM checkpoint (default: the official one of the profile)")
    stage.add_argument("--sam_sha256", help="expected sha256 of the SAM checkpoint download")
    stage.add_argument("--umci_checkpoint", help="URL of trained UMCI weights (default: keep what the store has)")

    show = sub.add_parser("show", help="print a profile's manifest from a store")
    show.add_argument("--store", required=True)
    show.add_argument("--profile", required=True)

    verify = sub.add_parser("verify", help="download every file of a profile into the local cache and load it")
    verify.add_argument("--store", required=True)
    verify.add_argument("--profile", required=True)

    sub.add_parser("profiles", help="list the known profiles")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "make-tiny":
            from tiny.build import make_tiny

            manifest = make_tiny(args.out, seed=args.seed, trained=not args.untrained, use_cache=not args.no_cache)
            print(f"tiny profile written to {args.out.rstrip('/')}/tiny ({sum(f.size for f in manifest.files.values()) / 1e6:.1f} MB)")
        elif args.command == "stage":
            from .stage import stage

            manifest = stage(args.profile, args.to, clip_checkpoint=args.clip_checkpoint, sam_checkpoint=args.sam_checkpoint,
                             umci_checkpoint=args.umci_checkpoint, sam_sha256=args.sam_sha256)
            print(f"staged {args.profile} into {args.to}: {', '.join(sorted(manifest.files))}")
        elif args.command == "show":
            from .store import ModelStore

            print(ModelStore(args.store).read_manifest(args.profile).to_json())
        elif args.command == "verify":
            from .loading import load_clipsam

            _, manifest = load_clipsam(args.store, args.profile, device="cpu")
            print(json.dumps({"profile": args.profile, "store": args.store, "digests": manifest.digests()}, indent=2))
        else:
            for name, profile in sorted(PROFILES.items()):
                print(f"{name:22s} {profile.description}")
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
