"""The DSL's operators (binary, comparison, boolean, unary, `@` as dot): compile-time operands
fold in Python, runtime ones become tile-IR ops; literals take the dtype of the value they
meet."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

from lowbitc.dsl import ast as A
from lowbitc.dsl.context import (
    Ctx,
    _kind,
    _unify,
    is_shared,
)
from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.core import Value
from lowbitc.ir.opdefs import FullAttrs
from lowbitc.ir.types import TensorType, TileType, is_float
from lowbitc.layout import TVLayout

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


def _dot(ctx: Ctx, x: object, y: object, acc: object, loc: SourceLoc) -> Value:
    for v in (x, y):
        if not (isinstance(v, Value) and isinstance(v.type, TileType) and len(v.type.shape) == 2):
            raise DSLTypeError(f"dot needs 2-D tiles, got {_kind(v)}", loc)
    if acc is None:
        acc = ctx.b.emit("full", attrs=FullAttrs("f32", (x.type.shape[0], y.type.shape[1]), 0.0))
    return ctx.b.emit("dot", x, y, acc, loc=loc)
