"""`python -m pipeline.threshold`: pick `--mask_threshold` from normal images only.

    ./run_pipeline.sh --input=gs://line/known-good/ --output=gs://qa/calib --model_store=... --store_maps
    python -m pipeline.threshold --records=gs://qa/calib/RUN --quantile=0.999

Lines rarely have defect masks, but they have plenty of known-good parts. Scoring those and
taking a high quantile of their pixel scores gives the threshold at which about (1 − q) of a
normal image's pixels would be flagged. One threshold per category, from a histogram per
category (bounded memory); uses the maps stored with `--store_maps`.
"""
from __future__ import annotations

import argparse
import json
import sys

from clipsam.metrics import DEFAULT_BINS
from clipsam.thresholds import NormalScoreQuantile

from .evaluate import score_map, stored_records
from .options import OptionError


def normal_thresholds(records_url: str, quantile: float, bins: int = DEFAULT_BINS) -> dict[str, dict[str, float]]:
    """Per category: the `quantile` of all stored-map pixel scores, and how many pixels it saw."""
    histograms: dict[str, NormalScoreQuantile] = {}
    for record in stored_records(records_url):
        if record["anomaly_map_png"] is None:
            raise OptionError(f"--records: {record['source_uri']} has no stored map; run the pipeline with --store_maps")
        histograms.setdefault(record["category"], NormalScoreQuantile(bins)).add(score_map(record))
    return {
        category: {"mask_threshold": hist.threshold(quantile), "pixels": hist.n_pixels}
        for category, hist in sorted(histograms.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.threshold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True, help="a run folder of normal images scored with --store_maps")
    parser.add_argument("--quantile", type=float, default=0.999, help="quantile of normal pixel scores (default 0.999)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="histogram bins (default 2^16)")
    args = parser.parse_args(argv)
    if not 0.0 < args.quantile < 1.0:
        print(f"error: --quantile must be in (0, 1), got {args.quantile}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(normal_thresholds(args.records, args.quantile, args.bins), indent=2))
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
