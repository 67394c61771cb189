"""`dot` on tensor cores: a dot of f16 (or bf16) tiles into an f32 accumulator becomes
`mma.sync.aligned.m16n8k16` (.f16 or .bf16) and one of i8 tiles into i32
`mma.sync.aligned.m16n8k32 .s8` (PTX ISA 9.7.14.5.8 and .10) when the block's warps tile its output.

Which thread holds which element is not written here: the operands' thread-value layouts
are the fragments of `lowbitc.layout.mma` composed (Kronecker product) with the block's
warp tiling,

    C [M, N]  = spatial(WM, WN)            * local(TM, TN) * mma_c   (warp w = wi * WN + wj)
    A [M, k]  = spatial(WM, 1) * repl(WN)  * local(TM, 1)  * mma_a   (one K step of k)
    B [k, N]  = repl(WM) * spatial(1, WN)  * local(1, TN)  * mma_b

(each warp owns one contiguous TM*16 x TN*8 block of the output, as CUTLASS's warp tiles)

and the renderer turns each layout into the thread's base coordinate (an expression of the
thread id, from the layout's spatial modes) plus a constant offset per register (its local
modes). The warp grid is the squarest WM x WN that divides the tile grid (of two as
square, the one with wider warp tiles).

The dot is taken off this path (the SIMT dot of `statements.py` runs instead) when the
operands are not both f16 or both bf16 (f32 accumulator) or both i8 (i32 accumulator),
M, N, K are not multiples of 16, 8 and the instruction's k (16, 32), the block is not whole
warps, or the warps cannot share the 16 x 8 tiles evenly (every warp issues the same number of mma).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.backends.numba_cuda.buffers import swizzle_expr, swizzle_offset
from lowbitc.backends.numba_cuda.mma_packed import PackedB
from lowbitc.backends.numba_cuda.mma_weights import codes_by_word, inside_condition, word_leaf
from lowbitc.layout import mma as frag
from lowbitc.layout.tv import TVLayout, local, replicated, spatial

MMA_IMPORT = ("from lowbitc.backends.numba_cuda.tensorcore import ldmatrix_x2, ldmatrix_x4, "
              "mma_bf16, mma_f16, mma_s8\n"
              "from lowbitc.backends.numba_cuda.tensorcore import aligned16, cp_async16_zfill, "
              "cp_async_commit, cp_async_wait")
MMA_M, MMA_N = 16, 8


@dataclass(frozen=True)
class Kind:
    """One mma shape: operand and accumulator dtypes, K per instruction, the device helper,
    its fragments, elements per 32-bit register, the accumulator's numba type, and how one
    element becomes its bits in a register."""

    dtypes: tuple[str, str, str]
    k: int
    fn: str
    fragments: tuple
    per_reg: int
    acc: str
    bits: str  # format string of one element's register bits, {x} the element

    def layouts(self):
        return tuple(f() for f in self.fragments)


KINDS = {
    "f16": Kind(("f16", "f16", "f32"), 16, "mma_f16",
                (frag.mma_m16n8k16_a, frag.mma_m16n8k16_b, frag.mma_m16n8k16_c), 2, "F32",
                "U32(u16_from_f16({x}))"),
    "bf16": Kind(("bf16", "bf16", "f32"), 16, "mma_bf16",
                 (frag.mma_m16n8k16_a, frag.mma_m16n8k16_b, frag.mma_m16n8k16_c), 2, "F32",
                 "U32({x})"),  # (bf16 values are carried as their 16 bits, source.py)
    "s8": Kind(("i8", "i8", "i32"), 32, "mma_s8",
               (frag.mma_m16n8k32_a, frag.mma_m16n8k32_b, frag.mma_m16n8k32_c), 4, "I32",
               "U32(I32({x}) & I32(255))"),
}


@dataclass(frozen=True)
class Tiling:
    """Warp grid WM x WN over an [M, N] output, TM x TN mma tiles per warp."""

    M: int
    N: int
    K: int
    WM: int
    WN: int
    kind: Kind = KINDS["f16"]

    @property
    def TM(self) -> int:
        return self.M // MMA_M // self.WM

    @property
    def TN(self) -> int:
        return self.N // MMA_N // self.WN

    def layouts(self) -> tuple[TVLayout, TVLayout, TVLayout]:
        """(A per K step, B per K step, C) thread-value layouts of the block."""
        fa, fb, fc = self.kind.layouts()
        a = spatial(self.WM, 1) * replicated(self.WN, 2) * local(self.TM, 1) * fa
        b = replicated(self.WM, 2) * spatial(1, self.WN) * local(1, self.TN) * fb
        c = spatial(self.WM, self.WN) * local(self.TM, self.TN) * fc
        return a, b, c


def mma_tiling(op, threads: int) -> Tiling | None:
    """The warp tiling when `op` (a dot) takes the mma path, else None (see module doc)."""
    a, b, c = op.operands
    res = op.results[0]
    kind = next((k for k in KINDS.values()
                 if (a.type.dtype, b.type.dtype, c.type.dtype) == k.dtypes
                 and res.type.dtype == k.dtypes[2]), None)
    if kind is None:
        return None
    M, N = res.type.shape
    K = a.type.shape[1]
    if M % MMA_M or N % MMA_N or K % kind.k or threads % 32:
        return None
    warps, tm, tn = threads // 32, M // MMA_M, N // MMA_N
    best = None
    for wm in range(1, warps + 1):
        wn = warps // wm
        if warps % wm or tm % wm or tn % wn:
            continue
        # squarest warp tile (fewest loads); of two as square, the wider: more of a warp's
        # B values are one contiguous run of columns (the mma packing's 64-column tiles)
        score = (abs(tm // wm * MMA_M - tn // wn * MMA_N), -(tn // wn))
        if best is None or score < best[0]:
            best = (score, wm, wn)
    return None if best is None else Tiling(M, N, K, best[1], best[2], kind)


def thread_coords(tv: TVLayout, tid: str) -> tuple[str, ...]:
    """Per tile dim, the expression of `tid`'s coordinate at register 0."""
    strides, dim_of = {}, {}
    for d, group in enumerate(tv.dim_modes):
        for k, m in enumerate(group):
            inner = 1
            for n in group[k + 1:]:
                inner *= tv.mode_shape[n]
            strides[m], dim_of[m] = inner, d
    terms: list[list[str]] = [[] for _ in tv.shape]
    shape = tv.thread_shape
    for p, m in enumerate(tv.spatial_modes):
        if m < 0 or shape[p] == 1:
            continue
        below = 1
        for s in shape[p + 1:]:
            below *= s
        digit = tid if below == 1 else f"({tid} // {below})"
        if p > 0:  # the outermost digit needs no modulo: tid < num_threads
            digit = f"({digit} % {shape[p]})"
        terms[dim_of[m]].append(digit if strides[m] == 1 else f"{digit} * {strides[m]}")
    return tuple(" + ".join(t) or "0" for t in terms)


