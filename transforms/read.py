"""Read work units into decoded `ImageElement`s as a Beam transform; every bad input becomes a `Failure`.

Graph (DESIGN §3, §9): ``Create(units) → Reshuffle → ParDo(ReadUnitFn) → Reshuffle``. The
first Reshuffle spreads units (shards) over workers; the second is a fusion break so that
per-image GPU work downstream is not pinned to the worker that happened to read the shard.
After each unit the reader emits a `UnitRead` receipt; listed units without one become `Lost`
failures (`accounting.LostUnits`).
What one unit yields (ids, tar sample rules, error types) is `inputs.reader.read_unit`'s contract.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection

from inputs.decode import DEFAULT_MIN_SIDE, DEFAULT_PIXEL_LIMIT
from inputs.elements import Failure, ImageElement
from inputs.layouts import InputUnit, scan_inputs
from inputs.reader import DecodeLimits, read_unit

from .accounting import LostUnits, UnitRead, unit_key
from .progress import ProgressLog
from .routing import split_failures

logger = logging.getLogger(__name__)

IMAGES = "images"
FAILURES = "failures"
PRODUCED = "produced"  # every ImageElement and Failure the reader made, for `accounting.LostRows`


class ReadUnitFn(beam.DoFn):
    """Read one unit; outputs ImageElements and Failures (see `routing.split_failures`)."""

    def __init__(self, limits: DecodeLimits):
        self._limits = limits
        self._progress = ProgressLog("read")

    def process(self, unit: InputUnit) -> Iterator[Union[ImageElement, Failure, UnitRead]]:
        outputs = 0
        for output in read_unit(unit, self._limits):
            if isinstance(output, Failure):
                logger.warning("read failure %s: %s", output.error_type, output.message)
                self._progress.failed()
            else:
                self._progress.done()
            outputs += 1
            yield output
        yield UnitRead(unit_key(unit), outputs)


class ReadImages(beam.PTransform):
    """PBegin → {IMAGES: PCollection[ImageElement], FAILURES: PCollection[Failure]}.

    Units come from `inputs.layouts.list_inputs` (or use `from_url`), listed before the
    pipeline is built so that a bad input URL fails before any work starts.
    """

    def __init__(
        self,
        units: Sequence[InputUnit],
        pixel_limit: int = DEFAULT_PIXEL_LIMIT,
        min_side: int = DEFAULT_MIN_SIDE,
    ):
        super().__init__()
        if not units:
            raise ValueError("ReadImages needs at least one input unit")
        self._units = list(units)
        self._limits = DecodeLimits(pixel_limit, min_side)

    @classmethod
    def from_url(
        cls,
        url: str,
        layout: str = "auto",
        category: Optional[str] = None,
        split: Optional[str] = "test",
        pixel_limit: int = DEFAULT_PIXEL_LIMIT,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> "ReadImages":
        """List `url` now (see `inputs.layouts.scan_inputs`) and read what it holds."""
        listing = scan_inputs(url, layout=layout, category=category, split=split)
        logger.info("input %s: %d units, skipped on purpose: %s", url, len(listing.units), listing.skipped or "none")
        return cls(listing.units, pixel_limit=pixel_limit, min_side=min_side)

    def expand(self, pbegin: PBegin) -> dict[str, PCollection]:
        units = pbegin | "ListedUnits" >> beam.Create(self._units)
        outputs = units | "SpreadUnits" >> beam.Reshuffle() | "ReadUnits" >> beam.ParDo(ReadUnitFn(self._limits))
        receipts = outputs | "Receipts" >> beam.Filter(lambda o: isinstance(o, UnitRead))
        produced = outputs | "Produced" >> beam.Filter(lambda o: not isinstance(o, UnitRead))
        images, failures = split_failures(produced, "Read")
        lost = (units, receipts) | "UnreadUnits" >> LostUnits()
        return {IMAGES: images | "SpreadImages" >> beam.Reshuffle(),
                FAILURES: (failures, lost) | "ReadOrLost" >> beam.Flatten(),
                PRODUCED: produced}
