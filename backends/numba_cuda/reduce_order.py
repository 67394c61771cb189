"""The order in which a reduction walks a shared tile's rows, chosen so a warp's reads are free
of bank conflicts (evaluated with `layout.banks`, not assumed).

`sum(t, axis=1)` of an [M, n] tile in shared memory gives one output row per thread: at step j
the 32 lanes read column j of 32 consecutive rows. When the rows' start banks repeat (a row
length that is a multiple of 128 bytes, a swizzle that moves 8-half chunks: rows r and r + 8 of
the pipeline's activation tile), those reads conflict. Each output i then starts at column
rot(i) = (i // P * Q) % n and wraps around: the smallest (P, Q) making every step's warp read
one wavefront, evaluated on the tile's own offsets (row stride and swizzle). The sum's order
changes with it (the interpreter's f64 sum and the f32 bound of the tests do not depend on it);
tiles whose plain order is already conflict-free keep it.
"""

from __future__ import annotations

from functools import cache

from lowbitc.backends.numba_cuda.buffers import Buf, swizzle_offset
from lowbitc.backends.numba_cuda.source import SHARED_BYTES
from lowbitc.layout.banks import WARP, warp_access

ELEMENTWISE = frozenset({"cast"})  # lazy ops a reduction may read a shared tile through


def source_buffer(ctx, v) -> Buf | None:
    """The shared buffer v reads element for element (through casts), else None."""
    while v.id not in ctx.bufs:
        op = ctx.lazy.get(v.id)
        if op is None or op.opcode not in ELEMENTWISE:
            return None
        v = op.operands[0]
    return ctx.bufs[v.id]


def rotation(ctx, src, axis: int, outputs: int) -> tuple[int, int]:
    """(P, Q) of the module doc for a reduction of `src` along `axis` (1 of 2), or (1, 0) for
    the plain order."""
    buf = source_buffer(ctx, src)
    if buf is None or axis != 1 or len(buf.shape) != 2:
        return 1, 0
    return _search(buf.shape, buf.strides()[0], buf.swizzle, SHARED_BYTES.get(buf.dtype, 4),
                   min(outputs, ctx.threads))


@cache
def _search(shape, row: int, sw, width: int, lanes: int) -> tuple[int, int]:
    m, n = shape
    for p, q in [(1, 0)] + [(p, q) for p in (1, 2, 4, 8, 16, 32) for q in (1, 2, 4, 8)]:
        if q % n == 0 and q:
            continue
        if all(_free(m, n, row, sw, width, lanes, p, q, first)
               for first in range(0, m, WARP)):
            return p, q
    return 1, 0


def _free(m, n, row, sw, width, lanes, p, q, first) -> bool:
    rows = [i for i in range(first, min(first + min(lanes, WARP), m))]
    for j in range(n):
        addrs = [width * swizzle_offset(i * row + (j + i // p * q) % n, sw) for i in rows]
        if warp_access(addrs + [None] * (WARP - len(addrs)), width).conflicts:
            return False
    return True
