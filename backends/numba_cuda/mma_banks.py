"""Shared-memory layouts of mma accumulator tiles, chosen so every warp access is free of bank
conflicts (evaluated with `lowbitc.layout.banks`, not assumed).

A loop-carried f32 tile that a `dot` on tensor cores accumulates into lives in shared memory
between K tiles (unless it stays in registers, `mma_registers.py`: then the tile its
registers are written to after the loop does); each thread reads and writes its C fragment
registers there one 4-byte value at a time: lane (g, t) = (lane // 4, lane % 4) touches row
g (or g + 8), column 2t (+ 1) of each 16 x 8 tile. With a plain row stride S the 32 lanes
hit banks g S + 2t (mod 32), which no S makes distinct (2t is even: the 8 rows must supply 4
even and 4 odd offsets spaced by 8, which an arithmetic progression g S cannot). A row
padding of 8 words plus the swizzle Swizzle<1, 0, 5> (bit 5 of the element offset flips bit
0) does it, and keeps a warp's row-wise sweep (32 consecutive elements of a row, the generic
elementwise loops) conflict-free too. `accumulator_layout` finds the smallest such (padding,
swizzle) for a tiling by search, checking every register of every warp and the row sweeps;
`accumulator_layouts` lists, per f32 tile shape of a kernel's mma dots, the layout its
shared buffers take (`Renderer.alloc`)."""

from __future__ import annotations

from functools import cache

from lowbitc.backends.numba_cuda.buffers import swizzle_offset
from lowbitc.backends.numba_cuda.mma_dot import Tiling, mma_tiling
from lowbitc.ir.core import Kernel, walk
from lowbitc.layout.banks import WARP, warp_access

SWIZZLES = [(0, 0, 1)] + [(b, m, s) for b in (1, 2, 3) for m in (0, 1, 2) for s in range(1, 9)]


def conflict_free(tiling: Tiling, row: int, sw, elem_bytes: int = 4) -> bool:
    """Every C-fragment register access of every warp, and every row sweep of 32 consecutive
    elements, takes one wavefront with rows `row` elements apart under swizzle `sw`."""
    c = tiling.layouts()[2]
    M, N = c.shape
    if N % WARP:
        return False

    def cost(coords) -> int:
        return warp_access([elem_bytes * swizzle_offset(r * row + k, sw) for r, k in coords],
                           elem_bytes).conflicts

    for w in range(c.num_threads // WARP):
        for v in range(c.num_values):
            if cost([c(w * WARP + lane, v) for lane in range(WARP)]):
                return False
    return all(cost([(r, c0 + lane) for lane in range(WARP)]) == 0
               for r in range(M) for c0 in range(0, N, WARP))


@cache
def accumulator_layout(tiling: Tiling) -> tuple[int, tuple[int, int, int] | None] | None:
    """(row stride, swizzle or None) making the tiling's accumulator accesses conflict-free
    (see `conflict_free`): the module doc's 8 words of padding with Swizzle<1, 0, 5> when it
    holds (checked), else the smallest padding (0..32 elements) with a swizzle that does."""
    N = tiling.N
    known = [(8, (1, 0, 5))]
    for pad, sw in known + [(p, s) for p in range(0, 33) for s in SWIZZLES]:
        s = None if sw == (0, 0, 1) else sw
        if conflict_free(tiling, N + pad, s) and _inside_rows(tiling.M, N, N + pad, s):
            return N + pad, s
    return None


def _inside_rows(M: int, N: int, row: int, sw) -> bool:
    """The swizzle keeps each row's elements inside that row (a permutation of it)."""
    return all(sorted(swizzle_offset(r * row + k, sw) for k in range(N))
               == list(range(r * row, r * row + N)) for r in range(M))


def accumulator_layouts(k: Kernel, threads: int) -> dict[tuple, tuple]:
    """{(dtype, shape): (row, swizzle)} for the f32 results of `k`'s dots on tensor cores."""
    out = {}
    for op in walk(k.body.ops):
        if op.opcode != "dot":
            continue
        tiling = mma_tiling(op, threads)
        res = op.results[0].type
        if tiling is None or res.dtype != "f32":
            continue
        found = accumulator_layout(tiling)
        if found is not None:
            out.setdefault((res.dtype, tuple(res.shape)), found)
    return out
