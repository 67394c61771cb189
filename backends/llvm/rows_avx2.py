"""The rows dot's AVX2 forms (hosts without AVX-512: 8-lane registers, tables of 8 entries
a permute), chosen by `dot` for a window of the rows packing (rows.fused_dot) and, for the
planes packing's table dot, its shifted indices (`shifted`, rows.fused_planes_dot):

- sign-magnitude 4-bit floats (f4e2m1fn, every (e, m) float of 4 bits) look up their 8
  magnitudes and take each code's sign through the activation (`a` or `-a`, vblendvps);
- integer codes of one plane are converted where they lie in their word, against the
  activations scaled by powers of two (no shift per code); a signed format's offset is one
  term per window.

Each was measured on Zen 3's code run on Zen 4 (LOWBITC_TARGET_CPU=znver3) and modelled with
llvm-mca's znver3 model (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import decode, rows
from lowbitc.backends.llvm.emitter import Buf, Emitter, float_literal
from lowbitc.backends.llvm.fused_leaves import row_sum
from lowbitc.repack import LANES, RowsPacking

V16 = f"<{LANES} x i32>"
F16 = f"<{LANES} x float>"
F8 = "<8 x float>"


def dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str], chains: int) -> bool:
    """Emit the AVX2 rows dot of this window if one of the forms above applies (else emit
    nothing and return False): `chains` FMA chains per row of `a`."""
    em = env.em
    packing: RowsPacking = t.packing
    m = abuf.shape[0]
    table = plan.tables[plan.root.id]
    dtype = plan.root.type.dtype
    if signed_magnitudes(packing, table, dtype, abuf):
        rows.window_dot(env, plan, abuf, out, t, starts, chains,
                         _signed_body(em, abuf, table, chains, _negated(em, abuf)),
                         lambda accs, mi: rows.lane_sum(em, accs))
        return True
    if not codes_in_place(packing, table, dtype, abuf):
        return False
    p = packing.planes[0][0]
    flip, offset = decode.integers(table)
    steps = rows.window_steps(em, t, starts, plan.codes.attrs.sizes[1])[1]
    offsets = [_offset_sum(em, abuf, mi, steps, offset) for mi in range(m)] if offset else None

    def combine(accs: list[str], mi: int) -> str:
        total = rows.lane_sum(em, accs)
        return em.val(f"fadd {F16} {total}, {offsets[mi]}") if offsets else total
    rows.window_dot(env, plan, abuf, out, t, starts, chains,
                     _in_place_body(em, packing, flip, chains, _place_scaled(em, abuf, p)),
                     combine)
    return True


SIGNED_MAGNITUDES = True  # AVX2: sign-split 4-bit tables through the activations' signs


def signed_magnitudes(packing: RowsPacking, table: np.ndarray, dtype: str, abuf: Buf) -> bool:
    """Whether the AVX2 rows dot looks up a 4-bit sign-magnitude float table (f4e2m1fn, every
    (e, m) of 4 bits) as its 8 magnitudes and takes each code's sign as the activation's
    (`_signed_body`): AVX2 without AVX-512, one 4-bit plane, f32 values and activations (their
    negated copy is f32), at most 2 rows of `a`."""
    return (SIGNED_MAGNITUDES and _avx2_f32_gemv(dtype, abuf)
            and packing.planes == ((4, 0, 0),) and len(table) == 16 and decode.sign_split(table))


def _avx2_f32_gemv(dtype: str, abuf: Buf) -> bool:
    """What both forms need: AVX2 without AVX-512, f32 values and activations (their copies
    are f32), at most 2 rows of `a` (with 3 or 4 the FMAs set the time)."""
    return (not decode.permutes() and decode.avx2() and dtype == "f32" and abuf.dtype == "f32"
            and abuf.shape[0] <= 2)


def _negated(em: Emitter, abuf: Buf) -> Buf:
    """-a in a buffer of its own (kept in memory: its elements broadcast from there)."""
    return _copy_of(em, abuf, lambda v, c: em.val(f"fneg {F8} {v}"))


def _copy_of(em: Emitter, abuf: Buf, f) -> Buf:
    """f(a[i, c:c + 8], c) for every row i and 8 columns c, in a buffer of its own kept in
    memory (a window's activations transformed once, broadcast from there in the dot)."""
    m, k = abuf.shape
    out = em.alloc("f32", [m, k])
    for i in range(m):
        for c in range(0, k, 8):
            src = em.gep(abuf, str(i * abuf.strides[0] + c))
            v = f(em.val(f"load {F8}, ptr {src}, align 4"), c)
            em.emit(f"store {F8} {v}, ptr {em.gep(out, str(i * k + c))}, align 4")
    em.keep_in_memory(out)
    return out


def _signed_body(em: Emitter, abuf: Buf, table: np.ndarray, chains: int, neg: Buf):
    """The step of a sign-split 4-bit table on AVX2: |E(code)| from the 8 magnitudes (one
    vpermd per 8 rows reads the code's low 3 bits straight from its word), times a or -a as
    the code's top bit says (vblendvps reads bit 31 of the word shifted once; a and -a
    broadcast from memory): per code at most two shifts, a permute and a blend before the
    FMA, where the generic lookup moves, masks and ors the sign in."""
    mags = [decode.const_words(table[:8])]
    em.declare(f"declare {F8} @llvm.x86.avx.blendv.ps.256({F8}, {F8}, {F8})")

    def body(words_at, k0: str, accs: list[str]) -> list[str]:
        words = [em.val(f"load {V16}, ptr {words_at(j)}, align 4") for j in range(4)]
        nxt = list(accs)
        for i in range(32):
            w, pos = words[i // 8], i % 8
            idx = w if pos == 0 else em.val(f"lshr {V16} {w}, {rows.splat(4 * pos)}")
            top = w if pos == 7 else em.val(f"shl {V16} {w}, {rows.splat(28 - 4 * pos)}")
            signs = em.halves(em.val(f"bitcast {V16} {top} to {F16}"), F16)
            mag = decode.avx2_permute(em, idx, mags, LANES)
            wv = em.val(f"bitcast {V16} {mag} to {F16}")
            for mi in range(len(accs) // chains):
                x = em.halves(rows.activation(em, abuf, mi, k0, i), F16)
                nx = em.halves(rows.activation(em, neg, mi, k0, i), F16)
                xs = em.concat([em.val(f"call {F8} @llvm.x86.avx.blendv.ps.256({F8} {x[h]}, "
                                       f"{F8} {nx[h]}, {F8} {signs[h]})") for h in (0, 1)], F8)
                c = mi * chains + i % chains
                nxt[c] = em.val(f"call reassoc contract {F16} @llvm.fma.v16f32({F16} {wv}, "
                                f"{F16} {xs}, {F16} {nxt[c]})")
        return nxt

    return body


CODES_IN_PLACE = True  # AVX2: integer codes converted where they lie in their word


def codes_in_place(packing: RowsPacking, table: np.ndarray, dtype: str, abuf: Buf) -> bool:
    """Whether the AVX2 rows dot converts each integer code where it lies in its word
    (`_in_place_body`): AVX2 without AVX-512, one plane of codes, a table of integers
    (decode.lookup converts the code), f32 activations and values, at most 2 rows of `a`
    (with 3 or 4 the FMAs set the time: 1.02-1.04x it, Zen 3's code on Zen 4)."""
    return (CODES_IN_PLACE and _avx2_f32_gemv(dtype, abuf) and len(packing.planes) == 1
            and decode.integers(table) is not None)


def _place_scaled(em: Emitter, abuf: Buf, p: int) -> Buf:
    """a[:, k] times 2^-(p * (k % per)) (per = 32 / p codes in a word), the last code of a
    word's times 1, in a buffer of its own kept in memory. Powers of two: exact products
    (unless one falls below 2^-126, a term under 2^-121 of the dot)."""
    per = 32 // p

    def scaled(v: str, c: int) -> str:
        sc = [2.0 ** -(p * ((c + j) % per)) if (c + j) % per < per - 1 else 1.0
              for j in range(8)]
        return em.val(f"fmul {F8} {v}, {rows.fvec(sc)}")
    return _copy_of(em, abuf, scaled)


def _offset_sum(em: Emitter, abuf: Buf, mi: int, steps: str, offset: float) -> str:
    """<16 x float> of offset x the sum of a[mi, :32 steps] (the codes the dot reads,
    padding included): the term b sum(a) of a table (q ^ flip) + b, added once a window."""
    total = row_sum(em, abuf, mi, em.val(f"mul i64 {steps}, 32"), 8)
    return rows.broadcast(em, em.val(f"fmul float {total}, {float_literal(offset, 'f32')}"))


def _in_place_body(em: Emitter, packing: RowsPacking, flip: int, chains: int, scaled: Buf):
    """The step of an integer format in one plane of p bits on AVX2: code j of a word is
    (word & (2^p - 1) << pj), converted as it lies (q 2^pj, exact: at most p significant
    bits) and multiplied by the activation times 2^-pj (`_place_scaled`); the word's last
    code is the word shifted down. Per code a mask (or a shift), a conversion and the FMA,
    where reading the code down to bit 0 first costs a shift and a mask. The table's offset
    b (E(q) = (q ^ flip) + b) is not added here: `_offset_sum` adds b sum(a) per window."""
    p = packing.planes[0][0]
    per = 32 // p
    code_mask = (1 << p) - 1

    def body(words_at, k0: str, accs: list[str]) -> list[str]:
        words = [em.val(f"load {V16}, ptr {words_at(j)}, align 4") for j in range(p)]
        if flip:  # every code's (code ^ flip), in one xor per word
            pattern = sum(flip << (p * j) for j in range(per)) & 0xFFFFFFFF
            words = [em.val(f"xor {V16} {w}, {rows.splat(int(np.int32(np.uint32(pattern))))}")
                     for w in words]
        nxt = list(accs)
        for i in range(32):
            w, j = words[i // per], i % per
            if j == per - 1:
                v = em.val(f"lshr {V16} {w}, {rows.splat(32 - p)}")
            else:
                mask = int(np.int32(np.uint32(code_mask << (p * j))))
                v = em.val(f"and {V16} {w}, {rows.splat(mask)}")
            vals = em.val(f"sitofp {V16} {v} to {F16}")
            for mi in range(len(accs) // chains):
                c = mi * chains + i % chains
                nxt[c] = em.val(f"call reassoc contract {F16} @llvm.fma.v16f32({F16} {vals}, "
                                f"{F16} {rows.activation(em, scaled, mi, k0, i)}, {F16} "
                                f"{nxt[c]})")
        return nxt

    return body


# AVX2: the planes dot's shifted indices by vpmulhuw (a multiply port) where that can (Zen 3's
# permutes and shifts share two ports; llvm-mca -mcpu=znver3, u2 / u3 loop: 51 -> 44 / 75 ->
# 67 cycles a step; Zen 3's code on Zen 4, one thread: u2 0.93x, u3 0.95-1.0x the time)
MUL_SHIFTS = True


def shifted(em: Emitter, w: str, k: int, highs: dict[str, str]) -> str:
    """w >> k in each lane's low 3 bits (the rest any bits): vpmulhuw by 2^(16 - k) shifts
    each 16-bit half (a multiply port, where vpsrld takes the permutes' ports); bits 16 and
    up from the word shifted by 16 once; a group across bit 16 by a shift."""
    if k + 3 > 16 and k < 16:
        return em.val(f"lshr {V16} {w}, {rows.splat(k)}")
    if k >= 16:
        if w not in highs:
            highs[w] = em.val(f"lshr {V16} {w}, {rows.splat(16)}")
        w, k = highs[w], k - 16
        if k == 0:
            return w
    em.declare("declare <16 x i16> @llvm.x86.avx2.pmulhu.w(<16 x i16>, <16 x i16>)")
    m = "<" + ", ".join([f"i16 {1 << (16 - k)}"] * 16) + ">"
    parts = []
    for h in em.halves(w, V16):
        x = em.val(f"bitcast <8 x i32> {h} to <16 x i16>")
        y = em.val(f"call <16 x i16> @llvm.x86.avx2.pmulhu.w(<16 x i16> {x}, <16 x i16> {m})")
        parts.append(em.val(f"bitcast <16 x i16> {y} to <8 x i32>"))
    return em.concat(parts, "<8 x i32>")
