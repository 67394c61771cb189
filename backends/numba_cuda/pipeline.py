"""Operands in flight: the activation tile of a K loop copied global -> shared by 16-byte
`cp.async` in a software pipeline of S stages (the loop's `range(..., stages=S)`, else
`STAGES`), into a swizzled tile that `ldmatrix` reads. Derived from the kernel, not from its
name:

A `load` at the top level of a `for` body is staged when it reads a 2-D window of an f16 or
bf16 kernel tensor, the plan keeps it in shared memory, it is the A operand of a dot on tensor
cores, its rows are whole 16-byte chunks (BK % 8 == 0), it is unmasked or masked by an edge
mask `arange(BK) + k < lim` (or `<=`) along its columns, and its window starts and mask bounds
are scalars of the loop index and values defined before the loop (not loop-carried ones), and
the kernel never stores to that tensor. The loop then runs as

    prologue: fill stages 0 .. S-2 (iterations lo, lo + step, ...), commit after each
    each iteration j:  wait_group(S - 2); syncthreads
                       fill stage (j + S - 1) % S with iteration j + S - 1; commit
                       the body, reading the tile from stage j % S

wait_group(S - 2) leaves at most S - 2 of this thread's groups in flight, so iteration j's
copies are done; the barrier makes every thread's copies visible and orders the fill of
stage (j - 1) % S after every thread's reads of it in iteration j - 1. A fill is 16-byte
`cp_async16_zfill`s (src-size = the bytes inside the tensor and the mask, zeros past them)
when the tensor's first element and rows are 16-byte aligned and the window starts on a
chunk; otherwise (rows of K % 8 != 0 halves, a misaligned array) element by element.

The stage tile's swizzle (`stage_swizzle`) is the first CuTe Swizzle<b, 3, s> (16-byte chunks
stay whole) under which every warp's cp.async stores and ldmatrix reads are free of bank
conflicts, evaluated with `layout.banks` over the fragment layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from lowbitc.backends.numba_cuda.buffers import Buf, swizzle_expr, swizzle_offset
from lowbitc.backends.numba_cuda.mma_dot import Tiling, mma_tiling
from lowbitc.ir.core import Op, Value, walk
from lowbitc.ir.types import ScalarType, TensorType
from lowbitc.layout.banks import WARP, ldmatrix_access, warp_access

STAGES = 3  # default stages of the activation pipeline (cp.async groups in flight: S - 1)
CHUNK = 8  # halves per 16-byte copy
_NOT_PURE = frozenset({"load", "load_codes", "load_shared", "dot", "reduce", "for", "if",
                       "store", "store_shared", "store_codes", "alloc_shared", "sync"})


@dataclass(frozen=True)
class Staged:
    """A staged load: the op, the body ops its window needs (in order), the edge mask's
    (k, lim, inclusive) or None, the tile's swizzle and the dot's tiling."""

    load: Op
    slice: tuple[Op, ...]
    limit: tuple[Value, Value, bool] | None
    swizzle: tuple[int, int, int] | None
    tiling: Tiling


def staged_loads(ctx, for_op: Op) -> list[Staged]:
    """The loads of `for_op`'s body that take the pipeline (module doc)."""
    body = for_op.regions[0]
    local = {r.id: op for op in body.ops for r in op.results}
    carried = {a.id for a in body.args[1:]}  # unknown for a later iteration
    stored = {op.operands[0].id for op in walk(ctx.k.body.ops)
              if op.opcode in ("store", "store_codes")}
    params = {p.id for p in ctx.k.params} - stored  # (a copy ahead must not pass a store)
    out = []
    for op in body.ops:
        res = op.results[0] if op.results else None
        if op.opcode != "load" or res is None or res.id not in ctx.plan.materialize:
            continue
        x = op.operands[0]
        if (x.id not in params or not isinstance(x.type, TensorType)
                or x.type.dtype not in ("f16", "bf16") or len(x.type.shape) != 2):
            continue
        bm, bk = op.attrs.sizes
        if bm <= 0 or bk <= 0 or bk % CHUNK:
            continue
        tiling = next((mma_tiling(d, ctx.threads) for d in walk(body.ops)
                       if d.opcode == "dot" and d.operands[0] is res), None)
        if tiling is None:
            continue
        limit = _edge_mask(op.operands[-1], bk, ctx.defs) if op.attrs.masked else None
        if op.attrs.masked and limit is None:
            continue
        ops = _slice(op.operands[1:], local, carried)
        sw = stage_swizzle(bm, bk, tiling, ctx.threads)
        if ops is None or sw is False:
            continue
        out.append(Staged(op, ops, limit, sw, tiling))
    return out


