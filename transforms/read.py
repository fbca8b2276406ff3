"""Read work units into decoded `ImageElement`s as a Beam transform; every bad input becomes a `Failure`.

Graph (DESIGN §3, §9): ``Create(inputs) → Reshuffle → list each input (`list_input`) → one unit
per file → Reshuffle → ParDo(ReadUnitFn) → Reshuffle``, or ``Create(units) → ...`` for units
listed already. The Reshuffle before reading spreads units (shards) over workers; the one after
it is a fusion break so that per-image GPU work downstream is not pinned to the worker that
happened to read the shard.
After each unit the reader emits a `UnitRead` receipt; listed units without one become `Lost`
failures (`accounting.LostUnits`).
What one unit yields (ids, tar sample rules, error types) is `inputs.reader.read_unit`'s contract.
"""
from __future__ import annotations

import logging
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection

from inputs.decode import DEFAULT_MIN_SIDE, DEFAULT_PIXEL_LIMIT
from inputs.elements import Failure, ImageElement, make_image_id
from inputs.layouts import InputSpec, InputUnit, scan_inputs
from inputs.decode import JpegDraft
from inputs.reader import DecodeLimits, read_unit

from .accounting import LostUnits, UnitRead, unit_key
from .progress import ProgressLog
from .routing import not_of_type, of_type, split_failures

logger = logging.getLogger(__name__)

IMAGES = "images"
FAILURES = "failures"
PRODUCED = "produced"  # every ImageElement and Failure the reader made, for `accounting.LostRows`
NOTES = "notes"  # one ListingNote per input listed in the pipeline
STAGE_LIST = "list"
UNUSABLE_INPUT = "UnusableInput"


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


class ListingNote(NamedTuple):
    """What listing one input gave, for the report: its URL, units, files left out on purpose."""

    url: str
    units: int
    skipped: dict


def list_input(spec: InputSpec) -> Iterator[Union[InputUnit, ListingNote, Failure]]:
    """The units of one input (`InputSpec.scan`, on a worker) and its ListingNote; an input that
    cannot be listed (a malformed VisA CSV, a vanished folder) is one `UnusableInput` failure."""
    try:
        listing = spec.scan()
    except (ValueError, OSError) as exc:
        logger.warning("cannot list %s: %s", spec.url, exc)
        yield Failure(spec.url, make_image_id(spec.url), STAGE_LIST, UNUSABLE_INPUT, str(exc))
        yield ListingNote(spec.url, 0, {})
        return
    logger.info("input %s: %d units, skipped on purpose: %s", spec.url, len(listing.units), listing.skipped or "none")
    yield from listing.units
    yield ListingNote(spec.url, len(listing.units), dict(listing.skipped))


class ReadImages(beam.PTransform):
    """PBegin → {IMAGES: ImageElements, FAILURES: Failures, PRODUCED: what the reader made,
    NOTES: ListingNotes}.

    `source`: the `InputSpec`s of the inputs, listed inside the pipeline (one worker per input;
    a file listed by two inputs is read once), so neither the launcher nor the job graph holds
    the night's file list; or `InputUnit`s listed already (tests, small jobs).
    `spread_images`: the Reshuffle after decoding (module docstring); without it decoded images
    stay with the worker that read their unit, which is right only for a runner that has one
    worker process anyway (there the Reshuffle only holds every decoded image in memory).
    """

    def __init__(
        self,
        source: Sequence[Union[InputSpec, InputUnit]],
        pixel_limit: int = DEFAULT_PIXEL_LIMIT,
        min_side: int = DEFAULT_MIN_SIDE,
        spread_images: bool = True,
        jpeg_draft: Optional[JpegDraft] = None,
    ):
        super().__init__()
        if not source:
            raise ValueError("ReadImages needs at least one input")
        self._source = list(source)
        self._limits = DecodeLimits(pixel_limit, min_side, jpeg_draft)
        self._spread = spread_images

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

    def _units(self, pbegin: PBegin) -> tuple[PCollection, PCollection, PCollection]:
        """(units, ListingNotes, listing Failures)."""
        if all(isinstance(item, InputUnit) for item in self._source):
            units = pbegin | "ListedUnits" >> beam.Create(self._source)
            return units, pbegin | "NoNotes" >> beam.Create([]), pbegin | "NoListingFailures" >> beam.Create([])
        listed = (pbegin
                  | "Inputs" >> beam.Create(self._source)
                  | "SpreadInputs" >> beam.Reshuffle()
                  | "ListInputs" >> beam.FlatMap(list_input))
        units = (listed
                 | "Units" >> beam.Filter(isinstance, InputUnit)
                 | "KeyUnits" >> beam.Map(lambda u: (unit_key(u), u))
                 | "OncePerFile" >> beam.CombinePerKey(min)
                 | "Unkey" >> beam.Values())
        return (units, of_type(listed, ListingNote, "Notes"), of_type(listed, Failure, "ListingFailures"))

    def expand(self, pbegin: PBegin) -> dict[str, PCollection]:
        units, notes, unlisted = self._units(pbegin)
        outputs = units | "SpreadUnits" >> beam.Reshuffle() | "ReadUnits" >> beam.ParDo(ReadUnitFn(self._limits))
        receipts = of_type(outputs, UnitRead, "Receipts")
        produced = not_of_type(outputs, UnitRead, "Produced")
        images, failures = split_failures(produced, "Read")
        lost = (units, receipts) | "UnreadUnits" >> LostUnits()
        return {IMAGES: images | "SpreadImages" >> beam.Reshuffle() if self._spread else images,
                FAILURES: (failures, lost, unlisted) | "ReadOrLost" >> beam.Flatten(),
                PRODUCED: produced,
                NOTES: notes}
