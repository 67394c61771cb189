"""The verifier: scoping (defined before use), type rules, region shapes, unique names."""

from __future__ import annotations

from lowbitc.errors import VerifyError
from lowbitc.ir.core import Kernel, Op, Region, Value, walk
from lowbitc.ir.opdefs import OPS, check_shared_operands
from lowbitc.ir.types import ScalarType, strip_layout


def _check_op(op: Op, scope: set[int]) -> None:
    d = OPS.get(op.opcode)
    if d is None:
        raise VerifyError(f"unknown opcode {op.opcode!r}", op.loc)
    for v in op.operands:
        if v.id not in scope:
            raise VerifyError(f"{op.opcode}: operand {v} is used before it is defined", op.loc)
    if not isinstance(op.attrs, d.attrs):
        raise VerifyError(f"{op.opcode}: attributes must be {d.attrs.__name__}", op.loc)
    try:
        check_shared_operands(op.opcode, tuple(v.type for v in op.operands))
        expected = d.infer(tuple(v.type for v in op.operands), op.attrs)
    except VerifyError as e:
        raise VerifyError(e.message, op.loc) from None
    got = tuple(r.type for r in op.results)
    if tuple(map(_plain, expected)) != tuple(map(_plain, got)) and op.opcode != "if":
        # (an if's results are checked against its yields, below)
        raise VerifyError(
            f"{op.opcode}: result types {', '.join(map(str, got)) or '()'} but the op gives "
            f"{', '.join(map(str, expected)) or '()'}",
            op.loc,
        )
    if len(op.regions) != d.regions:
        raise VerifyError(f"{op.opcode}: needs {d.regions} regions, has {len(op.regions)}", op.loc)
    if op.opcode == "for":
        (body,) = op.regions
        want = (ScalarType("i64"),) + got
        if tuple(map(_plain, (a.type for a in body.args))) != tuple(map(_plain, want)):
            raise VerifyError("for: body arguments must be the index then the carried values",
                              op.loc)
        _check_yield(op, body, got, scope)
    elif op.opcode == "if":
        for r in op.regions:
            if r.args:
                raise VerifyError("if: branches take no arguments", op.loc)
            _check_yield(op, r, got, scope)


# types compare without layouts: inference refines layouts after ops are typed
_plain = strip_layout


def _check_yield(op: Op, r: Region, types: tuple, scope: set[int]) -> None:
    inner = set(scope) | {a.id for a in r.args}
    _check_region(r, inner)
    last = r.ops[-1] if r.ops else None
    if last is None or last.opcode != "yield":
        raise VerifyError(f"{op.opcode}: region must end in yield", op.loc)
    if tuple(_plain(v.type) for v in last.operands) != tuple(map(_plain, types)):
        raise VerifyError(f"{op.opcode}: yield types differ from the op's results", last.loc)


def _check_region(r: Region, scope: set[int]) -> None:
    for op in r.ops:
        if op.opcode == "yield" and op is not r.ops[-1]:
            raise VerifyError("yield must be the last op of its region", op.loc)
        _check_op(op, scope)
        for v in op.results:
            if v.id in scope:
                raise VerifyError(f"{v} is defined twice", op.loc)
            scope.add(v.id)


def verify(k: Kernel) -> Kernel:
    """Raise VerifyError at the first broken invariant; return the kernel unchanged."""
    names = [v.name for v in k.params + k.dims]
    if len(set(names)) != len(names) or not all(names):
        raise VerifyError(
            f"kernel {k.name}: parameter and dim names must be unique: {names}", k.loc)
    if k.threads < 1:
        raise VerifyError(f"kernel {k.name}: threads must be >= 1, got {k.threads}", k.loc)
    scope = {v.id for v in k.params + k.dims}
    _check_yield(Op("grid", (), ()), k.grid, _grid_types(k), set(scope))
    body_scope = set(scope)
    _check_region(k.body, body_scope)
    if any(op.opcode == "yield" for op in k.body.ops):
        raise VerifyError("the kernel body does not yield", k.loc)
    return k


def _grid_types(k: Kernel) -> tuple:
    last = k.grid.ops[-1] if k.grid.ops else None
    n = len(last.operands) if last is not None and last.opcode == "yield" else 0
    if not 1 <= n <= 3:
        raise VerifyError(f"kernel {k.name}: grid must yield 1-3 block counts", k.loc)
    return (ScalarType("i64"),) * n


def values_defined(k: Kernel) -> list[Value]:
    """Every value the kernel defines (params, dims, region args, results), in order."""
    out: list[Value] = list(k.params + k.dims)
    for region in (k.grid, k.body):
        out += list(region.args)
        for op in walk(region.ops):
            out += list(op.results)
            for r in op.regions:
                out += list(r.args)
    return out