def separable(tv: TVLayout) -> bool:
    """coord(t, v) == coord(t, 0) + coord(0, v) for every thread and register (true of
    Kronecker products of spatial and local pieces; checked, not assumed)."""
    base = [tv(t, 0) for t in range(tv.num_threads)]
    offs = [tv(0, v) for v in range(tv.num_values)]
    return all(tv(t, v) == tuple(x + y for x, y in zip(base[t], offs[v], strict=True))
               for t in range(tv.num_threads) for v in range(tv.num_values))


def _register(ctx, v, kind: Kind, idxs: list) -> str:
    """kind.per_reg elements of v as one 32-bit register (the first in the low bits)."""
    width = 32 // kind.per_reg
    parts = []
    for n, idx in enumerate(idxs):
        bits = kind.bits.format(x=ctx.elem(v, idx))
        parts.append(bits if n == 0 else f"({bits} << U32({n * width}))")
    return ctx.src.tmp(" | ".join(parts), "w")


def render_mma_dot(ctx, op, tiling: Tiling, out, frag=None) -> None:
    """Emit the dot: accumulators in registers, one mma per 16 x 8 tile per K step; written
    to the shared tile `out` after, or with `frag` (mma_registers.Frag) left in registers:
    element frag.idxs[v] of the result is accumulator v."""
    a, b, c = op.operands
    la, lb, lc = tiling.layouts()
    for tv in (la, lb, lc):
        if not separable(tv):  # a layout the base + offset code cannot express
            raise AssertionError(f"cuda: mma layout {tv} is not separable (a compiler bug)")
    src = ctx.src
    ctx.uses_mma = True
    with ctx.scope():
        kind = tiling.kind
        va, vb = la.num_values // tiling.TM, lb.num_values // tiling.TN  # values per tile
        lda = ldmatrix_rows(ctx, a, la, tiling.TM, va, ctx.threads, 1)
        ldb = ldmatrix_rows(ctx, b, lb, tiling.TN, vb, ctx.threads, 0)
        ar, ac = (src.tmp(e, "fa") for e in thread_coords(la, "tid"))
        br, bc = (src.tmp(e, "fb") for e in thread_coords(lb, "tid"))
        cr, cc = (src.tmp(e, "fc") for e in thread_coords(lc, "tid"))

        accs = []
        for v in range(lc.num_values):
            idx = _at(src, (cr, cc), lc(0, v)) if frag is None else frag.idxs[v]
            accs.append((idx, src.tmp(f"{kind.acc}({ctx.elem(c, idx)})", "acc")))
        opa, opb = (a, la, va, (ar, ac), lda), (b, lb, vb, (br, bc), ldb)
        full = None if _mma_packed(ctx, b) else inside_condition(ctx, b)
        if _mma_packed(ctx, b):
            _packed_k_loops(ctx, tiling, opa, opb, accs)
        elif full is None:
            _k_loop(ctx, tiling, opa, opb, accs, False)
        else:  # the steady state without bounds checks; edge tiles keep them
            with src.block(f"if {full}:"):
                _k_loop(ctx, tiling, opa, opb, accs, True)
            with src.block("else:"):
                _k_loop(ctx, tiling, opa, opb, accs, False)
        if frag is not None:
            frag.bind(ctx, op.results[0], [name for _, name in accs])
            return
        for idx, name in accs:
            src.line(f"{ctx.addr(out, idx)} = {name}")


