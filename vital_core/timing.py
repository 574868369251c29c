"""Per-stage wall-clock timing of the forward pass (preprocess, vision, prefill, latent, decode)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Collects durations per stage; each `with timer("stage"):` appends one measurement.

    On CUDA it synchronises before reading the clock, so a stage's time is its kernels' time,
    not the launch time.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.cuda = torch.device(device).type == "cuda" if device is not None else False
        self.stages: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.stages[stage].append(time.perf_counter() - t0)

    def total(self, stage: str) -> float:
        """Sum of a stage's durations in seconds (0 if never timed)."""
        return float(sum(self.stages.get(stage, ())))

    def totals_ms(self) -> dict[str, float]:
        """Each stage's summed duration in milliseconds."""
        return {k: 1000.0 * sum(v) for k, v in self.stages.items()}


@contextmanager
def _null(stage: str) -> Iterator[None]:
    yield


def null_timer(stage: str):  # a context manager factory like StageTimer.__call__
    """A timer that records nothing."""
    return _null(stage)
