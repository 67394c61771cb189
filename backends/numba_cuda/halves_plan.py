"""Which f16 stores take the two-weights-per-instruction path (backends/numba_cuda/halves.py),
and their plan: the stored value as A * v(code) + B per row, and v for every code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbitc.backends.numba_cuda.elements import shape_of
from lowbitc.backends.numba_cuda.recipes import Recipe, recipe_for
from lowbitc.interp import _eval_op
from lowbitc.ir.core import Op, Value, walk

_BYTES = ("u8", "i8")  # machine integers whose loads are read like codes


@dataclass(frozen=True)
class PairPlan:
    """The code load, the format's recipe, and y = A * v + B as row expressions
    (("v", Value) | ("k", float) | (opcode, x, y) | ("neg", x))."""

    leaf: Op
    recipe: Recipe
    a: tuple
    b: tuple


# ---------------------------------------------------------------- analysis


class _Deps:
    """What a lazy value depends on: "leaf" (the codes), "const", "row" (uniform per row)."""

    def __init__(self, ctx, leaf: Op):
        self.ctx, self.leaf, self.memo = ctx, leaf, {}
        self.consts = _scalar_consts(ctx)

    def __call__(self, v: Value) -> frozenset[str]:
        got = self.memo.get(v.id)
        if got is None:
            got = self.memo[v.id] = self._deps(v)
        return got

    def _deps(self, v: Value) -> frozenset[str]:
        ctx = self.ctx
        if v.id == self.leaf.results[0].id:
            return frozenset({"leaf"})
        if v.id in self.consts:
            return frozenset({"const"})
        if v.id in ctx.scalars or v.id in ctx.bufs:
            return frozenset({"row"})
        op = ctx.lazy.get(v.id)
        if op is None or op.opcode == "arange":
            return frozenset({"other"})
        if op.opcode in ("const", "full"):
            return frozenset({"const"})
        operands = op.operands[1:] if op.opcode in ("load", "load_codes") else op.operands
        out = frozenset({"row"}) if op.opcode in ("load", "load_codes") else frozenset()
        for x in operands:
            out |= self(x)
        return out

    def row(self, v: Value) -> bool:
        shape = shape_of(v.type)
        return self(v) <= {"row", "const"} and (not shape or shape[-1] == 1)

    def code(self, v: Value) -> bool:
        return "leaf" in self(v) and self(v) <= {"leaf", "const"}


def _scalar_consts(ctx) -> dict[int, Op]:
    """Scalar constants of the kernel (rendered as locals, so not in ctx.lazy)."""
    return {op.results[0].id: op for op in walk(ctx.k.body.ops) if op.opcode == "const"}


def _leaf(ctx, v: Value, seen: set) -> list[Op]:
    """Code loads in v's lazy graph: load_codes, or loads of u8/i8 bytes."""
    op = ctx.lazy.get(v.id)
    if op is None or v.id in seen:
        return []
    seen.add(v.id)
    if op.opcode == "load_codes" or (op.opcode == "load" and op.operands[0].type.dtype in _BYTES):
        return [op]
    return [x for o in op.operands for x in _leaf(ctx, o, seen)]


def _affine(ctx, deps: _Deps, v: Value, roots: list) -> tuple[tuple, tuple] | None:
    if deps.code(v):
        roots.append(v)
        return ("k", 1.0), ("k", 0.0)
    op = ctx.lazy.get(v.id)
    if op is None:
        return None
    o = op.opcode
    if (
        o == "cast"
        and op.attrs.dtype in ("f16", "f32")
        and op.operands[0].type.dtype in ("f16", "f32")
    ):
        return _affine(ctx, deps, op.operands[0], roots)
    if o == "neg":
        got = _affine(ctx, deps, op.operands[0], roots)
        return None if got is None else (("neg", got[0]), ("neg", got[1]))
    if o not in ("add", "sub", "mul", "div") or not deps(v) <= {"leaf", "row", "const"}:
        return None
    x, y = op.operands
    if "leaf" in deps(y) and o in ("add", "mul", "sub") and deps.row(x):
        got = _affine(ctx, deps, y, roots)
        if got is None:
            return None
        r = ("v", x)
        if o == "add":
            return got[0], ("add", got[1], r)
        if o == "mul":
            return ("mul", got[0], r), ("mul", got[1], r)
        return ("neg", got[0]), ("sub", r, got[1])
    if "leaf" not in deps(x) or not deps.row(y):
        return None
    got = _affine(ctx, deps, x, roots)
    if got is None:
        return None
    r = ("v", y)
    if o in ("add", "sub"):
        return got[0], (o, got[1], r)
    return (o, got[0], r), (o, got[1], r)


