"""Loss history and progress lines shared by the step-based training loops (CLIP pretraining,
SAM encoder pretraining, SAM training).

Why one class: the history it keeps is what the build records in the manifest's provenance,
so every loop must average and log it the same way.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


class WindowedLoss:
    """Mean loss of every `every` steps (and of the last, shorter window), logged with throughput."""

    def __init__(self, what: str, steps: int, every: int, batch_size: int, log: Callable[[str], None]) -> None:
        self.what, self.steps, self.every, self.batch_size, self.log = what, steps, every, batch_size, log
        self.history: list[float] = []
        self._window: list[float] = []
        self._start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor) -> None:
        """Record the loss of `step` (0-based); at a window's end, keep its mean and log it."""
        self._window.append(float(loss.detach()))
        done = step + 1
        if done % self.every == 0 or done == self.steps:
            self.history.append(float(np.mean(self._window)))
            rate = done * self.batch_size / (time.perf_counter() - self._start)
            self.log(f"{self.what} step {done}/{self.steps} loss {self.history[-1]:.4f} ({rate:.1f} img/s)")
            self._window = []
