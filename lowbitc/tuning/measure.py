"""Measurers: how long one candidate takes. The CPU default is the median wall time of
several runs after warm-up; a GPU measurer (CUDA events) plugs in through the same protocol."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lowbitc.errors import UserArgumentError


@runtime_checkable
class Measurer(Protocol):
    """Times a ready-to-run candidate (a zero-argument callable), returning seconds per run.

    `repeats` is the fidelity a search strategy asks for (None: the measurer's default).
    Instances are shipped to worker processes, so they must pickle.
    """

    def measure(self, run: Callable[[], object], repeats: int | None = None) -> float: ...


@dataclass(frozen=True)
class WallClock:
    """Median wall time over `repeats` samples after `warmup` calls.

    A sample batches enough calls to last `min_sample_seconds`, so microsecond kernels are
    not swamped by timer overhead.
    """

    warmup: int = 2
    repeats: int = 10
    min_sample_seconds: float = 1e-3

    def __post_init__(self):
        if self.warmup < 0 or self.repeats < 1:
            raise UserArgumentError(
                f"WallClock: expected warmup >= 0 and repeats >= 1, got {self.warmup}, "
                f"{self.repeats}"
            )

    def measure(self, run: Callable[[], object], repeats: int | None = None) -> float:
        for _ in range(self.warmup):
            run()
        t0 = time.perf_counter()
        run()
        once = time.perf_counter() - t0
        number = max(1, math.ceil(self.min_sample_seconds / once)) if once > 0 else 1000
        samples = []
        for _ in range(repeats or self.repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                run()
            samples.append((time.perf_counter() - t0) / number)
        return statistics.median(samples)