def _simplify(e: tuple) -> tuple:
    if e[0] in ("v", "k"):
        return e
    args = [_simplify(x) for x in e[1:]]
    consts = [x[1] for x in args if x[0] == "k"]
    if len(consts) == len(args):
        with np.errstate(all="ignore"):
            f = {
                "neg": lambda a: -a,
                "add": np.add,
                "sub": np.subtract,
                "mul": np.multiply,
                "div": np.divide,
            }[e[0]]
            return ("k", float(f(*[np.float32(c) for c in consts])))
    if e[0] == "mul" and ("k", 0.0) in args:
        return ("k", 0.0)
    if e[0] in ("mul", "div") and args[1] == ("k", 1.0):
        return args[0]
    if e[0] == "mul" and args[0] == ("k", 1.0):
        return args[1]
    if e[0] in ("add", "sub") and args[1] == ("k", 0.0):
        return args[0]
    if e[0] == "add" and args[0] == ("k", 0.0):
        return args[1]
    return (e[0], *args)


def _code_values(ctx, leaf: Op, root: Value) -> np.ndarray:
    """v for every code: the ops between the code load and `root`, run by the interpreter."""
    bits = leaf.attrs.bits if leaf.opcode == "load_codes" else 8
    codes = np.arange(1 << bits)
    if leaf.opcode == "load_codes":
        env = {leaf.results[0].id: codes.astype(np.int32)}
    else:
        dt = np.int8 if leaf.operands[0].type.dtype == "i8" else np.uint8
        env = {leaf.results[0].id: codes.astype(np.uint8).view(dt)}
    order: list[Op] = []
    consts = _scalar_consts(ctx)

    def visit(v: Value) -> None:
        op = ctx.lazy.get(v.id) or consts.get(v.id)
        if v.id in env or op is None or op in order:
            return
        for x in op.operands:
            visit(x)
        order.append(op)

    visit(root)
    for op in order:
        if op.opcode in ("broadcast", "reshape", "relayout"):
            env[op.results[0].id] = env[op.operands[0].id]
        else:
            _eval_op(op, env, (0, 0, 0), {})
    return np.broadcast_to(np.asarray(env[root.id], np.float64), codes.shape)


def plan_pairs(ctx, op: Op) -> PairPlan | None:
    """The pair plan of a store, or None when it does not qualify (see the module doc)."""
    a = op.attrs
    target = op.operands[0]
    if target.type.dtype != "f16" or a.masked or len(a.sizes) != 2 or 0 in a.sizes:
        return None
    if a.sizes[-1] % 32 or ctx.unit is not None or ctx.hoist is not None:
        return None
    value = op.operands[-1]
    leaves = _leaf(ctx, value, set())
    if len(leaves) != 1:
        return None
    leaf = leaves[0]
    if leaf.attrs.masked or tuple(leaf.attrs.sizes) != tuple(a.sizes):
        return None
    if len(shape_of(leaf.results[0].type)) != 2 or len(leaf.operands[0].type.shape) != 2:
        return None
    deps, roots = _Deps(ctx, leaf), []
    got = _affine(ctx, deps, value, roots)
    if got is None or len(roots) != 1 or shape_of(roots[0].type) != tuple(a.sizes):
        return None
    bits = leaf.attrs.bits if leaf.opcode == "load_codes" else 8
    recipe = recipe_for(_code_values(ctx, leaf, roots[0]), bits)
    if recipe is None:
        return None
    return PairPlan(leaf, recipe, _simplify(got[0]), _simplify(got[1]))
