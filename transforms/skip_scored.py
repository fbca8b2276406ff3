"""`--skip_scored`: leave out the images a results table already holds, inside the pipeline.

The keys (content sha256 of every image the table scored with the same model and thresholds
digests) are read by one worker from the table (`keys_reader`, given by the launcher so this
layer does not depend on the table's storage code) into a PCollection, and reach the filter as a
side input; each image whose `content_sha256` is among them leaves the graph as a `SkippedScored`
row instead of being scored. Skipped images are counted in the report and accounted for like
rows (`accounting.LostRows`), never lost.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, NamedTuple

import apache_beam as beam

from .routing import not_of_type, of_type

SKIPPED_SCORED = "already scored"


class SkippedScored(NamedTuple):
    """An image left out because the table already holds it."""

    image_id: str
    source_uri: str
    category: str
    content_sha256: str


class _Filter(beam.DoFn):
    def __init__(self) -> None:
        self._keys: frozenset = frozenset()
        self._source: Any = None

    def process(self, element: Any, keys: list) -> Iterator[Any]:
        if keys is not self._source:  # the side input, made a set once per worker and side-input value
            self._keys, self._source = frozenset(keys), keys
        if element.content_sha256 in self._keys:
            yield SkippedScored(element.image_id, element.source_uri, element.category, element.content_sha256)
        else:
            yield element


def _all_keys(_: Any, read: Callable[[], Iterable[Any]]) -> Iterator[str]:
    for batch in read():
        yield from (batch.to_pylist() if hasattr(batch, "to_pylist") else batch)


class SkipScored(beam.PTransform):
    """ImageElements → ImageElements and SkippedScored rows (split them with `split_skipped`).

    keys_reader: a picklable callable returning an iterable of string sequences (arrays) of the
    content hashes to skip; it runs once, on a worker."""

    def __init__(self, keys_reader: Callable[[], Iterable[Iterable[str]]]) -> None:
        super().__init__()
        self.keys_reader = keys_reader

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        keys = (
            images.pipeline
            | "Table" >> beam.Create([None])
            | "ScoredKeys" >> beam.FlatMap(_all_keys, self.keys_reader)
        )
        return images | "DropScored" >> beam.ParDo(_Filter(), keys=beam.pvalue.AsList(keys))


def split_skipped(values: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
    """`SkipScored`'s output → (images to score, SkippedScored rows)."""
    return not_of_type(values, SkippedScored, "ToScore"), of_type(values, SkippedScored, "Skipped")
