"""`python -m pipeline.threshold`: a thresholds file from normal images only (README "OK/NG").

    ./run_pipeline.sh --input=gs://line/known-good/ --output=gs://qa/calib --model_store=... --store_maps
    python -m pipeline.threshold --records=gs://qa/calib/RUN --out=gs://qa/thresholds/line1.json --quantile=0.999
    ./run_pipeline.sh --input=gs://line/tonight/ --thresholds=gs://qa/thresholds/line1.json ...

Lines rarely have defect masks, but they have plenty of known-good parts. Per category, from
the normal images of a calibration run (gt_label == 0; with --all_normal every image):
the pixel threshold is the q-quantile of their stored-map pixel scores (a histogram per
category, bounded memory; needs --store_maps), at which about (1 − q) of a normal image's
pixels would be flagged; the image threshold is the q-quantile of their image scores, at which
about (1 − q) of normal images would be NG. A category with fewer than --min_normal normal
images keeps the profile default (policy "profile_default", with the reason). Without --out
the file's JSON is printed.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import sys

import fsspec

from clipsam.metrics import DEFAULT_BINS
from clipsam.thresholds import (POLICY_NORMAL_QUANTILE, POLICY_PROFILE_DEFAULT, CategoryThresholds, NormalScoreQuantile,
                                 Thresholds, ThresholdsError, image_quantile_threshold)


from .options import OptionError
from .stored_records import score_map, stored_records


CALIBRATION_COLUMNS = ["source_uri", "category", "width", "height", "image_score", "anomaly_map_png", "gt_label",
                       "model_profile", "model_digests"]


def calibrate(records_url: str, quantile: float = 0.999, min_normal: int = 10, all_normal: bool = False,
              bins: int = DEFAULT_BINS, warn=None) -> Thresholds:
    """A thresholds file from the normal images of the run at `records_url` (see the module doc).

    Normal: gt_label == 0, or every record with `all_normal`. Raises OptionError (naming
    --records) when there is no normal image, a normal image has no stored map, or the rows come
    from different models. `warn(message)` is called for each category that falls back to the
    profile default (default: print to stderr).
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    histograms: dict[str, NormalScoreQuantile] = {}
    image_scores: dict[str, list[float]] = collections.defaultdict(list)
    left_out: collections.Counter = collections.Counter()
    model: tuple[str, dict[str, str]] | None = None
    for record in stored_records(records_url, CALIBRATION_COLUMNS):
        this_model = (record["model_profile"], dict(record["model_digests"]))
        if model is None:
            model = this_model
        elif this_model != model:
            raise OptionError(f"--records: {records_url} mixes records of different models "
                              f"({model[0]} {_fmt_digests(model[1])} and {this_model[0]} {_fmt_digests(this_model[1])})")
        if not all_normal and record["gt_label"] != 0:
            left_out["unlabelled" if record["gt_label"] is None else "anomalous"] += 1
            continue
        if record["anomaly_map_png"] is None:
            raise OptionError(f"--records: {record['source_uri']} has no stored map, and the pixel threshold needs "
                              "the normal images' maps; run the pipeline with --store_maps")
        histograms.setdefault(record["category"], NormalScoreQuantile(bins)).add(score_map(record))
        image_scores[record["category"]].append(record["image_score"])
    if not image_scores:
        hint = (f"; {left_out['unlabelled']} images have no label: if they are all good parts, pass --all_normal"
                if left_out["unlabelled"] else "")
        raise OptionError(f"--records: no normal image (gt_label == 0) in {records_url}{hint}")
    categories = {}
    for category, scores in sorted(image_scores.items()):
        hist = histograms[category]
        if len(scores) < min_normal:
            reason = f"{len(scores)} normal images, fewer than --min_normal={min_normal}"
            warn(f"category {category!r}: {reason}; its thresholds fall back to the profile default")
            categories[category] = CategoryThresholds(None, None, POLICY_PROFILE_DEFAULT, None, len(scores),
                                                      hist.n_pixels, reason)
        else:
            categories[category] = CategoryThresholds(hist.threshold(quantile), image_quantile_threshold(scores, quantile),
                                                      POLICY_NORMAL_QUANTILE, quantile, len(scores), hist.n_pixels, None)
    assert model is not None
    return Thresholds(profile=model[0], model_digests=model[1],
                      created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      source=records_url, categories=categories)


