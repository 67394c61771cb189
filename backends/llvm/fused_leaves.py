"""The leaves of a fused dequantization tree (fusion.py, axpy.py, panel.py) as <32 x T>
vectors: the scales, zero points and other tiles computed outside the tree, read for one row
of the codes and one step of 32 codes.

A tree may reshape the codes' row into groups and back (`reshape(c, [N, K / g, g])`, a scale
per group of g codes: `c * reshape(s, [N, K / g, 1])`; fusion_plan.row_spaces), so each leaf
is read in the shape of the op that consumes it. Element (row j, column 32c + l) of that shape
is at `base(j, c) + offset(l)` whenever unravelling a column never carries from the lane part
into the step part (lanes_split): then a leaf constant over the step is one load
and a splat (a group scale, g a multiple of 32), a contiguous run one vector load, a few
distinct elements one short load and a shuffle (g = 8, 16); other shapes load lane by lane.
"""

from __future__ import annotations

import math
from functools import cache

from lowbitc.backends.llvm.decode import gather
from lowbitc.backends.llvm.emitter import Buf, Emitter, lltype
from lowbitc.backends.llvm.handlers import Env, convert, vtype
from lowbitc.backends.llvm.ops_elementwise import broadcast_view, scalar_op
from lowbitc.backends.llvm.ops_lut import lut_global
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TileType

W = 32  # lanes of a fused step (fusion_plan.W)


def _unravel(f: int, dims: tuple[int, ...]) -> list[int]:
    out = []
    for d in reversed(dims):
        out.append(f % d)
        f //= d
    return out[::-1]


@cache
def lanes_split(dims: tuple[int, ...]) -> bool:
    """Whether every column 32c + l of a row of shape `dims` unravels to unravel(32c) +
    unravel(l) (no carry between a step's first column and its lanes)."""
    n = math.prod(dims)
    lanes = [_unravel(q, dims) for q in range(W)]
    for c0 in range(0, n, W):
        first = _unravel(c0, dims)
        for q in range(min(W, n - c0)):
            if _unravel(c0 + q, dims) != [a + b for a, b in zip(first, lanes[q])]:
                return False
    return True


def splat(em: Emitter, v: str, dtype: str, width: int = W) -> str:
    t = lltype(dtype)
    ins = em.val(f"insertelement <{width} x {t}> poison, {t} {v}, i64 0")
    return em.val(f"shufflevector <{width} x {t}> {ins}, <{width} x {t}> poison, "
                  f"<{width} x i32> zeroinitializer")


def leaf(env: Env, v: Value, shape: tuple[int, ...], j: str, c: str) -> str:
    """Leaf `v` as a <W x T> vector for row j, columns 32c .. 32c + 31 of `shape` (the shape
    of the op that reads it: the codes' window, or a grouping of its rows)."""
    em = env.em
    x = env.get(v)
    dt = v.type.dtype
    if not isinstance(x, Buf):
        return splat(em, x, dt)
    bv = broadcast_view(x, tuple(shape))
    dims, strides = bv.shape[1:], bv.strides[1:]
    base = em.val(f"mul i64 {j}, {bv.strides[0]}")
    if not lanes_split(dims):
        return _by_lane(em, bv, base, c)
    k0 = em.val(f"mul i64 {c}, {W}")
    base = em.val(f"add i64 {base}, {_dot_unravel(em, k0, dims, strides)}")
    offs = [sum(i * st for i, st in zip(_unravel(q, dims), strides)) for q in range(W)]
    return gathered(em, bv, base, offs)


def leaf_at(env: Env, v: Value, shape: tuple[int, ...], j: str, cols: list[int]) -> str:
    """Leaf `v` as a <len(cols) x T> vector of row j at the static columns `cols` of `shape`
    (the lanes forms, whose lanes are not consecutive columns)."""
    em = env.em
    x = env.get(v)
    if not isinstance(x, Buf):
        return splat(em, x, v.type.dtype, len(cols))
    bv = broadcast_view(x, tuple(shape))
    offs = [sum(i * st for i, st in zip(_unravel(q, bv.shape[1:]), bv.strides[1:]))
            for q in cols]
    return gathered(em, bv, em.val(f"mul i64 {j}, {bv.strides[0]}"), offs)


def word_invariant(v: Value, shape: tuple[int, ...], per: int) -> bool:
    """Whether leaf `v`, read in `shape`, is the same for the `per` columns of every word
    (a scale per group of a multiple of `per` columns, one per row, or a constant)."""
    if not isinstance(v.type, TileType):
        return True
    dims = tuple(shape[1:])
    own = (1,) * (len(shape) - len(v.type.shape)) + tuple(v.type.shape)

    def index(col: int) -> list[int]:
        return [i if d > 1 else 0 for i, d in zip(_unravel(col, dims), own[1:])]

    return all(index(col) == index(col - col % per) for col in range(math.prod(dims)))


