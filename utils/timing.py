"""The one timing helper: wall-clock samples of named stages, summarised in milliseconds.

Used by ``predict.py --benchmark``, the comparison table's latency column and every script in
``benchmarks/``::

    timer = StageTimer(sync=lambda: torch.cuda.synchronize())
    for i in range(warmup + runs):
        with timer.stage("forward", record=i >= warmup):
            model(batch)
    timer.summary()["forward"].median  # ms
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from utils.errors import InputError


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, in milliseconds."""

    median: float
    p10: float
    p90: float
    mean: float
    runs: int

    @classmethod
    def of(cls, samples_ms: list[float] | np.ndarray) -> Stats:
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise InputError("no timing samples to summarise")
        return cls(
            median=float(np.median(values)),
            p10=float(np.percentile(values, 10)),
            p90=float(np.percentile(values, 90)),
            mean=float(values.mean()),
            runs=int(values.size),
        )

    def as_dict(self) -> dict[str, float]:
        """``{"median", "p10", "p90"}`` in ms, the layout of the benchmarks' JSON output."""
        return {"median": self.median, "p10": self.p10, "p90": self.p90}


class StageTimer:
    """Collects wall-clock samples per named stage.

    Args:
        sync: called before each clock reading (e.g. ``torch.cuda.synchronize``), so that
            asynchronous device work is charged to the stage that queued it.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.samples: dict[str, list[float]] = {}

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str, record: bool = True) -> Iterator[None]:
        """Times the ``with`` body as one sample of ``name`` (dropped unless ``record``)."""
        start = self._now()
        yield
        elapsed_ms = (self._now() - start) * 1000
        if record:
            self.samples.setdefault(name, []).append(elapsed_ms)

    def add(self, name: str, elapsed_ms: float) -> None:
        """Records a sample measured elsewhere (e.g. the sum of other stages)."""
        self.samples.setdefault(name, []).append(elapsed_ms)

    def count(self, name: str) -> int:
        return len(self.samples.get(name, []))

    def add_total(self, name: str, stages: Iterable[str]) -> None:
        """Records ``name`` as the sum of the latest samples of ``stages``: a total that is its
        stages back to back, without the timer's own overhead between them."""
        self.add(name, sum(self.samples[stage][-1] for stage in stages))

    def summary(self) -> dict[str, Stats]:
        return {name: Stats.of(values) for name, values in self.samples.items()}


def time_call(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    """Seconds one call of ``fn(*args)`` takes, and what it returned."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result
