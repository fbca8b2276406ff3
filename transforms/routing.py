"""Separating the kinds of element a step emits, without multi-output DoFns.

A step that gives several kinds of result (a good element or a `Failure`; an image or a listing
note) emits them all on its single output; cheap type filters then route them; the filters fuse
with the producing step, so nothing is materialised twice. Not tagged outputs (`with_outputs`):
Beam's DaskRunner does not keep them apart (docs/decisions.md).
"""
from __future__ import annotations

import apache_beam as beam

from inputs.elements import Failure


def _is_not(value: object, kind: type) -> bool:
    return not isinstance(value, kind)


def of_type(values: beam.PCollection, kind: type, label: str) -> beam.PCollection:
    """The elements of `values` that are instances of `kind`."""
    return values | label >> beam.Filter(isinstance, kind)


def not_of_type(values: beam.PCollection, kind: type, label: str) -> beam.PCollection:
    """The elements of `values` that are not instances of `kind`."""
    return values | label >> beam.Filter(_is_not, kind)


def split_failures(values: beam.PCollection, label: str) -> tuple[beam.PCollection, beam.PCollection]:
    """(good elements, Failure rows) of a PCollection that mixes both."""
    return not_of_type(values, Failure, f"{label}Ok"), of_type(values, Failure, f"{label}Failed")
