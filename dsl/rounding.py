"""`cast(x, F, rounding=..., seed=..., index=...)`: the rounding keywords of the DSL's cast.

A stochastic cast draws its random bits from (seed, the element's flat index into a tensor),
so the codes do not depend on the block shape or the thread count. Without `index=`, the
index is that of the tensor element x was computed from: x is traced back through
elementwise ops (and casts, `where`, `relayout`) of its own shape to a `load` of a window of
a tensor, whose row-major flat index each element gets.
"""

from __future__ import annotations

from lowbitc.dsl import ast as A
from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.core import Op, Value
from lowbitc.ir.opdefs import ELEMENTWISE, ArangeAttrs, ShapeAttrs
from lowbitc.ir.types import TensorType, TileType
from lowbitc.rounding import ROUNDINGS

_SAME_ELEMENTS = ELEMENTWISE | {"cast", "where", "relayout"}


def rounding_arg(e: A.Expr | None) -> str:
    """The mode named by a `rounding=` keyword (a string literal)."""
    if e is None:
        return "nearest_even"
    if not isinstance(e, A.Str) or e.value not in ROUNDINGS:
        got = f'"{e.value}"' if isinstance(e, A.Str) else "a non-string expression"
        raise DSLTypeError(f"cast(): rounding must be one of "
                           f"{', '.join(f'{r!r}' for r in ROUNDINGS)}, got {got}".replace(
                               "'", '"'), e.loc)
    return e.value


def _source_load(b, v: Value) -> Op | None:
    """The `load` of a tensor window whose elements `v`'s elements come from, or None."""
    op = b.defining_op(v)
    if op is None:
        return None
    if op.opcode == "load" and isinstance(op.operands[0].type, TensorType):
        return op
    if op.opcode in _SAME_ELEMENTS:
        for w in op.operands:
            if isinstance(w.type, TileType) and w.type.shape == v.type.shape:
                found = _source_load(b, w)
                if found is not None:
                    return found
    return None


def element_index(ctx, x: Value, loc: SourceLoc) -> Value:
    """i64 flat indices (row-major into the loaded tensor) of the elements of tile `x`."""
    b = ctx.b
    load = _source_load(b, x) if isinstance(x.type, TileType) else None
    if load is None:
        raise DSLTypeError("cast(): a stochastic cast numbers its elements by their place in "
                           "a tensor, but this value does not come elementwise from one load("
                           "t[...]); pass index= (an i64 tile of flat indices)", loc)
    t = load.operands[0].type
    starts = load.operands[1 : 1 + len(t.shape)]
    sizes = load.attrs.sizes
    rank = sum(1 for s in sizes if s > 0)
    stride: Value | None = None  # product of the dims after d (None = 1)
    index: Value | None = None
    axis = rank
    for d in reversed(range(len(t.shape))):
        part = starts[d]
        if sizes[d] > 0:
            axis -= 1
            ar = b.emit("arange", attrs=ArangeAttrs("i64", sizes[d]), loc=loc)
            shape = tuple(sizes[d] if i == axis else 1 for i in range(rank))
            part = b.emit("reshape", b.emit("add", ar, part), attrs=ShapeAttrs(shape), loc=loc)
        if stride is not None:
            part = b.emit("mul", part, stride, loc=loc)
        index = part if index is None else b.emit("add", index, part, loc=loc)
        if d == 0:
            break
        dim = t.shape[d]
        dv = dim if isinstance(dim, int) else ctx.eval(A.Name(dim, loc=loc))
        dv = dv if isinstance(dv, Value) else ctx.materialize(dv, "i64", loc)
        stride = dv if stride is None else b.emit("mul", stride, dv, loc=loc)
    return index
