"""`philox` in the CUDA renderer: Philox 4x32-10 (word 0 of counter (index, 0) under the seed
as key) written out per element in uint64 arithmetic, so numba-cuda and the simulator compute
exactly what lowbitc.rounding.philox4x32 computes for the same index.
"""

from __future__ import annotations

from lowbitc.backends.numba_cuda.elements import ELEMENT
from lowbitc.ir.core import Op
from lowbitc.rounding import PHILOX_M, PHILOX_ROUNDS, PHILOX_W

_LO = "U64(4294967295)"


def _philox(ctx, op: Op, idx) -> str:
    src = ctx.src
    seed, index = ctx.operand(op, 0, idx), ctx.operand(op, 1, idx)
    k0, k1 = src.tmp(f"U32(U64({seed}) & {_LO})"), src.tmp(f"U32(U64({seed}) >> U64(32))")
    c0, c1 = src.tmp(f"U32(U64({index}) & {_LO})"), src.tmp(f"U32(U64({index}) >> U64(32))")
    c2 = c3 = "U32(0)"
    for r in range(PHILOX_ROUNDS):
        if r:  # (32-bit words: products of zero-extended words become mul.wide.u32)
            k0 = src.tmp(f"U32((U64({k0}) + U64({PHILOX_W[0]})) & {_LO})")
            k1 = src.tmp(f"U32((U64({k1}) + U64({PHILOX_W[1]})) & {_LO})")
        p0 = src.tmp(f"(U64({c0}) * U64({PHILOX_M[0]}))")
        p1 = src.tmp(f"(U64({c2}) * U64({PHILOX_M[1]}))")
        c0, c1, c2, c3 = (src.tmp(f"U32(({p1} >> U64(32)) ^ U64({c1}) ^ U64({k0}))"),
                          src.tmp(f"U32({p1} & {_LO})"),
                          src.tmp(f"U32(({p0} >> U64(32)) ^ U64({c3}) ^ U64({k1}))"),
                          src.tmp(f"U32({p0} & {_LO})"))
    return c0


ELEMENT["philox"] = _philox
