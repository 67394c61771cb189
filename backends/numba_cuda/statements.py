"""Region-level handlers of the CUDA renderer: ops that are not per-element expressions
(block ids, stores, dot, reductions, loops, branches). Each gets the renderer and the op."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbitc.backends.numba_cuda.buffers import TensorRef
from lowbitc.backends.numba_cuda.elements import fail, shape_of
from lowbitc.backends.numba_cuda.halves import store_pairs
from lowbitc.backends.numba_cuda.mma_dot import mma_tiling, render_mma_dot
from lowbitc.backends.numba_cuda.mma_registers import Frag
from lowbitc.backends.numba_cuda.mma_stated import check_stated_layouts
from lowbitc.backends.numba_cuda.pipeline import Pipeline, staged_loads
from lowbitc.backends.numba_cuda.reduce_order import rotation
from lowbitc.backends.numba_cuda.source import literal, numba_type, size_of
from lowbitc.backends.numba_cuda.units import window_in_unit
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TileType, is_float, numpy_dtype

STATEMENTS: dict[str, Callable] = {}


def handles(*opcodes: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        for o in opcodes:
            STATEMENTS[o] = fn
        return fn
    return deco


@handles("block_id")
def _block_id(ctx, op: Op) -> None:
    axis = "xyz"[op.attrs.axis]
    ctx.scalars[op.results[0].id] = ctx.src.tmp(f"I64(cuda.blockIdx.{axis})", "b")


def store_operands(ctx, op: Op) -> tuple[TensorRef, list[str], Value, tuple[int, ...]]:
    """A store's tensor, window starts, stored value and element shape (stores of values and
    of codes, `encode.py`)."""
    a = op.attrs
    nstart = len(op.operands) - 2 - a.masked
    starts = [ctx.elem(v, ()) for v in op.operands[1:1 + nstart]]
    shape = tuple(s for s in a.sizes if s > 0)
    return ctx.tensor(op.operands[0]), starts, op.operands[1 + nstart], shape


def store_mask(ctx, op: Op, idx: tuple[str, ...], shape: tuple[int, ...]) -> list[str]:
    """The store mask's element at idx as a condition list (empty when unmasked)."""
    if not op.attrs.masked:
        return []
    m = op.operands[-1]
    return [ctx.elem(m, ctx.bcast(tuple(idx), shape, shape_of(m.type)))]


def each_element(ctx, shape: tuple[int, ...], body, values: tuple[Value, ...] = ()) -> None:
    """`body(idx, e)` for every element of a store (one thread for a scalar store)."""
    if shape:
        ctx.each(shape, body, values)
    else:
        with ctx.src.block("if tid == 0:"), ctx.scope():
            body((), "0")


@handles("store")
def _store(ctx, op: Op) -> None:
    a = op.attrs
    t, starts, value, shape = store_operands(ctx, op)
    if t.bits:
        raise fail(op, "stores to packed formats are not supported")

    def body(idx, e):
        where = window_in_unit(ctx, starts, a.sizes, idx, t.dims)
        conds = []
        if where is None:
            where, conds = ctx.window(starts, a.sizes, idx, t.dims)
        conds = store_mask(ctx, op, idx, shape) + conds
        vidx = ctx.bcast(idx, shape, shape_of(value.type))
        conds = [c for c in conds if c != "True"]
        if ctx.unit is not None:  # in a unit, row values (scales) are shared by its elements
            x = ctx.elem(value, vidx)
            if not conds:
                ctx.src.line(f"{t.name}[{', '.join(where)}] = {x}")
                return
            with ctx.src.block(f"if {' and '.join(conds)}:"):
                ctx.src.line(f"{t.name}[{', '.join(where)}] = {x}")
            return
        with ctx.src.block(f"if {' and '.join(conds) or 'True'}:"), ctx.scope():
            x = ctx.elem(value, vidx)
            ctx.src.line(f"{t.name}[{', '.join(where)}] = {x}")

    if shape and store_pairs(ctx, op, starts, body):
        return
    each_element(ctx, shape, body, (value,))