def gathered(em: Emitter, bv: Buf, base: str, offs: list[int]) -> str:
    """<len(offs) x T> of elements base + offs[l]: a splat, a strided or contiguous run, a
    short contiguous load shuffled, or element by element."""
    width = len(offs)
    if all(o == offs[0] for o in offs):
        return splat(em, em.load_elem(bv, em.val(f"add i64 {base}, {offs[0]}")), bv.dtype,
                     width)
    step = offs[1] - offs[0]
    if all(o == offs[0] + q * step for q, o in enumerate(offs)):
        return vector_at(em, bv, em.val(f"add i64 {base}, {offs[0]}"), step, width)
    lo, hi = min(offs), max(offs)
    if bv.dtype != "bool" and hi - lo < width:
        t = f"<{hi - lo + 1} x {lltype(bv.dtype)}>"
        run = em.val(f"load {t}, ptr {em.gep(bv, em.val(f'add i64 {base}, {lo}'))}, align 4")
        mask = ", ".join(f"i32 {o - lo}" for o in offs)
        return em.val(f"shufflevector {t} {run}, {t} poison, <{width} x i32> <{mask}>")
    vec = "poison"
    for q, o in enumerate(offs):
        x = em.load_elem(bv, em.val(f"add i64 {base}, {o}"))
        vec = em.val(f"insertelement {vtype(bv.dtype, width)} {vec}, {lltype(bv.dtype)} {x}, "
                     f"i64 {q}")
    return vec


def _dot_unravel(em: Emitter, col: str, dims, strides) -> str:
    """unravel(col, dims) . strides at run time (col < prod(dims): the outermost coordinate
    needs no remainder)."""
    out, block = "0", 1
    for n, (d, st) in enumerate(zip(reversed(dims), reversed(strides))):
        if st and d > 1:
            i = em.val(f"udiv i64 {col}, {block}") if block > 1 else col
            if n < len(dims) - 1:
                i = em.val(f"urem i64 {i}, {d}")
            out = em.val(f"add i64 {out}, {em.val(f'mul i64 {i}, {st}')}")
        block *= d
    return out


def _by_lane(em: Emitter, bv: Buf, base: str, c: str) -> str:
    """The general case: each lane's column unravelled at run time."""
    dims, strides = bv.shape[1:], bv.strides[1:]
    vec = "poison"
    for q in range(W):
        f = em.val(f"add i64 {em.val(f'mul i64 {c}, {W}')}, {q}")
        idx = em.val(f"add i64 {base}, {_dot_unravel(em, f, dims, strides)}")
        vec = em.val(f"insertelement {vtype(bv.dtype, W)} {vec}, {lltype(bv.dtype)} "
                     f"{em.load_elem(bv, idx)}, i64 {q}")
    return vec


def vector_at(em: Emitter, bv: Buf, index: str, step: int, width: int) -> str:
    """<width x T> of the elements index, index + step, ... of `bv`: one load when they are
    contiguous, else element by element."""
    dt = bv.dtype
    if step == 1 and dt != "bool":
        return em.val(f"load <{width} x {lltype(dt)}>, ptr {em.gep(bv, index)}, align 4")
    vec = "poison"
    for lane in range(width):
        li = em.val(f"add i64 {index}, {lane * step}")
        vec = em.val(f"insertelement {vtype(dt, width)} {vec}, {lltype(dt)} "
                     f"{em.load_elem(bv, li)}, i64 {lane}")
    return vec


def row_sum(em: Emitter, abuf: Buf, i: int, count: int | str, lanes: int = W) -> str:
    """sum(a[i, 0 : count]) as a float (`count` a constant or a run-time i64): `lanes` at a
    time where a row of `a` is contiguous, summed across lanes once at the end; the rest
    element by element."""
    vf = f"<{lanes} x float>"
    base = i * abuf.strides[0]
    contiguous = abuf.strides[-1] == 1
    if isinstance(count, int):
        vectors = str(count // lanes if contiguous else 0)
    else:
        vectors = em.val(f"udiv i64 {count}, {lanes}") if contiguous else "0"

    def vadd(k: str, acc: list[str]) -> list[str]:
        x = vector_at(em, abuf, em.val(f"add i64 {base}, {em.val(f'mul i64 {k}, {lanes}')}"),
                      1, lanes)
        return [em.val(f"fadd reassoc {vf} {acc[0]}, {convert(em, x, abuf.dtype, 'f32', lanes)}")]

    def add(k: str, acc: list[str]) -> list[str]:
        at = em.val(f"add i64 {base}, {em.val(f'mul i64 {k}, {abuf.strides[-1]}')}")
        x = convert(em, em.load_elem(abuf, at), abuf.dtype, "f32")
        return [em.val(f"fadd float {acc[0]}, {x}")]

    em.declare(f"declare float @llvm.vector.reduce.fadd.v{lanes}f32(float, {vf})")
    total = em.loop("0", vectors, None, carried=[(vf, "zeroinitializer")], body_carried=vadd)[0]
    total = em.val(f"call reassoc float @llvm.vector.reduce.fadd.v{lanes}f32(float -0.0, "
                   f"{vf} {total})")
    done = em.val(f"mul i64 {vectors}, {lanes}")
    return em.loop(done, str(count), None, carried=[("float", total)], body_carried=add)[0]


def vector_op(env: Env, op: Op, args: list[str], width: int = W) -> str:
    """One op of E on <width x ...> vectors (its operands already evaluated)."""
    em = env.em
    src = op.operands[0].type.dtype
    o = op.opcode
    if o == "cast":
        return convert(em, args[0], src, op.attrs.dtype, width)
    if o == "bitcast":
        return em.val(f"bitcast {vtype(src, width)} {args[0]} to {vtype(op.attrs.dtype, width)}")
    if o == "where":
        t = vtype(op.results[0].type.dtype, width)
        return em.val(f"select {vtype('bool', width)} {args[0]}, {t} {args[1]}, {t} {args[2]}")
    if o == "lut":
        name, et = lut_global(em, op)
        return gather(em, name, et, convert(em, args[0], src, "i64", width))
    return scalar_op(em, o, src, args, width)