def _fmt_digests(digests: dict[str, str]) -> str:
    return "{" + ", ".join(f"{role}={sha}" for role, sha in sorted(digests.items())) + "}"


def write_thresholds(url: str, thresholds: Thresholds) -> None:
    """Write the file's JSON text to `url` (any fsspec URL)."""
    with fsspec.open(url, "w", encoding="utf-8") as handle:
        handle.write(thresholds.dumps())


def read_thresholds(url: str, flag: str = "--thresholds") -> Thresholds:
    """Read and validate a thresholds file; OptionError naming `flag` when it cannot be read or is invalid."""
    try:
        with fsspec.open(url, "rb") as handle:
            text = handle.read()
    except Exception as exc:  # fsspec back ends raise many types
        raise OptionError(f"{flag}: cannot read {url}: {type(exc).__name__}: {exc}") from None
    try:
        return Thresholds.loads(text)
    except ThresholdsError as exc:
        raise OptionError(f"{flag}: {url} is not a valid thresholds file: {exc}") from None


def check_thresholds_model(thresholds: Thresholds, url: str, profile: str, digests: dict[str, str],
                           allow_mismatch: bool) -> bool:
    """True when the file was calibrated for these model digests. Otherwise OptionError naming
    --thresholds and both digests, unless `allow_mismatch` (then False)."""
    if dict(thresholds.model_digests) == dict(digests):
        return True
    if allow_mismatch:
        return False
    raise OptionError(
        f"--thresholds: {url} was calibrated for profile {thresholds.profile} with model digests "
        f"{_fmt_digests(thresholds.model_digests)}, but this run uses profile {profile} with model digests "
        f"{_fmt_digests(digests)}; recalibrate (python -m pipeline.threshold) or pass --allow_threshold_mismatch")


def summary_text(thresholds: Thresholds) -> str:
    """One line per category: thresholds and how they were chosen."""
    lines = []
    for name, entry in sorted(thresholds.categories.items()):
        if entry.policy == POLICY_NORMAL_QUANTILE:
            lines.append(f"{name}: pixel {entry.pixel_threshold:.6g}, image {entry.image_threshold:.6g} "
                         f"(q={entry.quantile} of {entry.normal_images} normal images)")
        else:
            lines.append(f"{name}: profile default ({entry.reason})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.threshold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True, help="a run folder of normal images scored with --store_maps")
    parser.add_argument("--out", default=None, help="thresholds file URL to write (default: print the JSON)")
    parser.add_argument("--quantile", type=float, default=0.999, help="quantile q of normal scores (default 0.999)")
    parser.add_argument("--min_normal", type=int, default=10,
                        help="fewer normal images in a category → profile default (default 10)")
    parser.add_argument("--all_normal", action="store_true", default=False,
                        help="declare every image of the run normal (an unlabelled folder of good parts)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="histogram bins (default 2^16)")
    args = parser.parse_args(argv)
    if not 0.0 < args.quantile < 1.0:
        print(f"error: --quantile must be in (0, 1), got {args.quantile}", file=sys.stderr)
        return 2
    if args.min_normal < 1:
        print(f"error: --min_normal must be at least 1, got {args.min_normal}", file=sys.stderr)
        return 2
    try:
        thresholds = calibrate(args.records, args.quantile, args.min_normal, args.all_normal, args.bins)
        if args.out is None:
            print(thresholds.dumps(), end="")
            return 0
        try:
            write_thresholds(args.out, thresholds)
        except Exception as exc:  # fsspec back ends raise many types
            raise OptionError(f"--out: cannot write {args.out}: {type(exc).__name__}: {exc}") from None
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (sha256 {thresholds.digest()})\n{summary_text(thresholds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