def _edge_mask(m: Value, bk: int, defs: dict):
    """(k, lim, inclusive) when m is `reshape(arange(bk) + k < lim, [1, bk])` (or without the
    reshape to [bk], or `<=`) with scalar k and lim; else None."""
    d = defs.get(m.id)
    if d is not None and d.opcode == "reshape" and tuple(d.results[0].type.shape) == (1, bk):
        m, d = d.operands[0], defs.get(d.operands[0].id)
    if d is None or d.opcode not in ("lt", "le") or tuple(m.type.shape) != (bk,):
        return None
    x, lim = d.operands
    add = defs.get(x.id)
    if not isinstance(lim.type, ScalarType) or add is None or add.opcode != "add":
        return None
    ar, k = add.operands
    if isinstance(ar.type, ScalarType):
        ar, k = k, ar
    ar_op = defs.get(ar.id)
    if (ar_op is None or ar_op.opcode != "arange" or ar_op.attrs.n != bk
            or not isinstance(k.type, ScalarType)):
        return None
    return k, lim, d.opcode == "le"


def _slice(values, local: dict, carried: set[int]) -> tuple[Op, ...] | None:
    """The body ops (in body order) that `values` depend on; None if one reads memory, has
    effects or reads a loop-carried value (it could not be recomputed for a later
    iteration)."""
    need, todo = set(), list(values)
    while todo:
        v = todo.pop()
        if v.id in carried:
            return None
        d = local.get(v.id)
        if d is None or id(d) in need:
            continue
        if d.opcode in _NOT_PURE or d.regions:
            return None
        need.add(id(d))
        todo.extend(d.operands)
    order = {id(op): i for i, op in enumerate(local.values())}
    return tuple(sorted((op for op in local.values() if id(op) in need),
                        key=lambda op: order[id(op)]))


@cache
def stage_swizzle(bm: int, bk: int, tiling: Tiling, threads: int):
    """The first swizzle (None, then Swizzle<b, 3, s>) under which the [bm, bk] half tile's
    cp.async stores and ldmatrix reads take one wavefront per phase; False if none does."""
    cands = [None] + [(b, 3, s) for b in (1, 2, 3) for s in range(b, 9)]
    for sw in cands:
        if sw is not None and (bm * bk) % (1 << (sum(sw))):
            continue  # the swizzle must permute the tile's offsets among themselves
        if _stores_free(bm, bk, sw, threads) and _ldmatrix_free(bk, tiling, sw, threads):
            return sw
    return False


