"""Codes stored in the rows packing (lowbitc.repack.RowsPacking, docs/packing.md): 16 rows
per vector, one row per lane.

`fused_dot` is the register-resident dot `acc[m, n] += sum_k a[m, k] * E(code[n, k])` for a
weight E that is a function of the code alone (a table: decode.lookup): per block of 16 rows
and step of 32 codes, `bits` aligned 64-byte loads; per code position one shift (constant),
one table permute and, per row of `a`, one FMA with the activation broadcast from memory.
The accumulators hold 16 outputs each, so no horizontal sum is needed; several independent
accumulators per row of `a` hide the FMA latency. `read` is the scalar read of one code (the
generic paths), `window_ok` tells when a window takes the vector path.
"""

from __future__ import annotations

from lowbitc.backends.llvm import decode, lanes
from lowbitc.backends.llvm.emitter import Buf, Emitter
from lowbitc.backends.llvm.handlers import convert
from lowbitc.repack import LANES, RowsPacking

TERNARY_SELECT = 0xE4  # vpternlogd truth table of c ? a : b (bit 4a + 2b + c)
CHAINS = 8  # independent FMA chains per block of 16 rows (FMA latency x ports)
V16 = f"<{LANES} x i32>"
F16 = f"<{LANES} x float>"


def _splat(v: int) -> str:
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


def _select_bits(em: Emitter, mask: str, a: str, b: str) -> str:
    """(a & mask) | (b & ~mask): one vpternlogd with AVX-512 (LLVM splits the and/or form)."""
    if decode.permutes():
        em.declare(f"declare {V16} @llvm.x86.avx512.pternlog.d.512({V16}, {V16}, {V16}, i32)")
        return em.val(f"call {V16} @llvm.x86.avx512.pternlog.d.512({V16} {a}, {V16} {b}, "
                      f"{V16} {mask}, i32 {TERNARY_SELECT})")
    low = em.val(f"and {V16} {a}, {mask}")
    inverse = em.val(f"xor {V16} {mask}, {_splat(-1)}")
    return em.val(f"or {V16} {low}, {em.val(f'and {V16} {b}, {inverse}')}")


def _codes(em: Emitter, words: list[str], packing: RowsPacking, i: int, clean: bool) -> str:
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
            v = em.val(f"lshr {V16} {w}, {_splat(amount)}")
        elif amount < 0:
            v = em.val(f"shl {V16} {w}, {_splat(-amount)}")
        else:
            v = w
        top = (i % per) * p + p == 32 and amount >= 0
        if code is None:
            code = v
        else:  # the bits below this plane from the code so far, the rest from v: one select
            code = _select_bits(em, _splat((1 << shift) - 1), code, v)
    if clean and not top:
        code = em.val(f"and {V16} {code}, {_splat((1 << packing.bits) - 1)}")
    return code


def fused_dot(env, plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """out[m, :] += a @ E(codes).T for a window of whole 16-row blocks (window_ok held)."""
    em = env.em
    packing: RowsPacking = t.packing
    m = abuf.shape[0]
    bn, bk = plan.codes.attrs.sizes
    table = plan.tables[plan.root.id]
    dtype = plan.root.type.dtype
    clean = not (decode.permutes() and len(table) <= 16)
    chains = max(1, CHAINS // m)
    bits = packing.bits
    t.ensure_strides(em)
    # steps of the window inside the row (a K tail shorter than the window skips the rest)
    row_steps = em.val(f"udiv i64 {t.words}, {bits}")
    first_step = em.val(f"lshr i64 {starts[1]}, 5")
    steps = em.val(f"sub i64 {row_steps}, {first_step}")
    steps = em.val(f"select i1 {em.val(f'icmp slt i64 {steps}, {bk // 32}')}, i64 {steps}, "
                   f"i64 {bk // 32}")
    zero = "zeroinitializer"

    def block(r: str) -> None:
        n0 = em.val(f"add i64 {starts[0]}, {em.val(f'mul i64 {r}, {LANES}')}")
        # word 0 of the window's first step in this block (whole blocks: 16 lanes)
        base = em.val(f"add i64 {em.val(f'mul i64 {n0}, {t.words}')}, "
                      f"{em.val(f'mul i64 {first_step}, {bits * LANES}')}")

        def step(s: str, accs: list[str]) -> list[str]:
            wbase = em.val(f"add i64 {base}, {em.val(f'mul i64 {s}, {bits * LANES}')}")
            words = []
            for j in range(bits):
                p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 "
                           f"{em.val(f'add i64 {wbase}, {j * LANES}')}")
                words.append(em.val(f"load {V16}, ptr {p}, align 4"))
            k0 = em.val(f"mul i64 {s}, 32")
            nxt = list(accs)
            for i in range(0, 32, 2):
                pair = em.val(f"shufflevector {V16} {_codes(em, words, packing, i, clean)}, "
                              f"{V16} {_codes(em, words, packing, i + 1, clean)}, <32 x i32> "
                              "<" + ", ".join(f"i32 {q}" for q in range(32)) + ">")
                vals = decode.lookup(em, pair, table, dtype)
                if dtype != "f32":
                    vals = convert(em, vals, dtype, "f32", 32)
                for h in range(2):
                    sel = ", ".join(f"i32 {h * LANES + q}" for q in range(LANES))
                    wv = em.val(f"shufflevector <32 x float> {vals}, <32 x float> poison, "
                                f"<{LANES} x i32> <{sel}>")
                    kk = em.val(f"add i64 {k0}, {i + h}")
                    for mi in range(m):
                        ai = em.val(f"add i64 {em.val(f'mul i64 {mi}, {abuf.strides[0]}')}, {kk}")
                        av = _splat_elem(em, abuf, ai)
                        c = mi * chains + (i + h) % chains
                        nxt[c] = em.val(f"call reassoc contract {F16} @llvm.fma.v16f32({F16} "
                                        f"{wv}, {F16} {av}, {F16} {nxt[c]})")
            return nxt

        em.declare(f"declare {F16} @llvm.fma.v16f32({F16}, {F16}, {F16})")
        accs = em.loop("0", steps, None, carried=[(F16, zero)] * (m * chains),
                       body_carried=step)
        col = em.val(f"mul i64 {r}, {LANES}")
        for mi in range(m):
            total = accs[mi * chains]
            for c in range(1, chains):
                total = em.val(f"fadd reassoc contract {F16} {total}, {accs[mi * chains + c]}")
            p = em.gep(out, em.flat_index([str(mi), col], out.shape))
            old = em.val(f"load {F16}, ptr {p}, align 4")
            em.emit(f"store {F16} {em.val(f'fadd {F16} {old}, {total}')}, ptr {p}, align 4")

    em.loop("0", str(bn // LANES), block)


def _splat_elem(em: Emitter, buf: Buf, index: str) -> str:
    """<16 x float> of buf[index] (an activation: one broadcast load)."""
    v = em.load_elem(buf, index)
    if buf.dtype != "f32":
        v = convert(em, v, buf.dtype, "f32")
    ins = em.val(f"insertelement {F16} poison, float {v}, i64 0")
    return em.val(f"shufflevector {F16} {ins}, {F16} poison, <{LANES} x i32> zeroinitializer")

