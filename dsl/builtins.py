"""The DSL's operators and built-in functions, each lowering its call to tile-IR ops.

A handler takes the lowering context and the AST call node; compile-time operands fold in
Python, runtime ones become ops. Literals take the dtype of the value they meet.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from lowbitc.dsl import ast as A
from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Value
from lowbitc.ir.layouts import layout_text
from lowbitc.ir.opdefs import (
    ArangeAttrs,
    CastAttrs,
    FullAttrs,
    LayoutAttrs,
    MemAttrs,
    PermAttrs,
    ReduceAttrs,
    ShapeAttrs,
    SharedAttrs,
)
from lowbitc.ir.types import ScalarType, TensorType, TileType, is_float, is_int, is_machine
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


@dataclass
class Ctx:
    """What a handler needs from the lowering: the builder and expression evaluation."""

    b: Builder
    eval: Callable[[A.Expr], object]
    materialize: Callable[[object, str, SourceLoc], Value]
    threads: int = 0  # the kernel's thread count (0 while it is not known yet)


def materialize(b: Builder, v: object, dtype: str, loc: SourceLoc) -> Value:
    """A runtime value of `dtype` for v (a compile-time number becomes a `const`)."""
    if isinstance(v, Value):
        if v.type.dtype != dtype:
            raise DSLTypeError(f"expected a {dtype} value, got {v.type}", loc)
        return v
    if isinstance(v, bool):
        if dtype != "bool":
            raise DSLTypeError(f"expected a {dtype} value, got {str(v).lower()}", loc)
        return b.const(v, "bool")
    if isinstance(v, (int, float)):
        if is_int(dtype) and isinstance(v, float):
            raise DSLTypeError(f"expected an integer ({dtype}), got {v!r}", loc)
        if not (is_int(dtype) or is_float(dtype)):
            raise DSLTypeError(f"a number cannot be a {dtype} value; cast the {dtype} codes "
                               "to a machine type first, e.g. cast(q, f32)", loc)
        return b.const(float(v) if is_float(dtype) else int(v), dtype)
    raise DSLTypeError(f"expected a {dtype} value, got {_kind(v)}", loc)


def _kind(v: object) -> str:
    if is_shared(v):
        return f"shared tile {v.type} (memory: read it with load(s[...]))"
    if isinstance(v, Value):
        return str(v.type)
    return type(v).__name__ if not hasattr(v, "name") else f"format {v.name}"


def is_shared(v: object) -> bool:
    """A shared tile: per-block memory that only load/store/copy touch."""
    return isinstance(v, Value) and isinstance(v.type, TileType) and v.type.space == "shared"


@dataclass(frozen=True)
class Window:
    """`tensor[items]` (or `shared_tile[items]`): per dim a start (int or i64 value) and a
    size (0 = single index)."""

    tensor: Value
    starts: tuple[object, ...]
    sizes: tuple[int, ...]
    loc: SourceLoc

    @staticmethod
    def from_subscript(ctx: Ctx, e: A.Subscript) -> Window:
        t = ctx.eval(e.base)
        if not (isinstance(t, Value) and isinstance(t.type, TensorType) or is_shared(t)):
            raise DSLTypeError(f"only tensor parameters can be sliced (and shared tiles), not "
                               f"{_kind(t)}", e.loc)
        shape = t.type.shape
        if len(e.items) != len(shape):
            raise DSLTypeError(
                f"{t.name} has {len(shape)} dims ({t.type}), got {len(e.items)} subscripts", e.loc)
        starts, sizes = [], []
        for item, dim in zip(e.items, shape):
            start, size = _item(ctx, item, dim)
            starts.append(start)
            sizes.append(size)
        return Window(t, tuple(starts), tuple(sizes), e.loc)

    @staticmethod
    def whole(t: Value, loc: SourceLoc) -> Window:
        """Every element of a shared tile."""
        return Window(t, (0,) * len(t.type.shape), tuple(t.type.shape), loc)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s for s in self.sizes if s > 0)

    @property
    def shared(self) -> bool:
        return is_shared(self.tensor)

    def operands(self, ctx: Ctx) -> list[Value]:
        return [self.tensor] + [ctx.materialize(s, "i64", self.loc) for s in self.starts]


def _item(ctx: Ctx, item: object, dim: int | str) -> tuple[object, int]:
    if isinstance(item, A.SliceAll):
        if not isinstance(dim, int):
            raise DSLTypeError(f"':' over symbolic dim {dim} needs a static size; use 'i :+ n'",
                               item.loc)
        return 0, dim
    if isinstance(item, A.SliceSize):
        size = ctx.eval(item.size)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise DSLTypeError(f"slice size must be a compile-time int >= 1, got {_kind(size)}"
                               if not isinstance(size, int) else
                               f"slice size must be >= 1, got {size}", item.size.loc)
        return _index(ctx, item.start), size
    if isinstance(item, A.SliceRange):
        lo, hi = ctx.eval(item.start), ctx.eval(item.stop)
        if not (isinstance(lo, int) and isinstance(hi, int)) or hi <= lo:
            raise DSLTypeError("'a : b' needs compile-time ints with b > a; use 'a :+ n'", item.loc)
        return lo, hi - lo
    return _index(ctx, item), 0


def _index(ctx: Ctx, e: A.Expr) -> object:
    v = ctx.eval(e)
    if isinstance(v, Value) and v.type != ScalarType("i64"):
        raise DSLTypeError(f"indices must be i64 scalars, got {v.type}", e.loc)
    if not isinstance(v, (int, Value)) or isinstance(v, bool):
        raise DSLTypeError(f"indices must be integers, got {_kind(v)}", e.loc)
    return v


# ------------------------------------------------------------------ operators

_PY_BIN: dict[str, Callable] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "%": operator.mod,
    "|": operator.or_, "^": operator.xor, "&": operator.and_, "<<": operator.lshift,
    ">>": operator.rshift, "//": operator.floordiv,
}
_IR_BIN = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "div", "%": "rem",
           "|": "or", "^": "xor", "&": "and", "<<": "shl", ">>": "shr",
           "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge",
           "and": "and", "or": "or"}
_PY_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
           ">": operator.gt, ">=": operator.ge}


def _py_div(a, b, op: str, loc: SourceLoc):
    if b == 0:
        raise DSLTypeError("division by zero in a compile-time expression", loc)
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return a / b if op == "/" else float(a // b)


def _unify(ctx: Ctx, a: object, b: object, loc: SourceLoc) -> tuple[Value, Value]:
    if isinstance(a, Value) and isinstance(b, Value):
        if a.type.dtype != b.type.dtype:
            raise DSLTypeError(
                f"operands have different types ({a.type.dtype} and {b.type.dtype}); "
                "cast one with cast(x, T)", loc)
        return a, b
    if isinstance(a, Value):
        return a, ctx.materialize(b, a.type.dtype, loc)
    return ctx.materialize(a, b.type.dtype, loc), b


def binop(ctx: Ctx, e: A.BinOp | A.Compare | A.BoolOp) -> object:
    a, b = ctx.eval(e.left), ctx.eval(e.right)
    if isinstance(a, TVLayout) and isinstance(b, TVLayout) and e.op in ("*", "/"):
        try:
            return a * b if e.op == "*" else a / b
        except ValueError as err:
            raise DSLTypeError(f"layout {'product' if e.op == '*' else 'division'}: {err}",
                               e.loc) from None
    for v, side in ((a, e.left), (b, e.right)):
        if not isinstance(v, (int, float, bool, Value)) or is_shared(v) or (
                isinstance(v, Value) and isinstance(v.type, TensorType)):
            raise DSLTypeError(f"cannot use {_kind(v)} in arithmetic", side.loc)
    if e.op == "@":
        return _dot(ctx, a, b, None, e.loc)
    if not isinstance(a, Value) and not isinstance(b, Value):
        if e.op in ("/", "//"):
            return _py_div(a, b, e.op, e.loc)
        if e.op == "%":  # C's remainder, as at run time: the sign of the dividend
            q = _py_div(a, b, "/", e.loc)
            return a - b * q if isinstance(q, int) else math.fmod(a, b)
        if e.op in _PY_CMP:
            return _PY_CMP[e.op](a, b)
        if e.op in ("and", "or"):
            return (a and b) if e.op == "and" else (a or b)
        try:
            return _PY_BIN[e.op](a, b)
        except TypeError:
            raise DSLTypeError(f"'{e.op}' does not apply to {a!r} and {b!r}", e.loc) from None
    x, y = _unify(ctx, a, b, e.loc)
    if e.op in ("and", "or") and x.type.dtype != "bool":
        raise DSLTypeError(f"'{e.op}' needs bool operands, got {x.type.dtype}", e.loc)
    if e.op == "//" and is_float(x.type.dtype):
        return ctx.b.emit("floor", ctx.b.emit("div", x, y, loc=e.loc), loc=e.loc)
    return ctx.b.emit(_IR_BIN[e.op], x, y, loc=e.loc)


def unary(ctx: Ctx, e: A.UnaryOp) -> object:
    v = ctx.eval(e.operand)
    if not isinstance(v, Value):
        if e.op == "-":
            return -v
        if e.op == "not":
            return not v
        return ~v
    if e.op == "-":
        return ctx.b.emit("neg", v, loc=e.loc)
    if e.op == "not" and v.type.dtype != "bool":
        raise DSLTypeError(f"'not' needs a bool, got {v.type.dtype}", e.loc)
    return ctx.b.emit("bnot", v, loc=e.loc)


# ------------------------------------------------------------------ functions

def _args(e: A.Call, names: tuple[str, ...], required: int) -> dict[str, A.Expr]:
    fname = e.func.id if isinstance(e.func, A.Name) else "function"
    if len(e.args) > len(names):
        raise DSLTypeError(f"{fname}() takes at most {len(names)} arguments, got {len(e.args)}",
                           e.loc)
    out = dict(zip(names, e.args))
    for k, v in e.kwargs:
        if k not in names:
            raise DSLTypeError(f"{fname}() has no argument {k!r} (it takes {', '.join(names)})",
                               v.loc)
        if k in out:
            raise DSLTypeError(f"{fname}() got {k!r} twice", v.loc)
        out[k] = v
    missing = [n for n in names[:required] if n not in out]
    if missing:
        raise DSLTypeError(f"{fname}() is missing {', '.join(missing)}", e.loc)
    return out


def _value(ctx: Ctx, e: A.Expr, what: str) -> Value:
    v = ctx.eval(e)
    if not isinstance(v, Value) or isinstance(v.type, TensorType) or is_shared(v):
        raise DSLTypeError(f"{what} must be a tile or scalar value, got {_kind(v)}", e.loc)
    return v


def _format(ctx: Ctx, e: A.Expr) -> str:
    v = ctx.eval(e)
    name = getattr(v, "name", None)
    if not isinstance(name, str) or isinstance(v, Value):
        raise DSLTypeError(f"expected a format name such as f32 or u4, got {_kind(v)}", e.loc)
    return name


def _shape(ctx: Ctx, e: A.Expr) -> tuple[int, ...]:
    v = ctx.eval(e)
    v = v if isinstance(v, tuple) else (v,)
    if not v or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v):
        raise DSLTypeError(f"a tile shape is a list of compile-time ints >= 1, got {v!r}", e.loc)
    return tuple(v)


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
    return w


def _load(ctx: Ctx, e: A.Call) -> Value:
    a = _args(e, ("src", "mask", "layout"), 1)
    w = _window_arg(ctx, a["src"], "load")
    layout = _layout_arg(ctx, a["layout"], w.shape) if "layout" in a else ""
    mask = _mask_arg(ctx, a["mask"], "load") if "mask" in a else None
    return _emit_load(ctx, w, mask, layout, e.loc)


def _emit_load(ctx: Ctx, w: Window, mask: Value | None, layout: str, loc: SourceLoc) -> Value:
    operands = w.operands(ctx) + ([mask] if mask is not None else [])
    attrs = MemAttrs(w.sizes, layout, mask is not None)
    return ctx.b.emit("load_shared" if w.shared else "load", *operands, attrs=attrs, loc=loc)


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
    a = _args(e, ("x", "dtype"), 2)
    dt = _format(ctx, a["dtype"])
    v = ctx.eval(a["x"])
    if not isinstance(v, Value):
        return ctx.materialize(v, dt, a["x"].loc)
    if v.type.dtype == dt:
        return v
    if not is_machine(v.type.dtype) and not is_machine(dt):
        raise DSLTypeError(f"cast from {v.type.dtype} to {dt} has no meaning; go through f32",
                           e.loc)
    return ctx.b.emit("cast", v, attrs=CastAttrs(dt), loc=e.loc)


def _dot(ctx: Ctx, x: object, y: object, acc: object, loc: SourceLoc) -> Value:
    for v in (x, y):
        if not (isinstance(v, Value) and isinstance(v.type, TileType) and len(v.type.shape) == 2):
            raise DSLTypeError(f"dot needs 2-D tiles, got {_kind(v)}", loc)
    if acc is None:
        acc = ctx.b.emit("full", attrs=FullAttrs("f32", (x.type.shape[0], y.type.shape[1]), 0.0))
    return ctx.b.emit("dot", x, y, acc, loc=loc)


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