MAX_ACCUMULATORS = 16  # outputs one thread keeps in registers through a dot's K loop


@handles("dot")
def _dot(ctx, op: Op) -> None:
    """A K-long f32 (acc dtype) loop per output element. When the block's threads tile the
    output evenly, each thread keeps all its outputs in registers through one K loop, so an
    operand element shared by its outputs (a column of b, or a row of a) is read once; when
    there are fewer outputs than threads, K is split among threads (split_k)."""
    a, b, c = op.operands
    res = op.results[0]
    M, N = res.type.shape
    K = a.type.shape[1]
    R = numba_type(res.type.dtype)
    frag = ctx.frag_dots.get(id(op))
    if frag is not None:  # the result stays in C fragment registers (mma_registers)
        ctx.src.sync()
        render_mma_dot(ctx, op, frag.carried.tiling, None, frag)
        return
    cbuf = ctx.bufs.get(c.id)
    inplace = cbuf is not None and ctx.plan.uses[c.id] == 1 and cbuf.shape == (M, N)
    out = cbuf if inplace else ctx.alloc(res.type.dtype, (M, N))
    ctx.src.sync()
    tiling = mma_tiling(op, ctx.threads)
    if tiling is not None:
        check_stated_layouts(op, tiling, ctx.threads)
        render_mma_dot(ctx, op, tiling, out)
        ctx.src.sync()
        ctx.bufs[res.id] = out
        return
    owned = _owned_outputs(ctx, M, N)
    T = ctx.threads
    if owned is not None:
        with ctx.scope():
            _dot_outputs(ctx, op, owned(), out, R, K)
    elif M * N < T and T % (M * N) == 0 and T // (M * N) <= K:
        _dot_split_k(ctx, op, out, R, T // (M * N))
    else:
        ctx.each((M, N), lambda idx, e: _dot_outputs(ctx, op, [idx], out, R, K))
    ctx.src.sync()
    ctx.bufs[res.id] = out


def _dot_split_k(ctx, op: Op, out, R: str, parts: int) -> None:
    """Fewer outputs than threads (a GEMV tile): `parts` threads per output each sum every
    parts-th k into shared scratch, then one thread per output adds the parts and c."""
    a, b, c = op.operands
    M, N = op.results[0].type.shape
    K, outs = a.type.shape[1], M * N
    scratch = ctx.alloc(op.results[0].type.dtype, (parts, outs))
    src = ctx.src
    with ctx.scope():
        o = src.tmp(f"tid % {outs}", "o")
        part = src.tmp(f"tid // {outs}", "p")
        i = src.tmp(f"{o} // {N}", "i")
        j = src.tmp(f"{o} - {i} * {N}", "j")
        acc = src.tmp(f"{R}(0)", "acc")
        kk = src.fresh("k")
        src.line(f"{kk} = {part}")
        with src.block(f"while {kk} < {K}:"), ctx.scope():
            x, y = ctx.elem(a, (i, kk)), ctx.elem(b, (kk, j))
            src.line(f"{acc} = {R}({acc} + {R}({x}) * {R}({y}))")
            src.line(f"{kk} += {parts}")
        src.line(f"{ctx.addr(scratch, (part, o))} = {acc}")
    src.sync()
    with src.block(f"if tid < {outs}:"), ctx.scope():
        i = src.tmp(f"tid // {N}", "i")
        j = src.tmp(f"tid - {i} * {N}", "j")
        acc = src.tmp(f"{R}({ctx.elem(c, (i, j))})", "acc")
        for p in range(parts):
            src.line(f"{acc} = {R}({acc} + {ctx.addr(scratch, (str(p), 'tid'))})")
        src.line(f"{ctx.addr(out, (i, j))} = {acc}")


def _owned_outputs(ctx, M: int, N: int):
    """A function emitting the (row, column) names of the outputs each thread owns, when
    threads divide the output evenly (else None)."""
    T = ctx.threads
    if T % N == 0 and M % (T // N) == 0 and M // (T // N) <= MAX_ACCUMULATORS:
        step = T // N

        def rows_share_column():
            j = ctx.src.tmp(f"tid % {N}", "j")
            i0 = ctx.src.tmp(f"tid // {N}", "i")
            return [(i0 if t == 0 else ctx.src.tmp(f"{i0} + {t * step}", "i"), j)
                    for t in range(M // step)]

        return rows_share_column
    if N % T == 0 and M * (N // T) <= MAX_ACCUMULATORS:

        def columns_share_row():
            js = [ctx.src.tmp(f"tid + {s * T}", "j") for s in range(N // T)]
            return [(str(i), j) for i in range(M) for j in js]

        return columns_share_row
    return None


def _dot_outputs(ctx, op: Op, idxs: list, out, R: str, K: int) -> None:
    a, b, c = op.operands
    accs = [ctx.src.tmp(f"{R}({ctx.elem(c, idx)})", "acc") for idx in idxs]
    kk = ctx.src.fresh("k")
    ctx.src.line(f"{kk} = 0")
    with ctx.src.block(f"while {kk} < {K}:"), ctx.scope():
        for acc, (i, j) in zip(accs, idxs, strict=True):
            x, y = ctx.elem(a, (i, kk)), ctx.elem(b, (kk, j))
            ctx.src.line(f"{acc} = {R}({acc} + {R}({x}) * {R}({y}))")
        ctx.src.line(f"{kk} += 1")
    for acc, idx in zip(accs, idxs, strict=True):
        ctx.src.line(f"{ctx.addr(out, idx)} = {acc}")


def _identity(kind: str, dtype: str) -> str:
    if kind == "sum":
        return literal(0, dtype)
    if is_float(dtype):
        return literal(float("-inf") if kind == "max" else float("inf"), dtype)
    info = np.iinfo(numpy_dtype(dtype))
    return literal(int(info.min if kind == "max" else info.max), dtype)


@handles("reduce")
def _reduce(ctx, op: Op) -> None:
    src = op.operands[0]
    res = op.results[0]
    ax, kind, n = op.attrs.axis, op.attrs.kind, src.type.shape[op.attrs.axis]
    dt = res.type.dtype
    if dt == "bool":
        raise fail(op, "reductions of bool tiles are not supported")
    R = numba_type(dt)
    outputs = size_of(shape_of(res.type)) if isinstance(res.type, TileType) else 1
    per, rot = rotation(ctx, src, ax, outputs)  # conflict-free walk (reduce_order.py)

    def compute(idx: tuple[str, ...]) -> str:
        acc = ctx.src.tmp(_identity(kind, dt), "acc")
        r = ctx.src.fresh("r")
        start = ""
        if rot:  # (a row reduction of a 2-D tile: idx is the output row)
            row = idx[0] if per == 1 else f"{idx[0]} // {per}"
            start = ctx.src.tmp(f"({row} * {rot}) % {n}", "r0")
        ctx.src.line(f"{r} = 0")
        with ctx.src.block(f"while {r} < {n}:"), ctx.scope():
            at = r
            if rot:
                at = ctx.src.tmp(f"{r} + {start}", "rc")
                ctx.src.line(f"{at} = {at} - {n} if {at} >= {n} else {at}")
            x = ctx.elem(src, idx[:ax] + (at,) + idx[ax:])
            expr = f"{acc} + {x}" if kind == "sum" else f"{kind}({acc}, {x})"
            ctx.src.line(f"{acc} = {R}({expr})")
            ctx.src.line(f"{r} += 1")
        return acc

    if not isinstance(res.type, TileType):
        with ctx.scope():
            ctx.scalars[res.id] = compute(())
        return
    out = ctx.alloc(dt, res.type.shape)
    ctx.src.sync()
    ctx.each(res.type.shape,
             lambda idx, e: ctx.src.line(f"{ctx.addr(out, idx)} = {compute(idx)}"))
    ctx.src.sync()
    ctx.bufs[res.id] = out


# ---------------------------------------------------------------- control flow


def _targets(ctx, results: tuple[Value, ...], skip=()) -> list:
    return [None if i in skip else ctx.alloc(r.type.dtype, r.type.shape)
            if isinstance(r.type, TileType) else ctx.src.fresh("c")
            for i, r in enumerate(results)]


@handles("for")
def _for(ctx, op: Op) -> None:
    lo, hi, step = (ctx.elem(v, ()) for v in op.operands[:3])
    in_registers = ctx.register_carried.get(id(op), ())  # accumulators (mma_registers)
    carried = _targets(ctx, op.results, {c.index for c in in_registers})
    for c in in_registers:
        carried[c.index] = Frag(ctx, c, op.operands[3 + c.index])
        ctx.frag_dots.update(dict.fromkeys(c.dots, carried[c.index]))
    for x, init in zip(carried, op.operands[3:], strict=False):
        if isinstance(x, Frag):
            continue
        if isinstance(x, str):
            ctx.src.line(f"{x} = {ctx.elem(init, ())}")
        else:
            ctx.write(x, init)
    staged = staged_loads(ctx, op)
    pipe = Pipeline(ctx, op, staged, lo, hi, step) if staged else None
    if pipe is not None:  # activation tiles in flight (pipeline.py)
        pipe.prologue()
    i = ctx.src.fresh("i")
    ctx.src.line(f"{i} = {lo}")
    with ctx.src.block(f"while {i} < {hi}:"):
        if pipe is not None:
            pipe.advance(i)
        outs = ctx.region(op.regions[0], (i, *carried))
        update(ctx, carried, outs)
        ctx.src.line(f"{i} += {step}")
    if pipe is not None:
        pipe.drain()
    for r, x in zip(op.results, carried, strict=False):
        if isinstance(x, Frag):
            x.spill(ctx, r)
        else:
            ctx.bind(r, x)


@handles("if")
def _if(ctx, op: Op) -> None:
    cond = ctx.elem(op.operands[0], ())
    targets = _targets(ctx, op.results)
    for head, region in ((f"if {cond}:", op.regions[0]), ("else:", op.regions[1])):
        with ctx.src.block(head):
            outs = ctx.region(region)
            for x, v in zip(targets, outs, strict=False):
                if isinstance(x, str):
                    ctx.src.line(f"{x} = {ctx.elem(v, ())}")
                else:
                    ctx.write(x, v)
    for r, x in zip(op.results, targets, strict=False):
        ctx.bind(r, x)


def update(ctx, carried: list, outs: list[Value]) -> None:
    """Write a loop iteration's yields into the carried locals and buffers.

    A buffer is updated in place when its new value reads only itself at the same element
    and no buffer already updated; otherwise every new value goes to a staging buffer first.
    """
    for x, v in zip(carried, outs, strict=False):
        if isinstance(x, Frag):
            x.update(ctx, v)
    news = [(x, ctx.src.tmp(ctx.elem(v, ()), "n")) for x, v in zip(carried, outs, strict=False)
            if isinstance(x, str)]
    for x, n in news:
        ctx.src.line(f"{x} = {n}")
    pairs = [(x, v) for x, v in zip(carried, outs, strict=False)
             if not isinstance(x, (str, Frag)) and ctx.bufs.get(v.id) is not x]
    start = len(ctx.src.lines)
    written: set[str] = set()
    for buf, v in pairs:
        read, own = ctx.write(buf, v)
        if not own or read & written:
            break
        written.add(buf.name)
    else:
        return
    del ctx.src.lines[start:]
    ctx.src.synced = False
    staged = []
    for buf, v in pairs:
        tmp = ctx.alloc(buf.dtype, buf.shape)
        ctx.write(tmp, v)
        staged.append((buf, tmp))
    for buf, tmp in staged:
        ctx.src.fresh()
        fake = Value(-ctx.src.counter, TileType(buf.dtype, buf.shape))
        ctx.bufs[fake.id] = tmp
        ctx.write(buf, fake)
