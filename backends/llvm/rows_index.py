"""The rows packing's dot for a weight that is a function of the code and of a small per-row
index (row_tables.py, tabulated): the decode of a per-group mixture of formats
(lowbitc/kernels/matmul_mix.lbk), whose group's table index names each row's member.

The row tables over every value of the index S (256 for a byte) hold few distinct rows: for
the mixture, indices 0..T-1 name the members and every other value decodes as index 0. With
S clamped to the first D values (S >= D reads as the row r0 < D they all equal), the D
tables of 2^bits entries are one shared table over (S << bits | code): up to 64 words, four
registers (lowbitc/passes/row_index.py, whose `tables` made the bitpack-lanes pass choose
this packing). Per block of 16 rows and window, the 16 rows' indices are one 16-byte load,
clamped and shifted into place; then per code and 16 rows, one vpternlogd (the code's low
bits or'ed into the row's base), a vpermi2d per 32 entries and, above 32 entries, a select on
the rows' bit 5, fixed per window (one vpermd and nothing else for 16 entries). The
accumulators hold 16 rows' outputs each, as in rows.fused_dot: no horizontal sums. Chosen
from 2 rows of `a` (row_index.MIN_ROWS): with one, the lanes packing's table per row wins."""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import decode, row_tables
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.rows import (
    F16,
    V16,
    activation,
    chains_of_16,
    codes,
    lane_sum,
    select_bits,
    splat,
    window_dot,
)
from lowbitc.passes.row_index import MAX_BITS, indexed
from lowbitc.repack import LANES


def plan_of(env, plan):
    """(source, D, r0, table) when the rows packing's indexed dot applies to the plan (its
    weight one f32 row table tabulated over a byte-sized index of the rows), else None."""
    if (not decode.table_permutes() or plan.row_tables.wanted != {plan.root.id}
            or plan.root.type.dtype != "f32" or plan.codes.opcode != "load_codes"
            or plan.codes.attrs.bits > MAX_BITS):
        return None
    found = row_tables.tabulated(env.defs, plan)
    if found is None:
        return None
    source, made = found
    buf = env.get(source)
    got = indexed(made[plan.root.id], plan.codes.attrs.bits)
    if got is None or not isinstance(buf, Buf):
        return None
    return (source, *got)


def fused_dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """out[m, :] += a @ E(code, S[row]).T for a window of whole 16-row blocks (window_ok
    held), E looked up in the shared table at (S << bits | code)."""
    em = env.em
    source, count, r0, table = plan_of(env, plan)
    bits = t.packing.bits
    m = abuf.shape[0]
    chains = max(1, chains_of_16() // m)
    words = np.resize(np.asarray(table, np.uint32), max(LANES, 1 << (len(table) - 1)
                                                         .bit_length()))
    regs = [_vector(words[i:i + LANES]) for i in range(0, len(words), LANES)]
    em.declare(f"declare {F16} @llvm.fma.v16f32({F16}, {F16}, {F16})")
    wide = decode.permutes()  # else AVX2: 8-entry permutes of the registers' halves
    if wide:
        em.declare(f"declare {V16} @llvm.x86.avx512.permvar.si.512({V16}, {V16})")
        em.declare(f"declare {V16} @llvm.x86.avx512.vpermi2var.d.512({V16}, {V16}, {V16})")
    halves = [h for r in regs for h in em.halves(r, V16)] if not wide else []
    state = {}

    def setup(r: str) -> None:
        """The block's rows' table bases (S << bits) and, for 4 registers, their bit 5."""
        index = _indices(env, source, plan.root.type.shape[0],
                         em.val(f"mul i64 {r}, {LANES}"))
        inside = em.val(f"icmp ult {V16} {index}, {splat(count)}")
        index = em.val(f"select <{LANES} x i1> {inside}, {V16} {index}, {V16} {splat(r0)}")
        state["base"] = em.val(f"shl {V16} {index}, {splat(bits)}")
        if len(regs) == 4 and wide:
            state["high"] = em.val(f"icmp uge {V16} {index}, {splat(32 >> bits)}")

    def lookup(code: str) -> str:
        if not wide:  # the whole index (the code's bits below the row's base), in range
            idx = select_bits(em, splat((1 << bits) - 1), code, state["base"])
            return decode.avx2_permute(em, idx, halves, LANES)
        if len(regs) == 1:
            return em.val(f"call {V16} @llvm.x86.avx512.permvar.si.512({V16} {regs[0]}, "
                          f"{V16} {code})")
        idx = select_bits(em, splat((1 << bits) - 1), code, state["base"])
        parts = [em.val(f"call {V16} @llvm.x86.avx512.vpermi2var.d.512({V16} {regs[i]}, "
                        f"{V16} {idx}, {V16} {regs[i + 1]})") for i in range(0, len(regs), 2)]
        if len(parts) == 1:
            return parts[0]
        return em.val(f"select <{LANES} x i1> {state['high']}, {V16} {parts[1]}, "
                      f"{V16} {parts[0]}")

    def body(words_at, k0: str, accs: list[str]) -> list[str]:
        loaded = [em.val(f"load {V16}, ptr {words_at(j)}, align 4") for j in range(bits)]
        nxt = list(accs)
        for i in range(32):
            w = lookup(codes(em, loaded, t.packing, i, False))
            wv = em.val(f"bitcast {V16} {w} to {F16}")
            for mi in range(m):
                c = mi * chains + i % chains
                nxt[c] = em.val(f"call reassoc contract {F16} @llvm.fma.v16f32({F16} {wv}, "
                                f"{F16} {activation(em, abuf, mi, k0, i)}, {F16} {nxt[c]})")
        return nxt

    window_dot(env, plan, abuf, out, t, starts, chains, body,
               lambda accs, mi: lane_sum(em, accs), setup=setup)


def _indices(env, source, rows: int, first: str) -> str:
    """<16 x i32>: the source's bytes for the window's rows first .. first + 15, zero-extended
    (a bool's 0/1, an i8's bit pattern: the tabulated rows' order)."""
    em = env.em
    buf = env.get(source)
    stride = buf.strides[row_tables.row_dim(source, rows)]
    at = em.val(f"mul i64 {first}, {stride}")
    if stride == 1:
        v = em.val(f"load <{LANES} x i8>, ptr {em.gep(buf, at)}, align 1")
    else:
        v = f"<{LANES} x i8> poison"
        for lane in range(LANES):
            p = em.gep(buf, em.val(f"add i64 {at}, {lane * stride}"))
            b = em.val(f"load i8, ptr {p}")
            v = em.val(f"insertelement <{LANES} x i8> {v}, i8 {b}, i64 {lane}")
    return em.val(f"zext <{LANES} x i8> {v} to {V16}")


def _vector(words: np.ndarray) -> str:
    return "<" + ", ".join(f"i32 {int(np.int32(np.uint32(w)))}" for w in words) + ">"


def describe(count: int, bits: int) -> str:
    """Explain's words for the path."""
    entries = count << bits
    return (f"rows16 fused register dot (16 rows per vector), the decode one table of "
            f"{entries} entries over (row index, code): "
            + (("one permute" if entries <= 16 else "a permute" if entries <= 32
                else "two permutes and a select") + " per 16 codes" if decode.permutes()
               else f"AVX2, {max(1, entries // 8)} permutes and selects per 8 codes"))
