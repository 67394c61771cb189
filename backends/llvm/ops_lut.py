"""LLVM handler for `lut` (a code book or decode table applied to codes): a private
constant table, read by vector gathers over a contiguous tile, element by element otherwise."""

from __future__ import annotations

from lowbitc.backends.llvm.decode import gather
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, const_literal, convert, handles
from lowbitc.backends.llvm.ops_elementwise import elementwise
from lowbitc.backends.llvm.target import lut_gathers
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType


def lut_global(em, op: Op) -> tuple[str, str]:
    """A private constant table for a `lut` op: (its name, its element type)."""
    dt = op.attrs.dtype
    t = MEMTYPE[dt]
    name = f"@lut{len(em.globals)}"
    items = ", ".join(f"{t} {const_literal(em, v, dt)}" for v in op.attrs.values)
    em.globals.append(f"{name} = private unnamed_addr constant [{len(op.attrs.values)} x {t}] "
                      f"[{items}], align 64")
    return name, t


# a contiguous tile of codes is looked up this many at a time (one vector gather: a [16, 1]
# tile of per-row scale codes took 16 scalar loads and inserts per K step), on hosts whose
# gathers pay (target.lut_gathers)
LUT_LANES = 16


@handles("lut")
def _lut(env: Env, op: Op) -> None:
    em = env.em
    name, t = lut_global(em, op)
    src_dt = op.operands[0].type.dtype
    codes, res = env.get(op.operands[0]), op.results[0].type
    if (lut_gathers() and isinstance(res, TileType) and isinstance(codes, Buf)
            and codes.contiguous
            and codes.shape == res.shape and codes.size % LUT_LANES == 0
            and t in ("float", "i32")):
        out = env.result_buf(op)

        def chunk(i: str) -> None:
            vi = f"<{LUT_LANES} x {lltype(src_dt)}>"
            idx = em.val(f"load {vi}, ptr {em.gep(codes, i)}, align 4")
            idx = convert(em, idx, src_dt, "i64", LUT_LANES) if src_dt != "i64" else idx
            v = gather(em, name, t, idx, LUT_LANES)
            em.emit(f"store <{LUT_LANES} x {t}> {v}, ptr {em.gep(out, i)}, align 4")
        em.loop("0", str(codes.size), chunk, step=str(LUT_LANES))
        return

    def fn(xs: list[str]) -> str:
        i = convert(em, xs[0], src_dt, "i64") if src_dt != "i64" else xs[0]
        p = em.val(f"getelementptr inbounds {t}, ptr {name}, i64 {i}", "p")
        return em.val(f"load {t}, ptr {p}")

    elementwise(env, op, fn)
