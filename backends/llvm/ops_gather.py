"""LLVM handler for `gather`: a load whose index along one dim is an integer tile
(`load(s[g, n :+ BN])` with `g = load(g_idx[k :+ BK])`), from a tensor or a shared tile:
each index row is a window of the other dims, copied as rows of the last dim (vector moves)
when it lies inside the tensor, read element by element (0 outside the tensor) at the
edges."""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import MEMTYPE, Buf
from lowbitc.backends.llvm.handlers import Env, TensorArg, const_literal, convert, handles
from lowbitc.backends.llvm.windows import in_bounds, read_element, row_start, window_index
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Op
from lowbitc.ir.types import TensorType, is_signed_int

BYTES = {"i8": 1, "i16": 2, "i32": 4, "i64": 8, "half": 2, "bfloat": 2, "float": 4, "double": 8}


def index_row(env: Env, op: Op, i: str) -> str:
    """Entry i of the gather's index tile as an i64 (sign- or zero-extended)."""
    idx = env.get(op.operands[1])
    dt = op.operands[1].type.dtype
    v = env.em.load_elem(idx, i)
    return v if dt in ("i64", "u64") else convert(env.em, v, dt, "i64") if is_signed_int(dt) \
        else env.em.val(f"zext {MEMTYPE[dt]} {v} to i64")


def gather_starts(env: Env, op: Op, row: str) -> tuple[list[str], tuple[int, ...]]:
    """The starts and sizes of index row `row`'s window (the gathered dim a single index)."""
    others = iter(env.get(v) for v in op.operands[2:])
    ax = op.attrs.axis
    starts = [row if d == ax else next(others) for d in range(len(op.attrs.sizes))]
    sizes = tuple(0 if d == ax else s for d, s in enumerate(op.attrs.sizes))
    return starts, sizes


@handles("gather")
def _gather(env: Env, op: Op) -> None:
    em = env.em
    t = env.get(op.operands[0])
    if isinstance(t, Buf):  # a shared tile: addressed as a tensor of static dims
        t = TensorArg(t.ptr, TensorType(t.dtype, t.shape), [str(d) for d in t.shape],
                      [str(s) for s in t.strides])
    t.ensure_strides(em)
    out = env.result_buf(op)
    ax, sizes = op.attrs.axis, op.attrs.sizes
    pos = sum(1 for s in sizes[:ax] if s)  # the index's dim in the result
    sub = tuple(s for d, s in enumerate(sizes) if s and d != ax)
    dt = op.results[0].type.dtype
    zero = const_literal(em, 0, dt) if dt != "bool" else "false"
    rows_fast = pos == 0 and sizes[-1] > 0 and ax != len(sizes) - 1 and dt != "bool"
    sub_size = 1
    for s in sub:
        sub_size *= s
    name = subject_of(op.operands[0])
    if rows_fast:
        note("load", name, "row gather (each index's window copied as rows: vector moves "
             "along the last dim)", "windows at the edges read element by element", loc=op.loc)
    else:
        note("load", name, "per-element reads", "the gathered dim is not the first of the tile "
             "or the window's last dim is indexed", fallback=True, loc=op.loc)

    def one(i: str) -> None:
        starts, wsizes = gather_starts(env, op, index_row(env, op, i))

        def element(idx: list[str]) -> None:
            clamped, ok = window_index(env, op, t, starts, wsizes, idx, False)
            v = em.val(f"select i1 {ok}, {MEMTYPE[dt] if dt != 'bool' else 'i1'} "
                       f"{read_element(env, t, clamped)}, {MEMTYPE[dt] if dt != 'bool' else 'i1'} "
                       f"{zero}")
            full = idx[:pos] + [i] + idx[pos:]
            em.store_elem(out, em.flat_index(full, out.shape), v)

        if not rows_fast:
            em.nest(sub, element)
            return
        fast, slow, done = em.label("ginb"), em.label("gedge"), em.label("gdone")
        em.emit(f"br i1 {in_bounds(em, t, starts, wsizes)}, label %{fast}, label %{slow}")
        em.start_block(fast)
        nbytes = sub[-1] * BYTES[MEMTYPE[dt]]

        def row(idx: list[str]) -> None:
            src = row_start(env, t, starts, wsizes, idx)
            base = em.val(f"mul i64 {i}, {sub_size}")
            at = em.val(f"add i64 {base}, {em.flat_index(list(idx) + ['0'], sub)}")
            em.memcpy(em.gep(out, at), src, nbytes, 1)

        em.nest(sub[:-1], row)
        em.br(done)
        em.start_block(slow)
        em.nest(sub, element)
        em.br(done)
        em.start_block(done)

    em.loop("0", str(op.attrs.sizes[ax]), one)
