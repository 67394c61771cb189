"""The byte dot fused with the weights' decode: `dot(xq, transpose(E), acc)` with xq an i8
tile, E a u8 tile that is a function of the code alone over one load_codes in the rows
packing (16 rows per vector, lowbitc.repack.RowsPacking), acc i32.

Per block of 16 rows and step of 32 codes, each bit plane's words are `p` aligned 64-byte
vectors (one i32 word per row); byte j of a word holds `8 / p` codes of width p, so one shift
and one mask give four codes per row (bytes of each i32 lane) and one `vpdpbusd` adds their
products with four activations broadcast to all 16 lanes: 16 outputs per accumulator, no
horizontal sums. The four codes of a byte extraction are not consecutive along k: the
activations are permuted to match (a constant shuffle per 32 of them, per window) and
vpdpbusd reads each dword of them broadcast to the 16 lanes (`{1to16}`). A plane
above the first lands at its place in the byte by the same shift, so planes sum in the same
accumulator. E(code) = code ^ X (unsigned integers, two's complement through the bias 2^(b-1),
bipolar) xors the words first; a single 1-, 2- or 4-bit plane may instead look E up in a
16-byte table (`vpshufb`: f4e2m1fn times two plus 12). The 16 lanes are one zmm register
with AVX-512 VNNI; on hosts without it (`recipe`) two ymm halves, each adding its products
with a 256-bit vpdpbusd (AVX-VNNI) or, on AVX2 alone, `vpmaddubsw` then `vpmaddwd` by ones
(exact while E <= 127, every format of up to 7 bits; 8-bit bytes are split into their low 7
bits and the top one, each part's pair sums in 16 bits). Hosts without AVX2 and other windows
take the generic path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowbitc.backends.llvm import byte_planes, intdot, target
from lowbitc.backends.llvm import rows as rows_packing
from lowbitc.backends.llvm.byte_planes import i32, rep_byte
from lowbitc.backends.llvm.emitter import Buf, Emitter
from lowbitc.backends.llvm.fallback import note_fused, with_fallback
from lowbitc.backends.llvm.fusion import _window_ok
from lowbitc.backends.llvm.fusion_plan import _tree, region_index
from lowbitc.backends.llvm.handlers import Env
from lowbitc.backends.llvm.lanes import row_sums
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Op, Region
from lowbitc.ir.types import TileType
from lowbitc.passes.bitpack_lanes import code_values
from lowbitc.repack import LANES, RowsPacking

V16 = f"<{LANES} x i32>"
B64 = "<64 x i8>"
CHAINS = 4  # independent vpdpbusd chains per block of 16 rows (latency x ports)
PREFETCH_BYTES = 4096  # one stream per program: ask this far ahead (~ DRAM latency x rate)
# ... except for codes of these widths (measured on Zen 5, docs/performance.md: 4-bit codes
# 4-9% faster 8 KB ahead than 4 KB, not 12 or 16 KB; 2-bit codes, once every line of the
# stream was asked for (inline_extra_lines), 10-13% faster 8 KB ahead)
PREFETCH_BYTES_BY_BITS = {2: 8192, 4: 8192}
WHOLE_WINDOWS = True  # some windows of whole steps run a constant-trip step loop (`unrolls`)
# How the fused dot adds four byte products to each of its 16 i32 lanes, widest first:
# "vnni512" one 512-bit vpdpbusd; "vnni256" two 256-bit ones (AVX-VNNI, or AVX-512 VL);
# "avx2" per 256-bit half vpmaddubsw + vpmaddwd by ones (`_dpbusd`).
RECIPES = ("vnni512", "vnni256", "avx2")
RECIPE: str | None = None  # overrides the host's (tests, A/B timings; any the host can run)
PAIR_SUMS = True  # "avx2": add a step's pair sums in 16 bits before widening (`_fused`)


def inline_extra_lines(bits: int) -> int:
    """Lines a 16-row window of `bits`-bit codes prefetches beyond its own: in the inline
    GEMV packing (lowbitc.a8.inline_pack) an extra step of scales and zero points (E * bits
    = lcm(bits, 1 or 2) lines: at most max(bits, 2)) sits between some windows, so windows
    asking only for their own lines D bytes ahead leave those lines unasked (11 % of a u4
    stream with zero points, 20 % of u2's), each a demand miss; asking for max(bits, 2) more
    covers every line of the stream."""
    return max(bits, 2)


@dataclass
class BytePlan:
    dot: Op
    transpose: Op
    codes: Op  # the load_codes leaf
    deferred: list[Op]  # the ops the fused path skips (run by the fallback)
    table: np.ndarray  # E for every code (0..255)
    xor: int | None  # E(code) = code ^ xor, else None (a table lookup)


def plan_byte_dots(r: Region, consts: dict[int, Op] | None = None) -> dict[int, BytePlan]:
    """Integer dots of this region (keyed by result id) whose u8 weight operand is a
    function of one load_codes' code alone; `consts`: scalar constants of enclosing regions
    that E may read (a constant shared with code outside the loop)."""
    defs, uses, order, dots = region_index(r)
    plans: dict[int, BytePlan] = {}
    for op in dots:
        if op.results[0].type.dtype != "i32":
            continue
        a, b, _ = op.operands
        tr = defs.get(b.id)
        if (a.type.dtype != "i8" or tr is None or tr.opcode != "transpose"
                or tr.attrs.perm != (1, 0) or uses[b.id] != 1):
            continue
        e = tr.operands[0]
        found = _tree(defs, uses, e)
        if found is None or not isinstance(e.type, TileType) or e.type.dtype != "u8":
            continue
        tree, codes = found
        if (codes.attrs.masked or tuple(codes.attrs.sizes) != e.type.shape
                or e.type.shape[0] % LANES
                or e.type.shape[1] % (32 if codes.opcode == "load_codes" else 64)):
            continue
        tree = sorted(tree, key=lambda o: order[id(o)])
        table = _table(tree, codes, e, {**(consts or {}), **defs})
        if table is None:
            continue
        n = np.arange(len(table))
        x = int(table[0])
        xor = x if np.array_equal(table, n ^ x) else None
        if xor is None and (codes.opcode != "load_codes" or codes.attrs.bits not in (1, 2, 4)):
            continue
        plans[op.results[0].id] = BytePlan(
            op, tr, codes, sorted(tree + [codes, tr], key=lambda o: order[id(o)]), table, xor)
    return plans


def _table(tree: list[Op], codes: Op, root, defs: dict) -> np.ndarray | None:
    """E for every code as bytes (None if E reads anything but the code and constants)."""
    bits = codes.attrs.bits if codes.opcode == "load_codes" else 8  # or u8/i8 bytes
    vals = code_values(codes.results[0], bits, tree, root, defs)
    return None if vals is None else vals.astype(np.uint8)


def applies() -> bool:
    """Whether this host runs the fused path (a recipe of RECIPES)."""
    return recipe() is not None


@functools.cache
def _host_recipe() -> str | None:
    dots = intdot.host_int_dots()
    if dots and dots[0].step == 64 and dots[0].emit is intdot._vnni:
        return "vnni512"
    if any(d.step == 32 and d.emit is intdot._vnni for d in dots):
        return "vnni256"
    return "avx2" if any(d.emit is intdot._maddwd for d in dots) else None


def recipe() -> str | None:
    """The fused dot's instructions on this host (RECIPES), or None where it does not apply."""
    return RECIPE if RECIPE is not None else _host_recipe()


def emit_byte_dot(env: Env, plan: BytePlan) -> None:
    """The fused path for windows of whole 16-row blocks in the rows packing, else the
    deferred ops and the generic integer dot; binds the dot's result buffer."""
    em = env.em
    t = env.get(plan.codes.operands[0])
    starts = [env.get(v) for v in plan.codes.operands[1:3]]
    if applies():
        note_fused(plan.dot, plan.codes, "fused integer byte dot (codes widened to bytes, "
                   "vpdpbusd over 16 rows per vector)", "the generic integer dot")
    else:
        note("dot", subject_of(plan.codes.operands[0]), "generic integer dot", "the fused byte "
             "dot needs AVX2", fallback=True, loc=plan.dot.loc)
    sizes = plan.codes.attrs.sizes
    t.ensure_strides(em)  # here: the branches below both use them

    def choose(abuf, out):
        if not (applies() and isinstance(abuf, Buf) and abuf.contiguous):
            return None
        if plan.codes.opcode == "load":  # u8/i8 weights, rows in memory order
            ok = _window_ok(em, t, starts, sizes, aligned=False)
            return ok, lambda: _fused_bytes(em, plan, abuf, out, t, starts)
        if type(t.packing) is RowsPacking:
            ok = rows_packing.window_ok(em, t, starts, sizes)
            return ok, lambda: _fused(em, plan, abuf, out, t, starts)
        return None

    with_fallback(env, plan.dot, plan.deferred, intdot.emit_dot, choose, "bytedot")


def _order(p: int) -> list[int]:
    """The step's codes in the order the extractions of a p-bit plane see them: word w,
    extraction t (shift t*p), byte j holds code (32/p)*w + (8/p)*j + t."""
    return [(32 // p) * w + (8 // p) * j + t for w in range(p) for t in range(8 // p)
            for j in range(4)]


def _broadcasts(em: Emitter, abuf: Buf, widths: set[int]) -> dict[int, Buf]:
    """Per plane width, the activations' bytes in that plane's extraction order ([m, k] i8,
    one shuffle per 32): vpdpbusd reads each dword of them broadcast to its 16 lanes
    (`{1to16}`, a memory operand: no register shuffle per instruction). The buffer stays in
    memory (Emitter.keep_in_memory), so that LLVM does not forward the stores into per-dword
    register broadcasts."""
    m, k = abuf.shape
    out = {}
    for p in sorted(widths):
        buf = em.alloc("i8", [m, k])
        mask = "<" + ", ".join(f"i32 {i}" for i in _order(p)) + ">"
        for i in range(m):
            for c in range(k // 32):
                src = em.gep(abuf, str(i * abuf.strides[0] + 32 * c))
                v = em.val(f"load <32 x i8>, ptr {src}, align 1")
                v = em.val(f"shufflevector <32 x i8> {v}, <32 x i8> poison, <32 x i32> {mask}")
                em.emit(f"store <32 x i8> {v}, ptr {em.gep(buf, str(i * k + 32 * c))}, align 32")
        em.keep_in_memory(buf)
        out[p] = buf
    return out


def _broadcast_dword(em: Emitter, buf: Buf, at: str) -> str:
    """The i32 at byte `at` of `buf` in all 16 lanes (one `{1to16}` operand)."""
    x = em.val(f"load i32, ptr {em.gep(buf, at)}, align 4")
    ins = em.val(f"insertelement {V16} poison, i32 {x}, i64 0")
    return em.val(f"shufflevector {V16} {ins}, {V16} poison, <{LANES} x i32> zeroinitializer")


def _fused(em: Emitter, plan: BytePlan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    packing: RowsPacking = t.packing
    m, k = abuf.shape
    bn, bk = plan.codes.attrs.sizes
    bits = packing.bits
    merged = byte_planes.merges(packing)
    xs = _broadcasts(em, abuf, {packing.planes[0][0]} if merged else
                     {p for p, _, _ in packing.planes})
    chains = max(1, CHAINS // m)
    first_step, steps = rows_packing.window_steps(em, t, starts, bk)
    table = None
    if plan.xor is None:  # a 16-byte table, repeated in each 128-bit lane for vpshufb
        vals = [int(plan.table[i % len(plan.table)]) for i in range(16)] * 4
        table = "<" + ", ".join(f"i8 {v}" for v in vals) + ">"
    wide = int(plan.table.max()) > 127  # bytes vpmaddubsw would saturate on (`_dpbusd`)
    # AVX2: a step's vpmaddubsw pair sums (each at most 2 x E x 128 in size) add in 16 bits,
    # this many at a time, before one vpmaddwd widens them (llama.cpp's AVX2 q4 dots do so)
    pairs = (32767 // (256 * max(1, int(plan.table.max())))
             if PAIR_SUMS and not wide and recipe() == "avx2" else 0)

    def block(r: str) -> None:
        n0 = em.val(f"add i64 {starts[0]}, {em.val(f'mul i64 {r}, {LANES}')}")
        base = em.val(f"add i64 {em.val(f'mul i64 {n0}, {t.words}')}, "
                      f"{em.val(f'mul i64 {first_step}, {bits * LANES}')}")
        lines = (bk // 32) * bits
        # a window of one block (the inline GEMV packing: one stream) asks for the lines
        # PREFETCH_BYTES (by code width) ahead, and for the extra step's lines after them
        # (inline_extra_lines); wider windows PREFETCH_WINDOWS ahead in each
        if bn == LANES:
            # one bit plane in 16-row programs is the inline GEMV packing, whose one stream
            # some hosts' hardware prefetchers follow better alone; u3's two planes run
            # tile-major 16-row tiles (a code stream and a scale stream): they keep it
            if len(packing.planes) > 1 or target.inline_prefetch():
                far = PREFETCH_BYTES_BY_BITS.get(bits, PREFETCH_BYTES)
                ahead = max(rows_packing.PREFETCH_WINDOWS, -(-far // (64 * lines)))
                rows_packing.prefetch_windows(em, t, base, lines, ahead, inline_extra_lines(bits))
        else:
            rows_packing.prefetch_windows(em, t, base, lines)

        def step(s: str, accs: list[str]) -> list[str]:
            wbase = em.val(f"add i64 {base}, {em.val(f'mul i64 {s}, {bits * LANES}')}")
            k0 = em.val(f"mul i64 {s}, 32")
            nxt = list(accs)
            n = 0
            loaded: dict[tuple[int, int], str] = {}
            pending: list[list[str]] = [[] for _ in range(m)]  # 16-bit pair sums per row
            flushed = [0] * m

            def flush(i: int) -> None:
                if pending[i]:
                    c = i * chains + flushed[i] % chains
                    nxt[c] = _widen_add(em, nxt[c], _add16(em, pending[i]))
                    pending[i].clear()
                    flushed[i] += 1

            def load(plane: int, w: int) -> str:
                if (plane, w) not in loaded:
                    loaded[plane, w] = _load_word(plane, w)
                return loaded[plane, w]

            def _load_word(plane: int, w: int) -> str:
                p, shift, first = packing.planes[plane]
                q = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 "
                           f"{em.val(f'add i64 {wbase}, {(first + w) * LANES}')}")
                # (align 4: a copy of the words, QTensor.replica, may start off a line)
                word = em.val(f"load {V16}, ptr {q}, align 4")
                if plan.xor:
                    x = (plan.xor >> shift) & ((1 << p) - 1)
                    rep = sum(x << (p * i) for i in range(32 // p))
                    word = em.val(f"xor {V16} {word}, splat (i32 {i32(rep)})")
                return word

            for plane, (p, shift, _) in enumerate(packing.planes[:1] if merged
                                                  else packing.planes):
                xp = xs[p]
                for w in range(p):
                    word = load(plane, w)
                    for e in range(8 // p):
                        v = _extract(em, word, e * p, shift, p, table)
                        if merged:
                            v = byte_planes.merge_planes(em, packing, v, w, e, load)
                        for i in range(m):
                            d = i * k // 4 + w * (8 // p) + e  # the dword, k0 / 4 further
                            bx = _broadcast_dword(em, xp, em.val(f"add i64 {k0}, {4 * d}"))
                            if pairs > 1:
                                pending[i].append(_pair_sums(em, v, bx))
                                if len(pending[i]) == pairs:
                                    flush(i)
                                continue
                            c = i * chains + n % chains
                            nxt[c] = _dpbusd(em, nxt[c], v, bx, wide)
                        n += 1
            for i in range(m):
                flush(i)
            return nxt

        carried = [(V16, "zeroinitializer")] * (m * chains)
        if unrolls(m, bits, table is not None):
            accs = _whole_or_not(em, steps, bk // 32, carried, step)
        else:
            accs = em.loop("0", steps, None, carried=carried, body_carried=step)
        col = em.val(f"mul i64 {r}, {LANES}")
        for i in range(m):
            total = accs[i * chains]
            for c in range(1, chains):
                total = em.val(f"add {V16} {total}, {accs[i * chains + c]}")
            p_ = em.gep(out, em.flat_index([str(i), col], out.shape))
            old = em.val(f"load {V16}, ptr {p_}, align 4")
            em.emit(f"store {V16} {em.val(f'add {V16} {old}, {total}')}, ptr {p_}, align 4")

    em.loop("0", str(bn // LANES), block)


def unrolls(m: int, bits: int, table: bool) -> bool:
    """Whether a window's steps run as a constant-trip loop (LLVM unrolls it whole) where the
    window holds all of them: for one activation row (a GEMV) and codes of 1-3 bits or looked
    up in a table. Measured on Zen 5 (docs/performance.md, session 10): u2 0.89x, u3 0.95x,
    f4e2m1fn 0.94x the time streamed, u1 and u8 the same, u4 1.07-1.11x slower streamed, so
    plain 4-bit codes keep the loop."""
    return WHOLE_WINDOWS and m == 1 and (bits < 4 or table)


def _whole_or_not(em: Emitter, steps: str, full: int, carried, step) -> list[str]:
    """The step loop with a constant trip count where the window holds `full` steps (all but
    a K tail), so that LLVM unrolls it whole; else the counted loop."""
    whole, part, join = em.label("whole"), em.label("part"), em.label("joined")
    em.emit(f"br i1 {em.val(f'icmp eq i64 {steps}, {full}')}, label %{whole}, label %{part}")
    ends = []
    for name, hi in ((whole, str(full)), (part, steps)):
        em.start_block(name)
        ends.append((em.loop("0", hi, None, carried=carried, body_carried=step), em.block))
        em.br(join)
    em.start_block(join)
    return [em.val(f"phi {t} [ {a}, %{ends[0][1]} ], [ {b}, %{ends[1][1]} ]")
            for (t, _), a, b in zip(carried, ends[0][0], ends[1][0], strict=True)]


def _fused_bytes(em: Emitter, plan: BytePlan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """Byte weights in memory order (u8/i8 tensors): per weight row and activation row, one
    vpdpbusd per 64 bytes into a vector of partial sums; 16 weight rows' vectors then fold
    into one vector of their 16 sums (lanes.row_sums)."""
    m, k = abuf.shape
    bn, bk = plan.codes.attrs.sizes
    flip = i32((plan.xor or 0) * 0x01010101)

    def block(r: str) -> None:
        n0 = em.val(f"add i64 {starts[0]}, {em.val(f'mul i64 {r}, {LANES}')}")
        col = em.val(f"mul i64 {r}, {LANES}")
        for j in range(LANES):  # each row's bytes two K windows ahead (rows are pages apart)
            row = em.val(f"mul i64 {em.val(f'add i64 {n0}, {j}')}, {t.strides[0]}")
            ahead = em.val(f"add i64 {row}, {em.val(f'add i64 {starts[1]}, {2 * bk}')}")
            for line in range(0, bk, 64):
                q = em.val(f"getelementptr i8, ptr {t.ptr}, i64 {ahead}")
                q = em.val(f"getelementptr i8, ptr {q}, i64 {line}")
                em.prefetch(q, target.prefetch_locality("bytes"))
        for i in range(m):
            sums = []
            for j in range(LANES):
                row = em.val(f"mul i64 {em.val(f'add i64 {n0}, {j}')}, {t.strides[0]}")
                acc = "zeroinitializer"
                for c in range(bk // 64):
                    at = em.val(f"add i64 {row}, {em.val(f'add i64 {starts[1]}, {64 * c}')}")
                    q = em.val(f"getelementptr inbounds i8, ptr {t.ptr}, i64 {at}")
                    w = em.val(f"load {V16}, ptr {q}, align 1")
                    if flip:
                        w = em.val(f"xor {V16} {w}, splat (i32 {flip})")
                    x = em.val(f"load {V16}, ptr {em.gep(abuf, str(i * k + 64 * c))}, align 1")
                    acc = _dpbusd(em, acc, w, x, wide=True)
                sums.append(acc)
            total = row_sums(em, sums, LANES, "i32")
            p_ = em.gep(out, em.flat_index([str(i), col], out.shape))
            old = em.val(f"load {V16}, ptr {p_}, align 4")
            em.emit(f"store {V16} {em.val(f'add {V16} {old}, {total}')}, ptr {p_}, align 4")

    em.loop("0", str(bn // LANES), block)


def _extract(em: Emitter, word: str, at: int, shift: int, p: int, table: str | None) -> str:
    """The byte codes at bit `at` of every byte, moved to bit `shift` (their plane's place in
    the code) and masked; with a table, looked up instead."""
    amount = at - shift
    v = word
    if amount > 0:
        v = em.val(f"lshr {V16} {v}, splat (i32 {amount})")
    elif amount < 0:
        v = em.val(f"shl {V16} {v}, splat (i32 {-amount})")
    v = em.val(f"and {V16} {v}, {rep_byte(((1 << p) - 1) << shift)}")
    if table is None:
        return v
    b = em.val(f"bitcast {V16} {v} to {B64}")
    if recipe() == "vnni512":
        em.declare(f"declare {B64} @llvm.x86.avx512.pshuf.b.512({B64}, {B64})")
        looked = em.val(f"call {B64} @llvm.x86.avx512.pshuf.b.512({B64} {table}, {B64} {b})")
    else:  # vpshufb looks up within each 128-bit lane: the table repeats in every one
        b32 = "<32 x i8>"
        em.declare(f"declare {b32} @llvm.x86.avx2.pshuf.b({b32}, {b32})")
        t32 = em.part(table, B64, 0, 32)
        looked = em.concat([em.val(f"call {b32} @llvm.x86.avx2.pshuf.b({b32} {t32}, {b32} "
                                   f"{em.part(b, B64, h, 32)})") for h in (0, 32)], b32)
    return em.val(f"bitcast {B64} {looked} to {V16}")


W16 = "<32 x i16>"


def _pair_sums(em: Emitter, u: str, s: str) -> str:
    """vpmaddubsw(u, s) on both ymm halves of <16 x i32> operands: <32 x i16> sums of two u8 x
    i8 products (u <= 127, or the sums saturate)."""
    b32, w16 = "<32 x i8>", "<16 x i16>"
    em.declare(f"declare {w16} @llvm.x86.avx2.pmadd.ub.sw({b32}, {b32})")
    sums = []
    for h in (0, 8):
        ub, sb = (em.val(f"bitcast <8 x i32> {em.part(v, V16, h, 8)} to {b32}") for v in (u, s))
        sums.append(em.val(f"call {w16} @llvm.x86.avx2.pmadd.ub.sw({b32} {ub}, {b32} {sb})"))
    return em.concat(sums, w16)


def _add16(em: Emitter, sums: list[str]) -> str:
    """The 16-bit sum of <32 x i16> vectors, as a balanced tree (the caller bounds it)."""
    while len(sums) > 1:
        sums = [em.val(f"add {W16} {sums[i]}, {sums[i + 1]}") if i + 1 < len(sums)
                else sums[i] for i in range(0, len(sums), 2)]
    return sums[0]


def _widen_add(em: Emitter, acc: str, sums: str) -> str:
    """acc + vpmaddwd(sums, 1): each i32 lane of <16 x i32> acc gains its two 16-bit sums."""
    v8, w16 = "<8 x i32>", "<16 x i16>"
    em.declare(f"declare {v8} @llvm.x86.avx2.pmadd.wd({w16}, {w16})")
    out = []
    for h in (0, 1):
        quads = em.val(f"call {v8} @llvm.x86.avx2.pmadd.wd({w16} {em.part(sums, W16, 16 * h, 16)}, "
                       f"{w16} splat (i16 1))")
        out.append(em.val(f"add {v8} {em.part(acc, V16, 8 * h, 8)}, {quads}"))
    return em.concat(out, v8)


def _dpbusd(em: Emitter, acc: str, u: str, s: str, wide: bool = False) -> str:
    """acc + vpdpbusd(u, s) on <16 x i32> operands (four u8 x i8 products per lane), with this
    host's recipe; `wide`: u may hold bytes above 127 (vpmaddubsw would saturate its pair
    sums: each byte is taken as its low 7 bits plus 128 times its top bit)."""
    how = recipe()
    if how == "vnni512":
        em.declare(f"declare {V16} @llvm.x86.avx512.vpdpbusd.512({V16}, {V16}, {V16})")
        return em.val(f"call {V16} @llvm.x86.avx512.vpdpbusd.512({V16} {acc}, {V16} {u}, "
                      f"{V16} {s})")
    v8, b32, w16 = "<8 x i32>", "<32 x i8>", "<16 x i16>"
    out = []
    for h in (0, 8):
        a, uh, sh = (em.part(v, V16, h, 8) for v in (acc, u, s))
        if how == "vnni256":
            em.declare(f"declare {v8} @llvm.x86.avx512.vpdpbusd.256({v8}, {v8}, {v8})")
            out.append(em.val(f"call {v8} @llvm.x86.avx512.vpdpbusd.256({v8} {a}, {v8} {uh}, "
                              f"{v8} {sh})"))
            continue
        em.declare(f"declare {w16} @llvm.x86.avx2.pmadd.ub.sw({b32}, {b32})")
        em.declare(f"declare {v8} @llvm.x86.avx2.pmadd.wd({w16}, {w16})")
        sb = em.val(f"bitcast {v8} {sh} to {b32}")
        # u = lo + 128 hi per byte when wide: each part's pair sums fit 16 bits
        parts = ([(em.val(f"and {v8} {uh}, splat (i32 {i32(0x7F7F7F7F)})"), 1),
                  (em.val(f"and {v8} {em.val(f'lshr {v8} {uh}, splat (i32 7)')}, "
                          f"splat (i32 {0x01010101})"), 128)] if wide else [(uh, 1)])
        for part, weight in parts:
            ub = em.val(f"bitcast {v8} {part} to {b32}")
            pairs = em.val(f"call {w16} @llvm.x86.avx2.pmadd.ub.sw({b32} {ub}, {b32} {sb})")
            quads = em.val(f"call {v8} @llvm.x86.avx2.pmadd.wd({w16} {pairs}, "
                           f"{w16} splat (i16 {weight}))")
            a = em.val(f"add {v8} {a}, {quads}")
        out.append(a)
    return em.concat(out, v8)
