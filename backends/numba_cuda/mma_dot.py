"""`dot` on tensor cores: a dot of f16 tiles into an f32 accumulator becomes
`mma.sync.aligned.m16n8k16` (PTX ISA 9.7.14.5.8) when the block's warps tile its output.

Which thread holds which element is not written here: the operands' thread-value layouts
are the m16n8k16 fragments of `lowbitc.layout.mma` composed (Kronecker product) with the
block's warp tiling,

    C [M, N]  = local(TM, TN) * spatial(WM, WN)             * mma_c   (warp w = wi * WN + wj)
    A [M, 16] = local(TM, 1)  * spatial(WM, 1) * repl(WN)    * mma_a   (one K step)
    B [16, N] = local(1, TN)  * repl(WM) * spatial(1, WN)    * mma_b

and the renderer turns each layout into the thread's base coordinate (an expression of the
thread id, from the layout's spatial modes) plus a constant offset per register (its local
modes). The warp grid is the squarest WM x WN that divides the tile grid.

The dot is taken off this path (the SIMT dot of `statements.py` runs instead) when an operand
is not f16 or the accumulator not f32, M, N, K are not multiples of 16, 8, 16, the block is
not whole warps, or the warps cannot share the 16 x 8 tiles evenly (every warp issues the
same number of mma).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.layout.mma import mma_m16n8k16_a, mma_m16n8k16_b, mma_m16n8k16_c
from lowbitc.layout.tv import TVLayout, local, replicated, spatial

MMA_IMPORT = "from lowbitc.backends.numba_cuda.tensorcore import mma_f16"
MMA_M, MMA_N, MMA_K = 16, 8, 16


@dataclass(frozen=True)
class Tiling:
    """Warp grid WM x WN over an [M, N] output, TM x TN mma tiles per warp."""

    M: int
    N: int
    K: int
    WM: int
    WN: int

    @property
    def TM(self) -> int:
        return self.M // MMA_M // self.WM

    @property
    def TN(self) -> int:
        return self.N // MMA_N // self.WN

    def layouts(self) -> tuple[TVLayout, TVLayout, TVLayout]:
        """(A per K step, B per K step, C) thread-value layouts of the block."""
        a = local(self.TM, 1) * spatial(self.WM, 1) * replicated(self.WN, 2) * mma_m16n8k16_a()
        b = local(1, self.TN) * replicated(self.WM, 2) * spatial(1, self.WN) * mma_m16n8k16_b()
        c = local(self.TM, self.TN) * spatial(self.WM, self.WN) * mma_m16n8k16_c()
        return a, b, c


def mma_tiling(op, threads: int) -> Tiling | None:
    """The warp tiling when `op` (a dot) takes the mma path, else None (see module doc)."""
    a, b, c = op.operands
    res = op.results[0]
    if (a.type.dtype, b.type.dtype, c.type.dtype, res.type.dtype) != ("f16", "f16", "f32",
                                                                       "f32"):
        return None
    M, N = res.type.shape
    K = a.type.shape[1]
    if M % MMA_M or N % MMA_N or K % MMA_K or threads % 32:
        return None
    warps, tm, tn = threads // 32, M // MMA_M, N // MMA_N
    best = None
    for wm in range(1, warps + 1):
        wn = warps // wm
        if warps % wm or tm % wm or tn % wn:
            continue
        score = abs(tm // wm * MMA_M - tn // wn * MMA_N)  # squarest warp tile: fewest loads
        if best is None or score < best[0]:
            best = (score, wm, wn)
    return None if best is None else Tiling(M, N, K, best[1], best[2])


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


def _pair(ctx, v, lo: tuple[str, str], hi: tuple[str, str]) -> str:
    """Two f16 elements of v as one f16x2 word (lo in the low half)."""
    x, y = ctx.elem(v, lo), ctx.elem(v, hi)
    return ctx.src.tmp(f"U32(u16_from_f16({x})) | (U32(u16_from_f16({y})) << U32(16))", "w")


def render_mma_dot(ctx, op, tiling: Tiling, out) -> None:
    """Emit the dot: accumulators in registers, one mma per 16 x 8 tile per K step of 16."""
    a, b, c = op.operands
    la, lb, lc = tiling.layouts()
    for tv in (la, lb, lc):
        if not separable(tv):  # a layout the base + offset code cannot express
            raise AssertionError(f"cuda: mma layout {tv} is not separable (a compiler bug)")
    src = ctx.src
    ctx.uses_mma = True
    with ctx.scope():
        ar, ac = (src.tmp(e, "fa") for e in thread_coords(la, "tid"))
        br, bc = (src.tmp(e, "fb") for e in thread_coords(lb, "tid"))
        cr, cc = (src.tmp(e, "fc") for e in thread_coords(lc, "tid"))

        def at(base: tuple[str, str], off: tuple[int, int], k: str = "", kdim: int = -1):
            out_ = []
            for d, (b_, o) in enumerate(zip(base, off, strict=True)):
                e = b_ if o == 0 else f"{b_} + {o}"
                if d == kdim:
                    e = f"{e} + {k}"
                out_.append(src.tmp(e, "q"))
            return tuple(out_)

        accs = []
        for v in range(lc.num_values):
            idx = at((cr, cc), lc(0, v))
            accs.append((idx, src.tmp(f"F32({ctx.elem(c, idx)})", "acc")))
        ks = src.fresh("ks")
        src.line(f"{ks} = 0")
        with src.block(f"while {ks} < {tiling.K}:"), ctx.scope():
            afrag = []
            for t in range(tiling.TM):
                regs = []
                for r in range(4):
                    lo, hi = (at((ar, ac), la(0, t * 8 + 2 * r + h), ks, 1) for h in (0, 1))
                    regs.append(_pair(ctx, a, lo, hi))
                afrag.append(regs)
            bfrag = []
            for t in range(tiling.TN):
                regs = []
                for r in range(2):
                    lo, hi = (at((br, bc), lb(0, t * 4 + 2 * r + h), ks, 0) for h in (0, 1))
                    regs.append(_pair(ctx, b, lo, hi))
                bfrag.append(regs)
            for i in range(tiling.TM):
                for j in range(tiling.TN):
                    tile = accs[(i * tiling.TN + j) * 4:(i * tiling.TN + j + 1) * 4]
                    names = ", ".join(n for _, n in tile)
                    args = ", ".join(afrag[i] + bfrag[j]) + ", " + names
                    src.line(f"{names} = mma_f16({args})")
            src.line(f"{ks} += {MMA_K}")
        for idx, name in accs:
            src.line(f"{ctx.addr(out, idx)} = {name}")