def _mma_packed(ctx, b) -> bool:
    """B is read from a param in the mma packing (`mma_packed.mma_packings`)."""
    found = word_leaf(ctx, b, any_width=True)
    return found is not None and found[1].mma is not None


def _packed_k_loops(ctx, tiling: Tiling, opa, opb, accs) -> None:
    """B from the mma packing: the steady K loop (aligned window inside the words: 128-bit
    loads, `unroll` K steps per iteration) and the edge loop (code by code, checked)."""
    src, b, bbase = ctx.src, opb[0], opb[3]
    steady = PackedB(ctx, b, tiling, True)
    with src.block(f"if {steady.condition()}:"):
        steady.setup(bbase[1])
        _k_loop(ctx, tiling, opa, opb, accs, False, steady)
    with src.block("else:"):
        _k_loop(ctx, tiling, opa, opb, accs, False, PackedB(ctx, b, tiling, False))


def _k_loop(ctx, tiling: Tiling, opa, opb, accs, inside: bool, packed=None) -> None:
    """The K loop: per K step the fragments of A and B, then TM x TN mma. `inside`: B's
    codes tile is known to lie inside its tensor (`inside_condition`); `packed`: B read
    from the mma packing (`mma_packed.PackedB`, `packed.unroll` K steps per iteration)."""
    src, kind = ctx.src, tiling.kind
    ks = src.fresh("ks")
    steps = packed.unroll if packed is not None else 1
    src.line(f"{ks} = 0")
    bound = str(tiling.K)
    if packed is not None and packed.steady:  # rolled: one iteration is the steady state
        bound = packed.k_bound(tiling.K)
    with src.block(f"while {ks} < {bound}:"), ctx.scope():
        a, la, va, abase, lda = opa
        b, lb, vb, bbase, ldb = opb
        if packed is not None and packed.steady:
            packed.load(ks)
        for u in range(steps):
            ku = f"({ks} + {kind.k * u})" if u else ks
            afrag = [_fragment(ctx, a, la, kind, t, va, abase, ku, 1, lda)
                     for t in range(tiling.TM)]
            bfrag = [_fragment(ctx, b, lb, kind, t, vb, bbase, ku, 0, ldb, inside, (packed, u))
                     for t in range(tiling.TN)]
            for i in range(tiling.TM):
                for j in range(tiling.TN):
                    tile = accs[(i * tiling.TN + j) * 4:(i * tiling.TN + j + 1) * 4]
                    names = ", ".join(n for _, n in tile)
                    args = ", ".join(afrag[i] + bfrag[j]) + ", " + names
                    src.line(f"{names} = {kind.fn}({args})")
        src.line(f"{ks} += {kind.k * steps}")


