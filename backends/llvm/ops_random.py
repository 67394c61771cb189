"""LLVM handler of `philox`: Philox 4x32-10 (word 0 of counter (index, 0) under the seed as
key), the random bits of stochastic rounding, on scalars or <W x i64> index vectors.

The 32x32 -> 64-bit products are `mul i64` of zero-extended words, which x86 vectorises to
`vpmuludq`; constants and key words are splats, so a vector lane computes exactly what
lowbitc.rounding.philox4x32 computes for its index.
"""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import Emitter
from lowbitc.backends.llvm.handlers import Env, handles, splat
from lowbitc.backends.llvm.ops_elementwise import elementwise
from lowbitc.ir.core import Op
from lowbitc.rounding import PHILOX_M, PHILOX_ROUNDS, PHILOX_W


def philox_ir(em: Emitter, seed: str, index: str, width: int = 0) -> str:
    """u32 word 0 of Philox 4x32-10 for i64 `index` (a vector of `width`) keyed by i64 seed."""
    t32, t64 = (f"<{width} x i32>", f"<{width} x i64>") if width else ("i32", "i64")

    def k(v: int, t: str) -> str:  # i32 literals in signed form
        if t == t32:
            return splat(str(v - (1 << 32) if v >= 1 << 31 else v), "i32", width)
        return splat(str(v), "i64", width)

    def hi(x: str) -> str:
        return em.val(f"trunc {t64} {em.val(f'lshr {t64} {x}, {k(32, t64)}')} to {t32}")

    def lo(x: str) -> str:
        return em.val(f"trunc {t64} {x} to {t32}")

    def mul(c: str, m: int) -> str:
        return em.val(f"mul nuw {t64} {em.val(f'zext {t32} {c} to {t64}')}, {k(m, t64)}")

    def xor3(a: str, b: str, c: str) -> str:
        return em.val(f"xor {t32} {em.val(f'xor {t32} {a}, {b}')}, {c}")

    k0, k1 = lo(seed), hi(seed)
    c0, c1, c2, c3 = lo(index), hi(index), k(0, t32), k(0, t32)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = em.val(f"add {t32} {k0}, {k(PHILOX_W[0], t32)}")
            k1 = em.val(f"add {t32} {k1}, {k(PHILOX_W[1], t32)}")
        p0, p1 = mul(c0, PHILOX_M[0]), mul(c2, PHILOX_M[1])
        c0, c1, c2, c3 = xor3(hi(p1), c1, k0), lo(p1), xor3(hi(p0), c3, k1), lo(p0)
    return c0


@handles("philox")
def _philox(env: Env, op: Op) -> None:
    elementwise(env, op, lambda xs, w=0: philox_ir(env.em, xs[0], xs[1], w), vector=True)
