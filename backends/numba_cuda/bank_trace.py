"""Every shared-memory access a generated kernel makes, traced in Numba's CUDA simulator and
counted per warp by `lowbitc.layout.banks` (the acceptance check of issue 13: bank-conflict
freedom evaluated on the addresses the generated code computes, not assumed).

`trace_shared(run)` runs `run()` (which launches generated kernels under
NUMBA_ENABLE_CUDASIM=1) with the simulator's shared arrays replaced by recording arrays and the
shared-memory twins (`ldmatrix`, `cp.async`) wrapped; each access is recorded per simulated
thread as (source line of the generated kernel, kind, byte address, width). `warp_accesses`
groups them into warp-wide accesses: the n-th execution of a line by each lane of a warp is
one instruction (the generated code keeps a warp's lanes on the same path: loops stride by the
block size, so lanes leave a loop only at its end); `conflicts` reports those that take more
wavefronts than the ideal.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from lowbitc.errors import BackendError
from lowbitc.layout.banks import WARP, BankReport, ldmatrix_access, warp_access

_LOCAL = threading.local()
GENERATED = "cuda_src"  # the directory generated kernel sources are loaded from (toolchain)


@dataclass(frozen=True)
class Access:
    """One warp-wide shared access: where in the generated source, what, and its cost."""

    line: int
    text: str
    kind: str  # "load", "store", "ldmatrix.x{n}", "cp.async"
    width: int
    lanes: tuple[int | None, ...]  # byte addresses, None for lanes that did not take part
    report: BankReport


def _site() -> tuple[str, int] | None:
    """(file, line) of the innermost generated-kernel frame on the stack."""
    f = sys._getframe(2)
    while f is not None:
        if GENERATED in f.f_code.co_filename:
            return f.f_code.co_filename, f.f_lineno
        f = f.f_back
    return None


def _thread() -> tuple[tuple, int] | None:
    t = threading.current_thread()
    if getattr(t, "_manager", None) is None:
        return None
    return tuple(t.blockIdx), int(t.thread_id)


class _Recorder:
    def __init__(self) -> None:
        self.events: dict[tuple, list] = defaultdict(list)  # (block, tid) -> events
        self.lock = threading.Lock()

    def record(self, kind: str, byte: int, width: int) -> None:
        if getattr(_LOCAL, "inside", False):
            return
        who, site = _thread(), _site()
        if who is None or site is None:
            return
        with self.lock:
            self.events[who].append((site, kind, byte, width))


class _Shared(np.ndarray):
    """A simulator shared array that records element reads and writes."""

    recorder: _Recorder | None = None

    def _note(self, kind: str, key) -> None:
        rec = _Shared.recorder
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        size = self.dtype.itemsize
        if rec is None:
            return
        if isinstance(key, (int, np.integer)):
            rec.record(kind, int(key) * size, size)
        elif (isinstance(key, slice) and key.step is None and key.start is not None
              and key.stop is not None and (key.stop - key.start) * size in (4, 8, 16)):
            rec.record(kind, int(key.start) * size, (int(key.stop) - int(key.start)) * size)
            # (a vector access: st_at_f16x8 into a shared tile)

    def __getitem__(self, key):
        self._note("load", key)
        with _inside():  # (numpy's own reads of a slice are not the kernel's)
            return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._note("store", key)
        with _inside():
            super().__setitem__(key, value)


@contextmanager
def _inside() -> Iterator[None]:
    was = getattr(_LOCAL, "inside", False)
    _LOCAL.inside = True
    try:
        yield
    finally:
        _LOCAL.inside = was


@contextmanager
def trace_shared() -> Iterator[_Recorder]:
    """While active, kernels launched in the simulator record their shared accesses."""
    from numba.cuda import config

    if not config.ENABLE_CUDASIM:
        raise BackendError("trace_shared runs only in the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    from numba.cuda import types
    from numba.cuda.np import numpy_support
    from numba.cuda.simulator import kernelapi

    from lowbitc.backends.numba_cuda import warpsim

    rec = _Recorder()
    shared_array = kernelapi.FakeCUDAShared.array
    twins = {"_ldmatrix": warpsim._ldmatrix, "cp_async16_zfill_py": warpsim.cp_async16_zfill_py}

    def array(self, shape, dtype, alignment=None):
        if shape == 0:  # dynamic shared memory: one buffer, as the simulator keeps it
            return shared_array(self, shape, dtype, alignment).view(_Shared)
        # the simulator keys static arrays by their caller's line: keep that key (not ours)
        f = sys._getframe(1)
        key = ("lowbitc-traced", f.f_code.co_filename, f.f_lineno)
        res = self._allocations.get(key)
        if res is None:
            if isinstance(dtype, types.Type):
                dtype = numpy_support.as_dtype(dtype)
            res = self._allocations[key] = np.empty(shape, dtype)
        return res.view(_Shared)

    def ldmatrix(smem, index, num, trans):
        rec.record(f"ldmatrix.x{num}", int(index) * warpsim.host_array(smem).dtype.itemsize, 16)
        with _inside():
            return twins["_ldmatrix"](smem, index, num, trans)

    def cp_async(smem, smem_index, gmem, gmem_index, src_bytes):
        rec.record("cp.async", int(smem_index) * warpsim.host_array(smem).dtype.itemsize, 16)
        with _inside():
            return twins["cp_async16_zfill_py"](smem, smem_index, gmem, gmem_index, src_bytes)

    kernelapi.FakeCUDAShared.array = array
    warpsim._ldmatrix, warpsim.cp_async16_zfill_py = ldmatrix, cp_async
    _Shared.recorder = rec
    try:
        yield rec
    finally:
        kernelapi.FakeCUDAShared.array = shared_array
        warpsim._ldmatrix, warpsim.cp_async16_zfill_py = twins.values()
        _Shared.recorder = None


def warp_accesses(rec: _Recorder) -> list[Access]:
    """The recorded accesses as warp-wide instructions (see the module doc), with their bank
    reports."""
    grouped: dict[tuple, list] = {}
    for (block, tid), events in rec.events.items():
        seen: dict[tuple, int] = defaultdict(int)
        for site, kind, byte, width in events:
            n = seen[site, kind]
            seen[site, kind] += 1
            key = (block, tid // WARP, site, kind, n)
            lanes = grouped.setdefault(key, [None] * WARP + [width])
            lanes[tid % WARP] = byte
    lines: dict[str, list[str]] = {}
    out = []
    for (_, _, (path, line), kind, _), lanes in grouped.items():
        width, addrs = lanes[WARP], lanes[:WARP]
        if kind.startswith("ldmatrix"):
            report = ldmatrix_access(addrs, int(kind[-1]))
        else:
            report = warp_access(addrs, width)
        if path not in lines:
            with open(path) as f:
                lines[path] = f.read().splitlines()
        out.append(Access(line, lines[path][line - 1].strip(), kind, width, tuple(addrs),
                          report))
    return out


def conflicts(run: Callable[[], object]) -> tuple[list[Access], list[Access]]:
    """(every warp-wide shared access of `run()`'s kernels, those with bank conflicts)."""
    with trace_shared() as rec:
        run()
    every = warp_accesses(rec)
    return every, [a for a in every if a.report.conflicts]