def _stores_free(bm: int, bk: int, sw, threads: int) -> bool:
    chunks, per_row = bm * bk // CHUNK, bk // CHUNK
    for first in range(0, chunks, WARP):
        lanes = [first + lane for lane in range(WARP)]
        addrs = [2 * swizzle_offset(q // per_row * bk + q % per_row * CHUNK, sw)
                 if q < chunks else None for q in lanes]
        if warp_access(addrs, 16).conflicts:
            return False
    return True


def _ldmatrix_free(bk: int, tiling: Tiling, sw, threads: int) -> bool:
    la = tiling.layouts()[0]
    per_tile = la.num_values // tiling.TM
    nregs = per_tile // 2
    for warp in range(threads // WARP):
        for t in range(tiling.TM):
            for ks in range(0, bk, tiling.kind.k):
                addrs = []
                for lane in range(WARP):
                    tid = warp * WARP + lane
                    r, c = la(tid - lane + 4 * (lane % 8), t * per_tile + 2 * ((lane // 8) % nregs))
                    addrs.append(2 * swizzle_offset(r * bk + c + ks, sw))
                if ldmatrix_access(addrs, nregs).conflicts:
                    return False
    return True


class Pipeline:
    """Renders the pipelined loop's pieces (see the module doc) for the staged loads of one
    `for`; `statements._for` calls `prologue`, `advance` (top of each iteration), `drain`."""

    def __init__(self, ctx, for_op: Op, staged: list[Staged], lo: str, hi: str, step: str):
        self.ctx, self.op, self.staged = ctx, for_op, staged
        self.lo, self.hi, self.step = lo, hi, step
        self.stages = for_op.attrs.stages or STAGES
        src = ctx.src
        self.bufs = []
        for s in staged:
            bm, bk = s.load.attrs.sizes
            dtype = s.load.operands[0].type.dtype
            name = src.fresh("sp")
            ctx.shared.append((name, self.stages * bm * bk, "F16" if dtype == "f16" else "U16"))
            self.bufs.append((name, dtype, bm, bk))
        self.aligned = []
        for s in staged:  # block-uniform: cp.async needs 16-byte aligned rows
            t = ctx.tensor(s.load.operands[0])
            self.aligned.append(src.tmp(f"aligned16({t.name}) and {t.dims[1]} % {CHUNK} == 0",
                                        "al"))
        self.j = src.fresh("st")
        ctx.uses_mma = True

    def prologue(self) -> None:
        src = self.ctx.src
        for s in range(self.stages - 1):
            it = src.tmp(f"{self.lo} + {s} * {self.step}", "it")
            with src.block(f"if {it} < {self.hi}:"):
                self._fill(str(s), it)
            src.line("cp_async_commit()")
        src.line(f"{self.j} = 0")

    def advance(self, i: str) -> None:
        """Top of an iteration: wait for its stage, fill the stage S - 1 ahead, bind the
        loads to this iteration's stage."""
        ctx, src, S = self.ctx, self.ctx.src, self.stages
        src.line(f"cp_async_wait({S - 2})")
        src.synced = False
        src.sync()
        it = src.tmp(f"{i} + {S - 1} * {self.step}", "it")
        with src.block(f"if {it} < {self.hi}:"):
            self._fill(f"({self.j} + {S - 1}) % {S}", it)
        src.line("cp_async_commit()")
        stage = src.tmp(f"{self.j} % {S}", "sg")
        src.line(f"{self.j} += 1")
        for s, (name, dtype, bm, bk) in zip(self.staged, self.bufs, strict=True):
            base = src.tmp(f"{stage} * {bm * bk}", "so")
            ctx.staged[s.load.results[0].id] = Buf(name, dtype, (bm, bk), bk, s.swizzle, base)

    def drain(self) -> None:
        self.ctx.src.line("cp_async_wait(0)")
        for s in self.staged:
            self.ctx.staged.pop(s.load.results[0].id, None)

    def _fill(self, stage: str, it: str) -> None:
        """Copy iteration `it`'s windows into `stage`: the slice recomputed for `it`."""
        ctx = self.ctx
        arg = self.op.regions[0].args[0]
        saved = dict(ctx.scalars)
        lazy = dict(ctx.lazy)
        try:
            with ctx.scope():
                ctx.scalars[arg.id] = it
                done = set()
                for s, buf, al in zip(self.staged, self.bufs, self.aligned, strict=True):
                    for op in s.slice:
                        if id(op) not in done:
                            ctx.op(op)
                            done.add(id(op))
                    self._fill_one(s, buf, al, stage)
        finally:
            ctx.scalars.clear()
            ctx.scalars.update(saved)
            ctx.lazy.clear()
            ctx.lazy.update(lazy)

    def _fill_one(self, s: Staged, buf, aligned: str, stage: str) -> None:
        ctx, src = self.ctx, self.ctx.src
        name, _dtype, bm, bk = buf
        load = s.load
        t = ctx.tensor(load.operands[0])
        r0, c0 = (ctx.elem(v, ()) for v in load.operands[1:3])
        base = src.tmp(f"({stage}) * {bm * bk}", "so")
        with src.block(f"if {aligned} and {c0} % {CHUNK} == 0 and {c0} >= 0:"):
            lim = t.dims[1]
            if s.limit is not None:
                k, bound, inclusive = s.limit
                edge = f"{ctx.elem(bound, ())} - {ctx.elem(k, ())} + {c0}"
                lim = src.tmp(f"min({t.dims[1]}, {edge}{' + 1' if inclusive else ''})", "lim")
            q = src.fresh("q")
            src.line(f"{q} = tid")
            with src.block(f"while {q} < {bm * bk // CHUNK}:"):
                per_row = bk // CHUNK
                r = src.tmp(f"{q} // {per_row}", "r")
                c = src.tmp(f"({q} - {r} * {per_row}) * {CHUNK}", "c")
                gr = src.tmp(f"{r0} + {r}", "g")
                gc = src.tmp(f"{c0} + {c}", "g")
                n = src.tmp(f"max(0, min({CHUNK}, {lim} - {gc})) if 0 <= {gr} < {t.dims[0]} "
                            "else 0", "n")
                at = src.tmp(f"{gr} * {t.dims[1]} + {gc} if {n} > 0 else 0", "ga")
                dst = swizzle_expr(src, f"{r} * {bk} + {c}", s.swizzle)
                src.line(f"cp_async16_zfill({name}, U32({base} + {dst}), {t.name}, U64({at}), "
                         f"U32(2 * {n}))")
                src.line(f"{q} += nthr")
        with src.block("else:"), ctx.scope():  # element by element (synchronous stores)
            res = load.results[0]
            ctx.lazy[res.id] = load
            e = src.fresh("e")
            src.line(f"{e} = tid")
            with src.block(f"while {e} < {bm * bk}:"), ctx.scope():
                r = src.tmp(f"{e} // {bk}", "r")
                c = src.tmp(f"{e} - {r} * {bk}", "c")
                x = ctx.elem(res, (r, c))
                dst = swizzle_expr(src, f"{r} * {bk} + {c}", s.swizzle)
                src.line(f"{name}[{base} + {dst}] = {x}")
                src.line(f"{e} += nthr")
            del ctx.lazy[res.id]
