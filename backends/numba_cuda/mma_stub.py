"""Stand-in for t13a's `tensorcore.mma_f16` (T13_SPEC.md interface) until it lands: one
`mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` as inline PTX on the GPU target, and a
simulator twin with the warp semantics of the PTX ISA (section 9.7.14.5.8: fragments as in
`lowbitc.layout.mma`). The generated source imports `mma_f16` from this module only through
`mma_dot.MMA_IMPORT`, so switching to `tensorcore` is one line.

The twin exchanges the 32 lanes' registers through a per-(block, warp) slot list and two
`syncthreads` (the simulator has no warp barrier): every thread of the block must call it
the same number of times, which the renderer guarantees (every warp owns as many tiles).
"""

from __future__ import annotations

import threading

import numpy as np
from numba.cuda import config

from lowbitc.layout.mma import mma_m16n8k16_a, mma_m16n8k16_b, mma_m16n8k16_c

SIMULATOR = bool(config.ENABLE_CUDASIM)
_SLOTS: dict[tuple, list] = {}


def _halves(words) -> np.ndarray:
    return np.array([int(w) & 0xFFFFFFFF for w in words], np.uint32).view(np.float16)


def mma_f16_reference(a_lanes, b_lanes, c_lanes) -> list[tuple[float, ...]]:
    """D = A @ B + C for one warp: a_lanes[l] = 4 uint32 (8 halves a0..a7), b_lanes[l] = 2
    uint32, c_lanes[l] = 4 f32; returns every lane's d0..d3 (f32, sums in f64, one rounding)."""
    A, B, C = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    la, lb, lc = mma_m16n8k16_a(), mma_m16n8k16_b(), mma_m16n8k16_c()
    for lane in range(32):
        for i, h in enumerate(_halves(a_lanes[lane])):
            A[la(lane, i)] = h
        for i, h in enumerate(_halves(b_lanes[lane])):
            B[lb(lane, i)] = h
        for i, x in enumerate(c_lanes[lane]):
            C[lc(lane, i)] = x
    D = (A @ B + C).astype(np.float32)
    return [tuple(D[lc(lane, i)] for i in range(4)) for lane in range(32)]


def mma_f16_py(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    t = threading.current_thread()
    tid = t.thread_id
    key = (tuple(t.blockIdx), tid // 32)
    slots = _SLOTS.setdefault(key, [None] * 32)
    slots[tid % 32] = ((a0, a1, a2, a3), (b0, b1), (c0, c1, c2, c3))
    t.syncthreads()
    d = mma_f16_reference([s[0] for s in slots], [s[1] for s in slots],
                          [s[2] for s in slots])[tid % 32]
    t.syncthreads()
    return tuple(np.float32(x) for x in d)


if SIMULATOR:
    mma_f16 = mma_f16_py
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    _TEXT = ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, "
             "{$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")

    @intrinsic
    def mma_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):  # noqa: ARG001
        u32, f32 = types.uint32, types.float32
        ret = types.UniTuple(f32, 4)
        sig = ret(u32, u32, u32, u32, u32, u32, f32, f32, f32, f32)

        def codegen(context, builder, signature, args):
            i32, fl = ir.IntType(32), ir.FloatType()
            out = ir.LiteralStructType([fl] * 4)
            fnty = ir.FunctionType(out, [i32] * 6 + [fl] * 4)
            asm = ir.InlineAsm(fnty, _TEXT, "=f,=f,=f,=f," + ",".join("r" * 6 + "f" * 4))
            res = builder.call(asm, list(args))
            items = [builder.extract_value(res, k) for k in range(4)]
            return context.make_tuple(builder, ret, items)

        return sig, codegen