def _at(src, base: tuple[str, str], off: tuple[int, int], k: str = "", kdim: int = -1):
    """Names of base + off (+ k along kdim)."""
    out = []
    for d, (b, o) in enumerate(zip(base, off, strict=True)):
        e = b if o == 0 else f"{b} + {o}"
        out.append(src.tmp(f"{e} + {k}" if d == kdim else e, "q"))
    return tuple(out)


def _fragment(ctx, v, tv: TVLayout, kind: Kind, t: int, per_tile: int, base, ks: str,
              kdim: int, rows, inside: bool = False, packed=(None, 0)) -> list[str]:
    """Tile t's registers of operand v (as uint32): one ldmatrix when `rows` (from
    `ldmatrix_rows`) says the buffer allows it, else element reads (`inside`: weights read
    by word without bounds checks, `codes_by_word`; `packed`: (PackedB, K step of the
    iteration) for weights in the mma packing)."""
    nregs = per_tile // kind.per_reg
    if rows is not None:
        buf, index, offsets, kstride, starts = rows
        if starts is not None:  # the swizzled row of k = ks: the tile's k = 0 row ^ ks
            at = f"{starts[t]} ^ ({ks} * {kstride})"
        else:
            at = f"{index} + {offsets[t]}" if offsets[t] else index
            at = swizzle_expr(ctx.src, f"{at} + {ks} * {kstride}", buf.swizzle)
            at = f"{buf.base} + {at}" if buf.base else at
        words = ctx.src.tmp(f"ldmatrix_x{nregs}({buf.name}, U32({at}))", "lm")
        return [f"{words}[{r}]" for r in range(nregs)]
    regs = []
    for r in range(nregs):
        first = t * per_tile + kind.per_reg * r
        idxs = [_at(ctx.src, base, tv(0, first + h), ks, kdim) for h in range(kind.per_reg)]
        direct = None
        if kdim == 0 and packed[0] is not None:
            direct = packed[0].register(idxs, packed[1], t, r)
        elif kdim == 0:
            offs = [tv(0, first + h) for h in range(kind.per_reg)]
            k0 = (base[0], offs[0][0]) if inside else None
            direct = codes_by_word(ctx, v, offs, idxs, k0, ks)
        regs.append(direct or _register(ctx, v, kind, idxs))
    return regs


def shared_source(ctx, v):
    """(buffer, transposed) when v is a 2-D f16 or bf16 shared buffer or its transpose whose rows
    are 16-byte aligned (what ldmatrix reads), else None."""
    buf, transposed = ctx.bufs.get(v.id), False
    if buf is None:
        op = ctx.lazy.get(v.id)
        if op is None or op.opcode != "transpose" or tuple(op.attrs.perm) != (1, 0):
            return None
        buf, transposed = ctx.bufs.get(op.operands[0].id), True
    if (buf is None or buf.dtype not in ("f16", "bf16") or len(buf.shape) != 2
            or (buf.swizzle is not None and buf.swizzle[1] < 3)):
        return None  # (a swizzle moving whole 8-half rows keeps ldmatrix's 16-byte rows)
    return (buf, transposed) if buf.strides()[0] % 8 == 0 else None


