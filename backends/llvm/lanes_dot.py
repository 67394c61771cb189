"""The lanes form of the fused transposed dot (fusion.py) for 2-D windows of higher-rank
packed tensors (fused_view.py; a KV cache's keys `dot(q, transpose(K tile))`), the counterpart of
axpy.py's lanes form.

A register of 16 words holds codes at P = 32 / bits positions per word; shifting it right by
`bits * pos` puts position pos of every word in the low bits, and a 16-entry permute of E's
table (repeated to 16, so the bits above the code do not matter) gives 16 values at once.
Lane j of position pos is column 16 P z + P j + pos of register z, so the activations are
permuted the same way once per window; per 16 codes a row costs a shift, a permute and an
FMA, and R rows' sums are taken across lanes together (lanes.row_sums).
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import decode, fused_view
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.fusion_plan import Plan
from lowbitc.backends.llvm.handlers import Env
from lowbitc.backends.llvm.lanes import row_sums

REGS = 16  # permuted activation registers at most (the accumulators take the rest)


def _rows(m: int) -> int:
    """Weight rows per step: independent accumulator chains, one joint horizontal sum."""
    return 8 if m == 1 else 4


def applies(plan: Plan, abuf: Buf) -> bool:
    """AVX-512, E a table of codes of 1, 2 or 4 bits, f32 activations, rows of whole 512-bit
    registers, whole groups of rows and the permuted activations within REGS registers."""
    codes = plan.codes
    if (codes.opcode != "load_codes" or plan.root.id not in plan.tables
            or not decode.permutes() or abuf.dtype != "f32" or not abuf.contiguous):
        return False
    bits = codes.attrs.bits
    bn, bk = fused_view.kept(codes.attrs.sizes)
    m = abuf.shape[0]
    return (bits in (1, 2, 4) and bk * bits % 512 == 0 and bn % _rows(m) == 0
            and m <= 2 and m * (bk * bits // 512) * (32 // bits) <= REGS)


def emit(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    em = env.em
    m = abuf.shape[0]
    rows = _rows(m)
    bits = plan.codes.attrs.bits
    bn, bk = fused_view.kept(plan.codes.attrs.sizes)
    per = 32 // bits
    regs = bk * bits // 512
    v16, i16 = "<16 x float>", "<16 x i32>"
    table = np.resize(np.asarray(plan.tables[plan.root.id], np.uint32), 16)
    tab = "<" + ", ".join(f"i32 {int(np.int32(w))}" for w in table) + ">"
    em.declare(f"declare {i16} @llvm.x86.avx512.permvar.si.512({i16}, {i16})")
    wide = f"<{16 * per} x float>"
    act = {}
    for i in range(m):
        for z in range(regs):
            p = em.gep(abuf, em.flat_index([str(i), str(16 * per * z)], abuf.shape))
            x = em.val(f"load {wide}, ptr {p}, align 4")
            for pos in range(per):
                sel = ", ".join(f"i32 {per * j + pos}" for j in range(16))
                act[i, z, pos] = em.val(f"shufflevector {wide} {x}, {wide} poison, "
                                        f"<16 x i32> <{sel}>")
    first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[1]}, 5')}, {bits}")

    def group(g: str) -> None:
        j0 = em.val(f"mul i64 {g}, {rows}")
        accs = [["zeroinitializer"] * rows for _ in range(m)]
        for r in range(rows):
            n = em.val(f"add i64 {starts[0]}, {em.val(f'add i64 {j0}, {r}')}")
            row = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {first}")
            for z in range(regs):
                p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 "
                           f"{em.val(f'add i64 {row}, {16 * z}')}")
                words = em.val(f"load {i16}, ptr {p}, align 4")
                for pos in range(per):
                    idx = em.val(f"lshr {i16} {words}, splat (i32 {pos * bits})") if pos \
                        else words
                    w = em.val(f"call {i16} @llvm.x86.avx512.permvar.si.512({i16} {tab}, "
                               f"{i16} {idx})")
                    w = em.val(f"bitcast {i16} {w} to {v16}")
                    for i in range(m):
                        prod = em.val(f"fmul reassoc contract {v16} {act[i, z, pos]}, {w}")
                        accs[i][r] = em.val(f"fadd reassoc contract {v16} {accs[i][r]}, "
                                            f"{prod}")
        vt = f"<{rows} x float>"
        for i in range(m):
            total = row_sums(em, accs[i], 16)
            q = em.gep(out, em.flat_index([str(i), j0], out.shape))
            old = em.val(f"load {vt}, ptr {q}, align 4")
            em.emit(f"store {vt} {em.val(f'fadd {vt} {old}, {total}')}, ptr {q}, align 4")

    em.loop("0", str(bn // rows), group)
