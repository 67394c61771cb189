"""Weights that stream from memory, as a model's layers do in decoding: the last-level cache's
size, how many distinct copies of a weight outgrow it, and timing that calls them in turn.

A GEMV timed on one weight over and over reads that weight from cache once it fits (a 4096^2
u4 weight with its scales is 9 MB); numpy's fp32 weight (64 MiB) cannot. Rotating through
copies totalling several times the last-level cache makes every call read from DRAM.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lowbitc.mixture import TableQTensor
from lowbitc.ops import weight_storage
from lowbitc.quant import QTensor

FALLBACK_LLC = 32 << 20  # the hosts this project runs on (EPYC, Xeon): 32 MiB or more
_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def llc_bytes(sysfs: Path = _SYSFS) -> int:
    """The last-level (highest-level data or unified) cache's size, from sysfs; 32 MiB where
    sysfs does not say."""
    best = (0, 0)
    for entry in sysfs.glob("index*"):
        try:
            if (entry / "type").read_text().strip() == "Instruction":
                continue
            best = max(best, (int((entry / "level").read_text()),
                              _size((entry / "size").read_text())))
        except (OSError, ValueError):
            continue
    return best[1] or FALLBACK_LLC


def weight_bytes(qw: QTensor) -> int:
    """Bytes a kernel reads for the weight: its storage, scales, zero points and outliers."""
    zeros = 0 if qw.zeros is None else qw.zeros.nbytes
    sparse = 0 if qw.sparse is None else qw.sparse.nbytes
    if isinstance(qw, TableQTensor):  # packed codes and a byte per group's table index
        return int(qw.packed.nbytes + qw.scales.nbytes + zeros + sparse + qw.index.size)
    return int(weight_storage(qw).nbytes + qw.scales.nbytes + zeros + sparse)


def copies_for(weight_bytes: float, factor: float = 4.0, llc: int | None = None) -> int:
    """Distinct weights of `weight_bytes` each that total at least `factor` x the LLC (>= 2)."""
    llc = llc_bytes() if llc is None else llc
    return max(2, math.ceil(factor * llc / weight_bytes))


def time_in_turn(calls: Sequence[Callable[[], object]], rounds: int) -> float:
    """Median seconds per call over `rounds` passes that call each of `calls` in turn (after
    one untimed pass). With one call this is the usual repeat-one-call timing."""
    for call in calls:
        call()
    times = []
    for _ in range(rounds):
        for call in calls:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return float(np.median(times))