def ldmatrix_rows(ctx, v, tv: TVLayout, tiles: int, per_tile: int, threads: int, kdim: int):
    """When every register of v's fragments is an 8 x 8 matrix of a shared buffer as ldmatrix
    leaves it (checked for every thread against `ldmatrix_dst`), the row each thread supplies:
    (buffer, name of its element index for tile 0 at k = 0, per-tile constant offsets, the
    element stride of K, the operand's dim `kdim`). None otherwise (the fragment is read
    element by element)."""
    found = shared_source(ctx, v)
    if found is None:
        return None
    buf, transposed = found
    stride = buf.strides()[0]
    nregs = per_tile // 2

    def coord(tid: int, value: int) -> tuple[int, int]:
        r, c = tv(tid, value)
        return (c, r) if transposed else (r, c)

    def supplied(tid: int, t: int) -> int:  # element index of the row `tid` gives ldmatrix
        lane = tid % 32
        r, c = coord(tid - lane + 4 * (lane % 8), t * per_tile + 2 * ((lane // 8) % nregs))
        return r * stride + c

    for tid in range(threads):
        lane = tid % 32
        for t in range(tiles):
            for reg in range(nregs):
                start = coord(tid - lane + 4 * (lane // 4), t * per_tile + 2 * reg)
                for h in (0, 1):
                    want = (start[0], start[1] + 2 * (lane % 4) + h)
                    if coord(tid, t * per_tile + 2 * reg + h) != want:
                        return None
    index = bit_linear([supplied(tid, 0) for tid in range(threads)], "tid")
    offsets = [supplied(0, t) - supplied(0, 0) for t in range(tiles)]
    if index is None or any(supplied(tid, t) - supplied(tid, 0) != offsets[t]
                            for tid in range(threads) for t in range(tiles)):
        return None
    kstride = 1 if (1 - kdim if transposed else kdim) == 1 else stride  # elements per k
    index = ctx.src.tmp(index, "li")
    if buf.swizzle is None:
        return buf, index, offsets, kstride, None
    ks_steps = range(0, v.type.shape[kdim], 16 if kstride == 1 else 1)
    if not _xor_steps(buf, [supplied(tid, t) for tid in range(threads) for t in range(tiles)],
                      [k * kstride for k in ks_steps]):
        return buf, index, offsets, kstride, None  # (the swizzle per k step)
    starts = []
    for t in range(tiles):
        at = swizzle_expr(ctx.src, f"{index} + {offsets[t]}" if offsets[t] else index,
                          buf.swizzle)
        starts.append(ctx.src.tmp(f"{buf.base} + {at}" if buf.base else at, "ls"))
    return buf, index, offsets, kstride, starts


def _xor_steps(buf, rows: list[int], steps: list[int]) -> bool:
    """Every row's swizzled offset at k step d is its offset at k = 0 xor d (so one LOP3 per
    ldmatrix), also after a stage base that is a multiple of the power-of-two tile size."""
    size = buf.shape[0] * buf.strides()[0]
    if size & (size - 1) or any(d >= size for d in steps):
        return False
    return all(swizzle_offset(r + d, buf.swizzle) == swizzle_offset(r, buf.swizzle) ^ d
               for r in rows for d in steps)


def bit_linear(values: list[int], name: str) -> str | None:
    """An expression of `name` (0 <= name < len(values), a power of two) equal to values[name]
    when values is a sum of per-bit constants; None otherwise."""
    n = len(values)
    bits = n.bit_length() - 1
    if 1 << bits != n:
        return None
    per_bit = [values[1 << b] - values[0] for b in range(bits)]
    for x in range(n):
        if values[x] != values[0] + sum(per_bit[b] for b in range(bits) if x >> b & 1):
            return None
    terms, b = [str(values[0])] if values[0] else [], 0
    while b < bits:
        if per_bit[b] == 0:
            b += 1
            continue
        e = b + 1  # a run of bits whose constants double: one mask and one multiply
        while e < bits and per_bit[e] == 2 * per_bit[e - 1]:
            e += 1
        field = f"(({name} >> {b}) & {(1 << (e - b)) - 1})" if b else f"({name} & {(1 << e) - 1})"
        terms.append(field if per_bit[b] == 1 else f"{field} * {per_bit[b]}")
        b = e
    return " + ".join(terms) or "0"
