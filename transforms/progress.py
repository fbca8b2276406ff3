"""Progress a person can follow during a long run: Beam counters plus periodic log lines.

Each worker process logs its own running totals per stage (images read / scored / refined /
failed) at most every `interval` seconds, and Beam aggregates the counters for the final
summary and the runner's UI (Dataflow shows them as custom counters).
"""
from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam

LOG = logging.getLogger("clipsam.progress")
NAMESPACE = "clipsam"


class ProgressLog:
    """Counts done/failed elements of one stage; picklable (state is created lazily per process)."""

    def __init__(self, stage: str, interval: float = 10.0) -> None:
        self.stage = stage
        self.interval = interval
        self._done = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}_ok")
        self._failed = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}_failed")
        self._state: dict | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_state": None}

    def _tick(self, key: str) -> None:
        if self._state is None:
            self._state = {"ok": 0, "failed": 0, "last": time.monotonic(), "lock": threading.Lock()}
        state = self._state
        with state["lock"]:
            state[key] += 1
            now = time.monotonic()
            if now - state["last"] >= self.interval:
                state["last"] = now
                LOG.info("%s: %d ok, %d failed so far in this worker", self.stage, state["ok"], state["failed"])

    def done(self) -> None:
        self._done.inc()
        self._tick("ok")

    def failed(self) -> None:
        self._failed.inc()
        self._tick("failed")
