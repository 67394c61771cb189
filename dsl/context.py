"""What every DSL handler works with: the lowering context, windows of tensors, operand
evaluation and unification, and the checks of a call's arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbitc.dsl import ast as A
from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Value
from lowbitc.ir.types import ScalarType, TensorType, TileType, is_float, is_int


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
    size (0 = single index). At most one start may be a 1-D integer tile (a gather: that dim
    takes the tile's rows, its size the tile's length)."""

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
            if _is_index_tile(start) and any(_is_index_tile(s) for s in starts):
                raise DSLTypeError("at most one subscript may be an index tile (a gather)",
                                   item.loc)
            starts.append(start)
            sizes.append(size)
        return Window(t, tuple(starts), tuple(sizes), e.loc)

    @property
    def gather_axis(self) -> int | None:
        """The dim indexed by an integer tile (a gather), or None."""
        return next((d for d, s in enumerate(self.starts) if _is_index_tile(s)), None)

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
        """The tensor and its starts (a gather: the tensor, the index tile, the other starts)."""
        g = self.gather_axis
        if g is not None:
            return [self.tensor, self.starts[g]] + [ctx.materialize(s, "i64", self.loc)
                                                    for d, s in enumerate(self.starts) if d != g]
        return [self.tensor] + [ctx.materialize(s, "i64", self.loc) for s in self.starts]


def _is_index_tile(v: object) -> bool:
    return isinstance(v, Value) and isinstance(v.type, TileType)


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
        return _index(ctx, item.start, tile=False), size
    if isinstance(item, A.SliceRange):
        lo, hi = ctx.eval(item.start), ctx.eval(item.stop)
        if not (isinstance(lo, int) and isinstance(hi, int)) or hi <= lo:
            raise DSLTypeError("'a : b' needs compile-time ints with b > a; use 'a :+ n'", item.loc)
        return lo, hi - lo
    v = _index(ctx, item, tile=True)
    return (v, v.type.shape[0]) if _is_index_tile(v) else (v, 0)


def _index(ctx: Ctx, e: A.Expr, tile: bool) -> object:
    v = ctx.eval(e)
    if tile and isinstance(v, Value) and isinstance(v.type, TileType) and v.type.space == "reg":
        if len(v.type.shape) != 1 or not is_int(v.type.dtype):
            raise DSLTypeError(f"an index tile (a gather) must be a 1-D integer tile, got "
                               f"{v.type}", e.loc)
        return v
    if isinstance(v, Value) and v.type != ScalarType("i64"):
        raise DSLTypeError(f"indices must be i64 scalars, got {v.type}", e.loc)
    if not isinstance(v, (int, Value)) or isinstance(v, bool):
        raise DSLTypeError(f"indices must be integers, got {_kind(v)}", e.loc)
    return v


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
