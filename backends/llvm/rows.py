"""Codes stored in the rows packing (lowbitc.repack.RowsPacking, docs/packing.md): 16 rows
per vector, one row per lane.

`fused_dot` is the register-resident dot `acc[m, n] += sum_k a[m, k] * E(code[n, k])` for a
weight E that is a function of the code alone (a table: decode.lookup): per block of 16 rows
and step of 32 codes, `bits` aligned 64-byte loads; per code position one shift (constant),
one table permute and, per row of `a`, one FMA with the activation broadcast from memory.
The accumulators hold 16 outputs each, so no horizontal sum is needed; several independent
accumulators per row of `a` hide the FMA latency. `read` is the scalar read of one code (the
generic paths), `window_ok` tells when a window takes the vector path. Hosts with AVX2 but no
AVX-512 take the forms of rows_avx2.py where they apply.
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import decode, lanes, rows_avx2, target
from lowbitc.backends.llvm.emitter import Buf, Emitter, float_literal
from lowbitc.backends.llvm.handlers import convert
from lowbitc.repack import LANES, PlanesPacking, RowsPacking, affine_bits

TERNARY_SELECT = 0xE4  # vpternlogd truth table of c ? a : b (bit 4a + 2b + c)
CHAINS = 8  # independent FMA chains per block of 16 rows (FMA latency x ports)
# ... with 8-lane vectors (AVX2), where each chain is two of the 16 ymm registers: 8 chains
# spilled; 4 ran the rows dot 1.04-1.06x faster (Zen 3's code on Zen 4, f4e2m1fn and u4)
CHAINS_AVX2 = 4
V16 = f"<{LANES} x i32>"
F16 = f"<{LANES} x float>"
F8 = "<8 x float>"


def chains_of_16() -> int:
    """Independent FMA chains of <16 x float> a dot may carry on this host."""
    return CHAINS if decode.permutes() else CHAINS_AVX2


def splat(v: int) -> str:
    return "<" + ", ".join([f"i32 {v}"] * LANES) + ">"


def _full_rows(em: Emitter, t) -> str:
    """Rows in whole blocks of 16 (a last, shorter block is interleaved over fewer lanes)."""
    return em.val(f"and i64 {t.dims[0]}, -{LANES}")


def window_ok(em: Emitter, t, starts: list[str], sizes) -> str:
    """Whether a [BN, BK] window takes the vector path: rows a run of whole 16-row blocks
    inside the tensor, K start a multiple of the step and inside the row (past K, the row's
    last step is padded with code 0; steps past the row are skipped)."""
    ok = lanes.window_ok(em, t, starts, sizes, t.packing, rows=_full_rows(em, t))
    aligned = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[0]}, {LANES - 1}')}, 0")
    return em.val(f"and i1 {ok}, {aligned}")


def read(em: Emitter, t, idx: list[str], packing: RowsPacking) -> str:
    """Code (row idx[0], column idx[1]) as i32, for any row (the last block's lane count)."""
    n, k = idx
    t.ensure_strides(em)
    wpr = t.words
    first = em.val(f"and i64 {n}, -{LANES}")
    left = em.val(f"sub i64 {t.dims[0]}, {first}")
    lanes = em.val(f"select i1 {em.val(f'icmp slt i64 {left}, {LANES}')}, i64 {left}, "
                   f"i64 {LANES}")
    lane = em.val(f"and i64 {n}, {LANES - 1}")
    step = em.val(f"lshr i64 {k}, 5")
    pos = em.val(f"and i64 {k}, 31")
    base = em.val(f"mul i64 {first}, {wpr}")
    code = "0"
    for p, shift, first_word in packing.planes:
        per = 32 // p
        slot = em.val(f"udiv i64 {pos}, {per}")
        j = em.val(f"add i64 {em.val(f'mul i64 {step}, {packing.bits}')}, "
                   f"{em.val(f'add i64 {slot}, {first_word}')}")
        wi = em.val(f"add i64 {base}, {em.val(f'mul i64 {j}, {lanes}')}")
        wi = em.val(f"add i64 {wi}, {lane}")
        w = em.val(f"load i32, ptr {em.val(f'getelementptr inbounds i32, ptr {t.ptr}, i64 {wi}')}")
        at = em.val(f"mul i64 {em.val(f'urem i64 {pos}, {per}')}, {p}")
        v = em.val(f"lshr i32 {w}, {em.val(f'trunc i64 {at} to i32')}")
        v = em.val(f"and i32 {v}, {(1 << p) - 1}")
        code = em.val(f"or i32 {code}, {em.val(f'shl i32 {v}, {shift}')}")
    return code


def select_bits(em: Emitter, mask: str, a: str, b: str) -> str:
    """(a & mask) | (b & ~mask): one vpternlogd with AVX-512 (LLVM splits the and/or form)."""
    if decode.permutes():
        em.declare(f"declare {V16} @llvm.x86.avx512.pternlog.d.512({V16}, {V16}, {V16}, i32)")
        return em.val(f"call {V16} @llvm.x86.avx512.pternlog.d.512({V16} {a}, {V16} {b}, "
                      f"{V16} {mask}, i32 {TERNARY_SELECT})")
    low = em.val(f"and {V16} {a}, {mask}")
    inverse = em.val(f"xor {V16} {mask}, {splat(-1)}")
    return em.val(f"or {V16} {low}, {em.val(f'and {V16} {b}, {inverse}')}")


def codes(em: Emitter, words: list[str], packing: RowsPacking, i: int, clean: bool) -> str:
    """Code i (0..31) of the step for the 16 rows, as <16 x i32>, from the step's words.
    With `clean` False the code may carry other codes' bits above its own (for a consumer
    that reads only the low 4 bits: a 16-entry table permute)."""
    code = None
    top = False  # whether nothing lies above the code's bits
    for p, shift, first in packing.planes:
        per = 32 // p
        w = words[first + i // per]
        amount = (i % per) * p - shift  # move the plane's bits to their place in the code
        if amount > 0:
            v = em.val(f"lshr {V16} {w}, {splat(amount)}")
        elif amount < 0:
            v = em.val(f"shl {V16} {w}, {splat(-amount)}")
        else:
            v = w
        top = (i % per) * p + p == 32 and amount >= 0
        if code is None:
            code = v
        else:  # the bits below this plane from the code so far, the rest from v: one select
            code = select_bits(em, splat((1 << shift) - 1), code, v)
    if clean and not top:
        code = em.val(f"and {V16} {code}, {splat((1 << packing.bits) - 1)}")
    return code


def window_steps(em: Emitter, t, starts: list[str], bk: int) -> tuple[str, str]:
    """(first step, steps) of a window of bk codes in a row of the rows packing: the steps
    inside the row (a K tail shorter than the window skips the rest)."""
    t.ensure_strides(em)
    row_steps = em.val(f"udiv i64 {t.words}, {t.packing.bits}")
    first_step = em.val(f"lshr i64 {starts[1]}, 5")
    steps = em.val(f"sub i64 {row_steps}, {first_step}")
    steps = em.val(f"select i1 {em.val(f'icmp slt i64 {steps}, {bk // 32}')}, i64 {steps}, "
                   f"i64 {bk // 32}")
    return first_step, steps


def window_dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str], per_row: int,
               body, combine, setup=None) -> None:
    """The loops of the rows and planes dots: per 16-row block of the window, a loop over
    the steps inside the row carrying `per_row` <16 x float> accumulators per row of `a`
    (`body(words_at, k0, accs) -> accs`, words_at(j) the address of the step's j-th 16-word
    vector, k0 the step's first code in the window), then out[i, block] += combine(row i's
    accumulators; `setup(r)`, when given, runs first in block r's code)."""
    em = env.em
    m = abuf.shape[0]
    bn, bk = plan.codes.attrs.sizes
    bits = t.packing.bits
    first_step, steps = window_steps(em, t, starts, bk)

    def block(r: str) -> None:
        n0 = em.val(f"add i64 {starts[0]}, {em.val(f'mul i64 {r}, {LANES}')}")
        # word 0 of the window's first step in this block (whole blocks: 16 lanes)
        base = em.val(f"add i64 {em.val(f'mul i64 {n0}, {t.words}')}, "
                      f"{em.val(f'mul i64 {first_step}, {bits * LANES}')}")
        if setup is not None:
            setup(r)
        spread = (bk // 32) * bits > BURST_LINES
        if not spread:
            prefetch_windows(em, t, base, (bk // 32) * bits)

        def step(s: str, accs: list[str]) -> list[str]:
            wbase = em.val(f"add i64 {base}, {em.val(f'mul i64 {s}, {bits * LANES}')}")
            if spread:  # the step's own lines, as far ahead (in steps of `bits` lines)
                prefetch_windows(em, t, wbase, bits, PREFETCH_WINDOWS * (bk // 32))

            def words_at(j: int) -> str:
                return em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 "
                              f"{em.val(f'add i64 {wbase}, {j * LANES}')}")
            return body(words_at, em.val(f"mul i64 {s}, 32"), accs)

        accs = em.loop("0", steps, None, carried=[(F16, "zeroinitializer")] * (m * per_row),
                       body_carried=step)
        col = em.val(f"mul i64 {r}, {LANES}")
        for mi in range(m):
            total = combine(accs[mi * per_row:(mi + 1) * per_row], mi)
            p = em.gep(out, em.flat_index([str(mi), col], out.shape))
            old = em.val(f"load {F16}, ptr {p}, align 4")
            em.emit(f"store {F16} {em.val(f'fadd {F16} {old}, {total}')}, ptr {p}, align 4")

    em.loop("0", str(bn // LANES), block)


PREFETCH_WINDOWS = 2  # windows ahead whose words a block asks for
# A block's window of more lines than this asks for them step by step, each step for its own
# `bits` lines as far ahead, not all at the window's start: the burst of 16 prefetches
# stalled the loads behind it (4-bit GEMVs streamed from DRAM, one thread's CPU time: 0.77-0.89x
# the time; u3's 12 lines the same either way); u2's 8 lines measured 0.99-1.12x spread.
BURST_LINES = 8


def prefetch_windows(em: Emitter, t, base: str, lines: int, windows: int = PREFETCH_WINDOWS,
                     extra: int = 0) -> None:
    """Prefetch the block's words `windows` windows further along K (a window's words
    are `lines` consecutive 64-byte lines, and `extra` lines after them; a prefetch past the
    tensor does not fault): the blocks of a launch are 16 rows x K apart, too far for the
    hardware prefetchers."""
    ahead = em.val(f"add i64 {base}, {windows * lines * LANES}")
    for line in range(lines + extra):
        at = em.val(f"add i64 {ahead}, {line * LANES}")
        q = em.val(f"getelementptr i32, ptr {t.ptr}, i64 {at}")
        em.prefetch(q, target.prefetch_locality("rows"))


def lane_sum(em: Emitter, vecs: list[str]) -> str:
    """The sum of the vectors as a balanced tree: a block's tail (its accumulators summed
    before the next block can retire) waits log2(n) dependent adds, not n - 1."""
    while len(vecs) > 1:
        pairs = [em.val(f"fadd reassoc contract {F16} {vecs[i]}, {vecs[i + 1]}")
                 for i in range(0, len(vecs) - 1, 2)]
        vecs = pairs + vecs[len(vecs) - len(vecs) % 2:]
    return vecs[0]


def activation(em: Emitter, abuf: Buf, mi: int, k0: str, i: int) -> str:
    """<16 x float> of a[mi, k0 + i] (one broadcast load)."""
    kk = em.val(f"add i64 {k0}, {i}")
    return _splat_elem(em, abuf, em.val(f"add i64 {em.val(f'mul i64 {mi}, {abuf.strides[0]}')}, "
                                        f"{kk}"))


def fused_dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """out[m, :] += a @ E(codes).T for a window of whole 16-row blocks (window_ok held):
    per code, the planes' shifts and select, a table permute, an FMA per row of `a`."""
    em = env.em
    packing: RowsPacking = t.packing
    m = abuf.shape[0]
    table = plan.tables[plan.root.id]
    dtype = plan.root.type.dtype
    clean = not decode.reads_low_bits(table, dtype)
    chains = max(1, chains_of_16() // m)
    em.declare(f"declare {F16} @llvm.fma.v16f32({F16}, {F16}, {F16})")
    if ACTIVATIONS_IN_MEMORY:
        em.keep_in_memory(abuf)
    if rows_avx2.dot(env, plan, abuf, out, t, starts, chains):
        return

    def body(words_at, k0: str, accs: list[str]) -> list[str]:
        words = [em.val(f"load {V16}, ptr {words_at(j)}, align 4") for j in range(packing.bits)]
        nxt = list(accs)
        for i in range(0, 32, 2):
            pair = em.val(f"shufflevector {V16} {codes(em, words, packing, i, clean)}, "
                          f"{V16} {codes(em, words, packing, i + 1, clean)}, <32 x i32> "
                          "<" + ", ".join(f"i32 {q}" for q in range(32)) + ">")
            vals = decode.lookup(em, pair, table, dtype)
            if dtype != "f32":
                vals = convert(em, vals, dtype, "f32", 32)
            for h in range(2):
                sel = ", ".join(f"i32 {h * LANES + q}" for q in range(LANES))
                wv = em.val(f"shufflevector <32 x float> {vals}, <32 x float> poison, "
                            f"<{LANES} x i32> <{sel}>")
                for mi in range(m):
                    c = mi * chains + (i + h) % chains
                    nxt[c] = em.val(f"call reassoc contract {F16} @llvm.fma.v16f32({F16} {wv}, "
                                    f"{F16} {activation(em, abuf, mi, k0, i + h)}, {F16} "
                                    f"{nxt[c]})")
        return nxt

    window_dot(env, plan, abuf, out, t, starts, chains, body, lambda accs, mi: lane_sum(em, accs))


# The activations' tile stays in memory, so each FMA broadcasts its activation from there
# (`{1to16}`, a load port): a tile of <= 32 floats held in registers costs a shuffle or two
# per broadcast, on the ports the decode's permutes need (u4 GEMV, groups of 32).
ACTIVATIONS_IN_MEMORY = True


def _splat_elem(em: Emitter, buf: Buf, index: str) -> str:
    """<16 x float> of buf[index] (an activation: one broadcast load)."""
    v = em.load_elem(buf, index)
    if buf.dtype != "f32":
        v = convert(em, v, buf.dtype, "f32")
    return broadcast(em, v)


def broadcast(em: Emitter, v: str) -> str:
    """<16 x float> of the float v in every lane."""
    ins = em.val(f"insertelement {F16} poison, float {v}, i64 0")
    return em.val(f"shufflevector {F16} {ins}, {F16} poison, <{LANES} x i32> zeroinitializer")



TABLE_CODES = 4  # AVX-512: codes whose bits index one 16-entry table of partial sums
AVX2_TABLE_CODES = 3  # AVX2: codes per 8-entry table (one vpermps per 8 rows)


def fused_planes_dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """The planes packing's dot for a weight affine in the code bits, w(q) = a + sum_j c_j
    bit_j(q): per row of `a` and `tc` activations a table T[e] = sum_i bit_i(e) x[k + i] of
    the 2^tc partial sums; then per bit plane, each `tc` codes' bit j picks its partial sum
    with one permute, added into plane j's accumulator. out += sum_j c_j acc_j + a sum_k x
    (window_ok held). AVX-512: 16-entry tables of 4 codes, one permute per 16 rows (3
    operations per bit plane and 64 weights); AVX2: 8-entry tables of 3 codes (a step's 32
    codes in ten groups of 3 and one of 2), one vpermps per 8 rows, reading the low 3 bits of
    the shifted word (no mask)."""
    em = env.em
    packing: PlanesPacking = t.packing
    bits = packing.bits
    m = abuf.shape[0]
    bk = plan.codes.attrs.sizes[1]
    a, coef = affine_bits(np.asarray(plan.tables[plan.root.id]).view(np.float32), bits)
    wide = decode.permutes()
    tc = TABLE_CODES if wide else AVX2_TABLE_CODES
    n = 1 << tc  # a table's entries
    ft = f"<{n} x float>"
    per = -(-32 // tc)  # tables per step of 32 codes
    steps = bk // 32
    tab = em.alloc("f32", (m, steps * per, n))
    if wide:
        em.declare(f"declare {F16} @llvm.x86.avx512.permvar.sf.512({F16}, {V16})")

        def lookup(table: str, idx: str) -> str:
            return em.val(f"call {F16} @llvm.x86.avx512.permvar.sf.512({F16} {table}, "
                          f"{V16} {idx})")
    else:
        em.declare(f"declare {ft} @llvm.x86.avx2.permps({ft}, <8 x i32>)")

        def lookup(table: str, idx: str) -> str:
            return em.concat([em.val(f"call {ft} @llvm.x86.avx2.permps({ft} {table}, "
                                     f"<8 x i32> {h})") for h in em.halves(idx, V16)], ft)

    def table_at(mi: int, row: str) -> str:
        """The address of table `row` (step * per + group) of a's row mi."""
        at = em.val(f"add i64 {row}, {mi * steps * per}")
        return em.gep(tab, em.val(f"mul i64 {at}, {n}"))

    def make(mi: int, k: str, count: int, row: str) -> str:
        """Table T of a's row mi over the `count` activations from k, stored at `row`."""
        table = None
        for i in range(count):
            x = activation(em, abuf, mi, k, i)
            if n != LANES:
                x = em.val(f"shufflevector {F16} {x}, {F16} poison, <{n} x i32> "
                           "zeroinitializer")
            term = em.val(f"fmul contract {ft} {x}, {fvec([e >> i & 1 for e in range(n)])}")
            table = term if table is None else em.val(f"fadd contract {ft} {table}, {term}")
        em.emit(f"store {ft} {table}, ptr {table_at(mi, row)}, align {4 * n}")
        return table

    sums = []  # per row of `a`: the last lane of the summed tables is the window's sum of x
    for mi in range(m):
        if 32 % tc == 0:  # one table a loop step
            def build(g: str, carried: list[str], mi: int = mi) -> list[str]:
                table = make(mi, em.val(f"mul i64 {g}, {tc}"), tc, g)
                return [em.val(f"fadd {ft} {carried[0]}, {table}")]
            count = steps * per
        else:  # a step's tables a loop step (its last group of codes is shorter)
            def build(s: str, carried: list[str], mi: int = mi) -> list[str]:
                total = carried[0]
                for g in range(per):
                    k = em.val(f"add i64 {em.val(f'mul i64 {s}, 32')}, {g * tc}")
                    row = em.val(f"add i64 {em.val(f'mul i64 {s}, {per}')}, {g}")
                    total = em.val(f"fadd {ft} {total}, "
                                   f"{make(mi, k, min(tc, 32 - g * tc), row)}")
                return [total]
            count = steps
        sums += em.loop("0", str(count), None, carried=[(ft, "zeroinitializer")],
                        body_carried=build)
    chains = max(1, chains_of_16() // (m * bits))
    per_row = bits * chains

    def body(words_at, k0: str, accs: list[str]) -> list[str]:
        words = [em.val(f"load {V16}, ptr {words_at(j)}, align 4") for j in range(bits)]
        s0 = em.val(f"mul i64 {em.val(f'udiv i64 {k0}, 32')}, {per}")
        nxt = list(accs)
        highs: dict[str, str] = {}  # AVX2: each word shifted by 16, once
        for g in range(per):
            for j in range(bits):
                if g == 0:
                    idx = words[j]
                elif rows_avx2.MUL_SHIFTS and not wide:
                    idx = rows_avx2.shifted(em, words[j], g * tc, highs)
                else:
                    idx = em.val(f"lshr {V16} {words[j]}, {splat(g * tc)}")
                for mi in range(m):
                    at = table_at(mi, em.val(f"add i64 {s0}, {g}"))
                    part = lookup(em.val(f"load {ft}, ptr {at}, align {4 * n}"), idx)
                    c = mi * per_row + j * chains + g % chains
                    # nsz: the first step's add to the zeroed accumulator folds away
                    nxt[c] = em.val(f"fadd reassoc nsz contract {F16} {nxt[c]}, {part}")
        return nxt

    def combine(accs: list[str], mi: int) -> str:
        """Row mi's total: the planes' sums times their coefficients (1 needs no multiply),
        plus a times the window's sum of x (the summed tables' last lane) when a != 0."""
        sx = em.val(f"extractelement {ft} {sums[mi]}, i64 {n - 1}") if a else None
        terms = []
        for j in range(bits):
            part = lane_sum(em, accs[j * chains:(j + 1) * chains])
            terms.append(part if coef[j] == 1 else
                         em.val(f"fmul {F16} {part}, {fvec([coef[j]] * LANES)}"))
        total = lane_sum(em, terms)
        if a:
            total = em.val(f"fadd {F16} {total}, "
                           f"{em.val(f'fmul {F16} {broadcast(em, sx)}, {fvec([a] * LANES)}')}")
        return total

    window_dot(env, plan, abuf, out, t, starts, per_row, body, combine)


def fvec(values) -> str:
    return "<" + ", ".join(f"float {float_literal(float(np.float32(v)), 'f32')}"
                           for v in values) + ">"
