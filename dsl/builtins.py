"""The DSL's built-in functions, each lowering its call to tile-IR ops, and the table of every
handler the lowering dispatches to (operators from dsl/operators.py).

A handler takes the lowering context (dsl/context.py) and the AST call node; compile-time
operands fold in Python, runtime ones become ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lowbitc.dsl import ast as A
from lowbitc.dsl.context import (
    Ctx,
    Window,
    _args,
    _format,
    _kind,
    _shape,
    _unify,
    _value,
    is_shared,
)
from lowbitc.dsl.operators import _dot, binop, unary
from lowbitc.dsl.rounding import element_index, rounding_arg
from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.core import Value
from lowbitc.ir.layouts import layout_text
from lowbitc.ir.opdefs import (
    ArangeAttrs,
    CastAttrs,
    FullAttrs,
    GatherAttrs,
    LayoutAttrs,
    MemAttrs,
    PermAttrs,
    ReduceAttrs,
    ShapeAttrs,
    SharedAttrs,
    rounded_cast_problem,
)
from lowbitc.ir.types import TensorType, TileType, is_float, is_machine
from lowbitc.layout import (
    TVLayout,
    local,
    mma_m16n8k16_a,
    mma_m16n8k16_b,
    mma_m16n8k16_c,
    replicated,
    spatial,
)
from lowbitc.layout.swizzle import Swizzle

# ------------------------------------------------------------------ functions

def _zeros(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("dtype", "shape"), 2)
    dt = _format(ctx, a["dtype"])
    return ctx.b.emit("full", attrs=FullAttrs(dt, _shape(ctx, a["shape"]),
                                              0.0 if is_float(dt) else 0), loc=e.loc)


def _full(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("dtype", "shape", "value"), 3)
    dt = _format(ctx, a["dtype"])
    v = ctx.eval(a["value"])
    if not isinstance(v, (int, float)):
        raise DSLTypeError("full() needs a compile-time fill value", a["value"].loc)
    return ctx.b.emit("full", attrs=FullAttrs(dt, _shape(ctx, a["shape"]),
                                              float(v) if is_float(dt) else int(v)), loc=e.loc)


def _arange(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("n", "dtype"), 1)
    (n,) = _shape(ctx, a["n"])
    dt = _format(ctx, a["dtype"]) if "dtype" in a else "i64"
    return ctx.b.emit("arange", attrs=ArangeAttrs(dt, n), loc=e.loc)


def _window_arg(ctx: Ctx, e: A.Expr, fname: str) -> Window:
    w = ctx.eval(e)
    if is_shared(w):
        return Window.whole(w, e.loc)
    if not isinstance(w, Window):
        raise DSLTypeError(f"{fname}() takes a tensor slice such as x[i :+ 16, :] or a shared "
                           f"tile, got {_kind(w)}", e.loc)
    if w.gather_axis is not None and fname != "load":
        raise DSLTypeError(f"{fname}() cannot take an index tile (only load() gathers)", e.loc)
    return w


def _load(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("src", "mask", "layout"), 1)
    w = _window_arg(ctx, a["src"], "load")
    layout = _layout_arg(ctx, a["layout"], w.shape) if "layout" in a else ""
    mask = _mask_arg(ctx, a["mask"], "load") if "mask" in a else None
    return _emit_load(ctx, w, mask, layout, e.loc)


def _emit_load(ctx: Ctx, w: Window, mask: Value | None, layout: str, loc: SourceLoc) -> Value:
    if w.gather_axis is not None:
        return _emit_gather(ctx, w, mask, layout, loc)
    operands = w.operands(ctx) + ([mask] if mask is not None else [])
    attrs = MemAttrs(w.sizes, layout, mask is not None)
    return ctx.b.emit("load_shared" if w.shared else "load", *operands, attrs=attrs, loc=loc)


def _emit_gather(ctx: Ctx, w: Window, mask: Value | None, layout: str,
                 loc: SourceLoc) -> Value:
    """load(t[idx, ...]) with idx a 1-D integer tile: the rows idx[i] of t (numpy's t[idx])."""
    dt = w.tensor.type.dtype
    if not is_machine(dt):
        raise DSLTypeError(f"a gather reads a tensor of a machine type, not {dt} codes: declare "
                           "the packed words (u32) and view() the gathered tile", loc)
    if mask is not None or layout:
        raise DSLTypeError("a gather (a load with an index tile) takes no mask= or layout=",
                           loc)
    return ctx.b.emit("gather", *w.operands(ctx), attrs=GatherAttrs(w.gather_axis, w.sizes),
                      loc=loc)


def _store(ctx: Ctx, e: A.Call) -> None:
    a = _args(e, ("dst", "value", "mask"), 2)
    w = _window_arg(ctx, a["dst"], "store")
    mask = _mask_arg(ctx, a["mask"], "store") if "mask" in a else None
    _emit_store(ctx, w, ctx.eval(a["value"]), a["value"].loc, mask, e.loc, "store")


def _emit_store(ctx: Ctx, w: Window, v: object, vloc: SourceLoc, mask: Value | None,
                loc: SourceLoc, fname: str) -> None:
    want = w.tensor.type.dtype
    where = "the shared tile" if w.shared else w.tensor.name
    if is_shared(v) or isinstance(v, Value) and isinstance(v.type, TensorType):
        raise DSLTypeError(f"{fname}: the value must be a tile or scalar, got {_kind(v)}", vloc)
    if isinstance(v, Value) and v.type.dtype != want:
        raise DSLTypeError(f"{fname}: the value is {v.type.dtype} but {where} holds {want}; "
                           f"cast it with cast(value, {want})", vloc)
    operands = w.operands(ctx) + [ctx.materialize(v, want, vloc)]
    operands += [mask] if mask is not None else []
    opcode = "store_shared" if w.shared else "store"
    ctx.b.op(opcode, operands, MemAttrs(w.sizes, "", mask is not None), loc=loc)


def _copy(ctx: Ctx, e: A.Call) -> None:
    """copy(dst, src): src (a tensor slice, a shared tile or slice, or a register tile) into
    dst (a tensor slice or a shared tile or slice), element for element."""
    a = _args(e, ("dst", "src", "mask"), 2)
    dst = _window_arg(ctx, a["dst"], "copy")
    mask = _mask_arg(ctx, a["mask"], "copy") if "mask" in a else None
    src = ctx.eval(a["src"])
    if is_shared(src):
        src = Window.whole(src, a["src"].loc)
    if isinstance(src, Window):
        shape = src.shape
        value: object = _emit_load(ctx, src, mask, "", e.loc)
    elif isinstance(src, Value) and isinstance(src.type, TileType):
        shape, value = src.type.shape, src
    else:
        raise DSLTypeError(f"copy() copies from a tensor slice, a shared tile or a register "
                           f"tile, got {_kind(src)}", a["src"].loc)
    if shape != dst.shape:
        raise DSLTypeError(f"copy: the source is {list(shape)} but the destination is "
                           f"{list(dst.shape)}; both sides must have the same shape", e.loc)
    _emit_store(ctx, dst, value, a["src"].loc, mask, e.loc, "copy")


def _shared(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("dtype", "shape", "layout"), 2)
    dt = _format(ctx, a["dtype"])
    shape = _shape(ctx, a["shape"])
    layout = ""
    if "layout" in a:
        sw = ctx.eval(a["layout"])
        if not isinstance(sw, Swizzle):
            raise DSLTypeError(f"a shared tile's layout= is a swizzle such as swizzle(3, 2, 3), "
                               f"got {_kind(sw)}", a["layout"].loc)
        size = math.prod(shape)
        if size % sw.size():
            raise DSLTypeError(f"swizzle{(sw.bits, sw.base, sw.shift)} permutes blocks of "
                               f"{sw.size()} elements, but the tile {list(shape)} has {size}",
                               a["layout"].loc)
        layout = str(sw)
    return ctx.b.emit("alloc_shared", attrs=SharedAttrs(dt, shape, layout), loc=e.loc)


def _swizzle(ctx: Ctx, e: A.Call) -> Swizzle:
    a = _args(e, ("bits", "base", "shift"), 3)
    return _int_call("swizzle", Swizzle, [ctx.eval(a[n]) for n in ("bits", "base", "shift")], e.loc)


def _int_call(name: str, fn: Callable, vals: list, loc: SourceLoc | None) -> object:
    """fn(*vals) for a builtin taking compile-time ints; its ValueError becomes a DSL error."""
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise DSLTypeError(f"{name}() takes compile-time ints, got {vals!r}", loc)
    try:
        return fn(*vals)
    except ValueError as err:
        raise DSLTypeError(f"{name}(): {err}", loc) from None


def _sync(ctx: Ctx, e: A.Call) -> None:
    _args(e, (), 0)
    ctx.b.op("sync", [], loc=e.loc)


def _layout_arg(ctx: Ctx, e: A.Expr, shape: tuple[int, ...]) -> str:
    """A thread-value layout for a tile of `shape`, as its printed form (checked to fit)."""
    lay = ctx.eval(e)
    if not isinstance(lay, TVLayout):
        raise DSLTypeError(f"layout= takes a thread-value layout such as spatial(4, 8) * "
                           f"local(1, 4), got {_kind(lay)}", e.loc)
    if tuple(lay.shape) != tuple(shape):
        raise DSLTypeError(f"layout {layout_text(lay)} covers a {list(lay.shape)} tile, but the "
                           f"tile is {list(shape)}", e.loc)
    if ctx.threads and lay.num_threads != ctx.threads:
        raise DSLTypeError(f"layout {layout_text(lay)} uses {lay.num_threads} threads, but the "
                           f"kernel runs {ctx.threads} (see its `threads` clause)", e.loc)
    return layout_text(lay)


def _view(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("x", "dtype"), 2)
    v = _value(ctx, a["x"], "x")
    if not isinstance(v.type, TileType):
        raise DSLTypeError(f"view() takes a tile, got {v.type}", a["x"].loc)
    return ctx.b.emit("view", v, attrs=CastAttrs(_format(ctx, a["dtype"])), loc=e.loc)


def _relayout(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("x", "layout"), 2)
    v = _value(ctx, a["x"], "x")
    if not isinstance(v.type, TileType):
        raise DSLTypeError(f"relayout() takes a tile, got {v.type}", a["x"].loc)
    lay = _layout_arg(ctx, a["layout"], v.type.shape)
    return ctx.b.emit("relayout", v, attrs=LayoutAttrs(lay), loc=e.loc)


def _layout_fn(fn: Callable) -> Callable:
    def f(ctx: Ctx, e: A.Call) -> TVLayout:
        if e.kwargs:
            raise DSLTypeError(f"{e.func.id}() takes positional ints only", e.loc)
        return _int_call(e.func.id, fn, [ctx.eval(x) for x in e.args], e.loc)
    return f


def _mask_arg(ctx: Ctx, e: A.Expr, fname: str) -> Value:
    m = _value(ctx, e, "mask")
    if m.type.dtype != "bool":
        raise DSLTypeError(f"{fname}: mask must be a bool tile, got {m.type}", e.loc)
    return m


def _cast(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("x", "dtype", "rounding", "seed", "index"), 2)
    dt = _format(ctx, a["dtype"])
    mode = rounding_arg(a.get("rounding"))
    if mode != "nearest_even":
        return _rounded_cast(ctx, e, a, dt, mode)
    v = ctx.eval(a["x"])
    if not isinstance(v, Value):
        return ctx.materialize(v, dt, a["x"].loc)
    if v.type.dtype == dt:
        return v
    if not is_machine(v.type.dtype) and not is_machine(dt):
        raise DSLTypeError(f"cast from {v.type.dtype} to {dt} has no meaning; go through f32",
                           e.loc)
    return ctx.b.emit("cast", v, attrs=CastAttrs(dt), loc=e.loc)


def _rounded_cast(ctx: Ctx, e: A.Call, a: dict, dt: str, mode: str) -> Value:
    """cast(x, F, rounding=mode[, seed=s, index=i]): x a machine tile or scalar, F a format,
    u8, i8 (or, for f32 x, f16 or bf16)."""
    v = _value(ctx, a["x"], "x")
    why = rounded_cast_problem(v.type.dtype, dt)
    if why:
        raise DSLTypeError(f"cast(): {why}", e.loc)
    extra: list[Value] = []
    if mode == "stochastic":
        if "seed" not in a:
            raise DSLTypeError('cast(): rounding="stochastic" needs seed= (an int)', e.loc)
        seed = ctx.materialize(ctx.eval(a["seed"]), "i64", a["seed"].loc)
        index = (_value(ctx, a["index"], "index") if "index" in a
                 else element_index(ctx, v, e.loc))
        extra = [seed, index]
    elif "seed" in a or "index" in a:
        k = "seed" if "seed" in a else "index"
        raise DSLTypeError(f'cast(): {k}= applies to rounding="stochastic" only', a[k].loc)
    return ctx.b.emit("cast", v, *extra, attrs=CastAttrs(dt, rounding=mode), loc=e.loc)


def _dot_call(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("a", "b", "acc"), 2)
    acc = _value(ctx, a["acc"], "acc") if "acc" in a else None
    return _dot(ctx, ctx.eval(a["a"]), ctx.eval(a["b"]), acc, e.loc)


def _transpose(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("x", "perm"), 1)
    v = _value(ctx, a["x"], "x")
    rank = len(getattr(v.type, "shape", ()))
    perm = _shape_or(ctx, a.get("perm"), tuple(reversed(range(rank))))
    return ctx.b.emit("transpose", v, attrs=PermAttrs(perm), loc=e.loc)


def _shape_or(ctx: Ctx, e: A.Expr | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if e is None:
        return default
    v = ctx.eval(e)
    return tuple(v) if isinstance(v, tuple) else (v,)


def _reshape_like(opcode: str) -> Callable:
    def f(ctx: Ctx, e: A.Call) -> Value:
        a = _args(e, ("x", "shape"), 2)
        return ctx.b.emit(opcode, _value(ctx, a["x"], "x"),
                          attrs=ShapeAttrs(_shape(ctx, a["shape"])), loc=e.loc)
    return f


def _reduce_or_elementwise(kind: str) -> Callable:
    def f(ctx: Ctx, e: A.Call) -> object:
        if kind != "sum" and len(e.args) == 2 and not e.kwargs:
            return _elementwise2(ctx, kind, e)
        a = _args(e, ("x", "axis"), 1)
        v = _value(ctx, a["x"], "x")
        rank = len(getattr(v.type, "shape", ()))
        axis = ctx.eval(a["axis"]) if "axis" in a else rank - 1
        if not isinstance(axis, int) or not -rank <= axis < rank:
            raise DSLTypeError(f"axis must be an int in [{-rank}, {rank}), got {axis!r}", e.loc)
        return ctx.b.emit("reduce", v, attrs=ReduceAttrs(axis % rank, kind), loc=e.loc)
    return f


def _elementwise2(ctx: Ctx, opcode: str, e: A.Call) -> object:
    a, b = ctx.eval(e.args[0]), ctx.eval(e.args[1])
    if not isinstance(a, Value) and not isinstance(b, Value):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
            shown = [repr(v) if len(repr(v)) <= 40 else type(v).__name__ for v in (a, b)]
            raise DSLTypeError(f"{opcode}(a, b) takes two numbers or tiles, got {shown[0]} "
                               f"and {shown[1]}", e.loc)
        return {"min": min, "max": max}[opcode](a, b)
    x, y = _unify(ctx, a, b, e.loc)
    return ctx.b.emit(opcode, x, y, loc=e.loc)


def _where(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("cond", "a", "b"), 3)
    c = _value(ctx, a["cond"], "cond")
    x, y = ctx.eval(a["a"]), ctx.eval(a["b"])
    if not isinstance(x, Value) and not isinstance(y, Value):  # two literals: f32, i64 or bool
        dt = "bool" if isinstance(x, bool) else "f32" if float in (type(x), type(y)) else "i64"
        x = ctx.materialize(x, dt, a["a"].loc)
    x, y = _unify(ctx, x, y, e.loc)
    return ctx.b.emit("where", c, x, y, loc=e.loc)


def _unary_fn(opcode: str) -> Callable:
    def f(ctx: Ctx, e: A.Call) -> Value:
        a = _args(e, ("x",), 1)
        return ctx.b.emit(opcode, _value(ctx, a["x"], "x"), loc=e.loc)
    return f


def _cdiv(ctx: Ctx, e: A.Call) -> object:
    a = _args(e, ("a", "b"), 2)
    x, y = ctx.eval(a["a"]), ctx.eval(a["b"])
    for v, side in ((x, a["a"]), (y, a["b"])):
        if not isinstance(v, (int, Value)) or isinstance(v, bool):
            raise DSLTypeError(f"cdiv() takes integers, got {_kind(v)}", side.loc)
    if not isinstance(x, Value) and not isinstance(y, Value):
        if y == 0:
            raise DSLTypeError("cdiv by zero", e.loc)
        return -(-x // y)
    x, y = _unify(ctx, x, y, e.loc)
    one = ctx.materialize(1, x.type.dtype, e.loc)
    t = ctx.b.emit("sub", ctx.b.emit("add", x, y), one)
    return ctx.b.emit("div", t, y, loc=e.loc)


BUILTINS: dict[str, Callable] = {
    "__binary": binop, "__compare": binop, "__boolop": binop, "__unary": unary,
    "zeros": _zeros, "full": _full, "arange": _arange, "load": _load, "store": _store,
    "cast": _cast, "dot": _dot_call, "transpose": _transpose,
    "reshape": _reshape_like("reshape"), "broadcast": _reshape_like("broadcast"),
    "relayout": _relayout, "view": _view, "shared": _shared, "copy": _copy, "sync": _sync,
    "swizzle": _swizzle,
    "spatial": _layout_fn(spatial), "local": _layout_fn(local),
    "replicated": _layout_fn(replicated), "mma_m16n8k16_a": _layout_fn(mma_m16n8k16_a),
    "mma_m16n8k16_b": _layout_fn(mma_m16n8k16_b), "mma_m16n8k16_c": _layout_fn(mma_m16n8k16_c),
    "sum": _reduce_or_elementwise("sum"), "max": _reduce_or_elementwise("max"),
    "min": _reduce_or_elementwise("min"), "where": _where, "cdiv": _cdiv,
    **{n: _unary_fn(n) for n in ("exp", "log", "sqrt", "rsqrt", "tanh", "sin", "cos", "floor",
                                  "erf", "sigmoid", "abs")},
}
