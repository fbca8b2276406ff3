"""Separating failures from good elements without multi-output DoFns.

Stages emit either a good element or a `Failure` on their single output; two cheap filters then
route them; the filters fuse with the producing step, so nothing is materialised twice. Not
tagged outputs (`with_outputs`): Beam's DaskRunner does not keep them apart (docs/decisions.md).
"""
from __future__ import annotations

import apache_beam as beam

from inputs.elements import Failure


def _is_failure(value: object) -> bool:
    return isinstance(value, Failure)


def _is_good(value: object) -> bool:
    return not isinstance(value, Failure)


def split_failures(values: beam.PCollection, label: str) -> tuple[beam.PCollection, beam.PCollection]:
    """(good elements, Failure rows) of a PCollection that mixes both."""
    good = values | f"{label}Ok" >> beam.Filter(_is_good)
    failed = values | f"{label}Failed" >> beam.Filter(_is_failure)
    return good, failed
