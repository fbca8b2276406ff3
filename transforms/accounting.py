"""Every listed input ends in a row, checked inside the pipeline (DESIGN §3, "nothing vanishes").

Two joins turn anything a runner lost into a `Lost` failure row, so the guarantee does not rest
on the runner (Beam's DaskRunner has dropped elements before) nor on the launcher reading every
row back:
1. listed units ⋈ units read (`UnitRead`, emitted by the reader after a unit's outputs): a unit
   that was never read gives one Lost row for its URI (`LostUnits`);
2. everything the reader produced (images and read failures, by image id) ⋈ the final rows
   (records, failure rows and images skipped as already scored, by image id): each produced
   image id with fewer final rows than reads gives a Lost row per missing one (`LostRows`).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import apache_beam as beam

from inputs.elements import Failure

LOST = "Lost"
STAGE_ACCOUNT = "account"


class UnitRead(NamedTuple):
    """The reader's receipt for one unit: it was read and gave `outputs` elements or failures."""

    key: str
    outputs: int


def unit_key(unit: Any) -> str:
    """Key of a listed `InputUnit` (a repeated listing is its own unit)."""
    return f"{unit.repeat}:{unit.uri}"


def _lost_units(keyed: tuple[str, dict[str, list]]) -> Iterator[Failure]:
    _, joined = keyed
    if joined["read"]:
        return
    for unit in joined["listed"]:
        yield Failure(unit.uri, unit.image_id, STAGE_ACCOUNT, LOST,
                      f"{unit.uri}: listed but never read (the runner dropped this input)")


class LostUnits(beam.PTransform):
    """(listed units, UnitReads) → Lost Failures for listed units that were never read."""

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        units, reads = inputs
        return (
            {"listed": units | "KeyUnits" >> beam.Map(lambda u: (unit_key(u), u)),
             "read": reads | "KeyReads" >> beam.Map(lambda r: (r.key, r.outputs))}
            | "JoinUnits" >> beam.CoGroupByKey()
            | "LostUnits" >> beam.FlatMap(_lost_units)
        )


def _lost_rows(keyed: tuple[str, dict[str, list]], run_id: str) -> Iterator[dict]:
    image_id, joined = keyed
    missing = len(joined["read"]) - len(joined["rows"])
    for source_uri in sorted(joined["read"])[:max(0, missing)]:
        yield Failure(source_uri, image_id, STAGE_ACCOUNT, LOST,
                      f"{source_uri}: read, but neither a record nor a failure row came out (the runner lost it)"
                      ).to_row(run_id)


class LostRows(beam.PTransform):
    """(produced, records, failure rows, skipped) → Lost failure rows. `produced`: the reader's
    ImageElements and Failures; records, failure rows and skipped images (`--skip_scored`) are
    dicts with an `image_id`."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def expand(self, inputs: tuple[beam.PCollection, ...]) -> beam.PCollection:
        produced, *accounted = inputs
        rows: Iterable = tuple(accounted) | "AllRows" >> beam.Flatten()
        return (
            {"read": produced | "KeyProduced" >> beam.Map(lambda e: (e.image_id, e.source_uri)),
             "rows": rows | "KeyRows" >> beam.Map(lambda r: (r["image_id"], 1))}
            | "JoinRows" >> beam.CoGroupByKey()
            | "LostRows" >> beam.FlatMap(_lost_rows, self.run_id)
        )
