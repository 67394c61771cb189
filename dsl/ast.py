"""The typed AST of the .lbk tile language: one frozen dataclass per node, each with a loc.

Every node carries `loc` (a keyword-only field, the position of the node's first character);
equality compares locs too, so use `strip_locs` to compare structure only. Sequences are
tuples so nodes are hashable. Names (variables, formats, functions) are plain strings or
`Name` nodes; the lowering resolves them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lowbitc.errors import SourceLoc

NO_LOC = SourceLoc("<unknown>", 0, 0, "")
"""The loc of nodes built by hand (and of every node after `strip_locs`)."""


@dataclass(frozen=True, slots=True)
class Node:
    """Base class of every AST node."""

    loc: SourceLoc = field(default=NO_LOC, kw_only=True, repr=False)


# ---- expressions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Name(Node):
    """A variable, parameter, format or function name."""

    id: str


@dataclass(frozen=True, slots=True)
class Int(Node):
    """An integer literal (decimal, 0x hex or 0b binary in the source)."""

    value: int


@dataclass(frozen=True, slots=True)
class Float(Node):
    """A floating-point literal."""

    value: float


@dataclass(frozen=True, slots=True)
class Str(Node):
    """A string literal: only a keyword argument's value (`cast(x, u4, rounding="up")`)."""

    value: str


@dataclass(frozen=True, slots=True)
class Bool(Node):
    """`true` or `false`."""

    value: bool


@dataclass(frozen=True, slots=True)
class BinOp(Node):
    """`left op right`; op is one of + - * / // % @ | ^ & << >>."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class UnaryOp(Node):
    """`op operand`; op is '-', '~' or 'not'."""

    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Compare(Node):
    """`left op right`; op is one of == != < <= > >= (comparisons do not chain)."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class BoolOp(Node):
    """`left op right`; op is 'and' or 'or'."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Call(Node):
    """`func(args..., key=value...)`; keyword arguments keep their source order."""

    func: Expr
    args: tuple[Expr, ...] = ()
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True, slots=True)
class SliceSize(Node):
    """Subscript item `start :+ size`: `size` elements from `start`."""

    start: Expr
    size: Expr


@dataclass(frozen=True, slots=True)
class SliceRange(Node):
    """Subscript item `start : stop` (stop exclusive)."""

    start: Expr
    stop: Expr


@dataclass(frozen=True, slots=True)
class SliceAll(Node):
    """Subscript item `:`, the whole dimension."""


@dataclass(frozen=True, slots=True)
class Subscript(Node):
    """`base[item, ...]`; each item is an index expression or a slice node."""

    base: Expr
    items: tuple[SubscriptItem, ...]


@dataclass(frozen=True, slots=True)
class Attribute(Node):
    """`base.name`, e.g. `block.x`."""

    base: Expr
    name: str


@dataclass(frozen=True, slots=True)
class TupleExpr(Node):
    """`(a, b)`, `(a,)` or `()`."""

    items: tuple[Expr, ...] = ()


@dataclass(frozen=True, slots=True)
class ListExpr(Node):
    """`[a, b]` or `[]`."""

    items: tuple[Expr, ...] = ()


Expr = (Name | Int | Float | Str | Bool | BinOp | UnaryOp | Compare | BoolOp | Call | Subscript
        | Attribute | TupleExpr | ListExpr)
SubscriptItem = Expr | SliceSize | SliceRange | SliceAll

# ---- statements ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign(Node):
    """`target = value`."""

    target: str
    value: Expr


@dataclass(frozen=True, slots=True)
class AugAssign(Node):
    """`target op= value`; op is '+', '-', '*' or '/' (without the '=')."""

    target: str
    op: str
    value: Expr


@dataclass(frozen=True, slots=True)
class For(Node):
    """`for var in range(start, stop, step) {body}`; unroll is True for `static_range`;
    `stages` the `stages=` of `range` (pipeline depth for a backend that stages the loop's
    loads, a compile-time int), None when not given."""

    var: str
    start: Expr
    stop: Expr
    step: Expr
    unroll: bool
    body: tuple[Stmt, ...]
    stages: Expr | None = None


@dataclass(frozen=True, slots=True)
class If(Node):
    """`if cond {then} else {orelse}`; `elif` becomes an If alone in orelse."""

    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()


@dataclass(frozen=True, slots=True)
class Return(Node):
    """`return value` (in a func)."""

    value: Expr


@dataclass(frozen=True, slots=True)
class ExprStmt(Node):
    """An expression used as a statement, e.g. `store(y[...], acc)`."""

    expr: Expr


Stmt = Assign | AugAssign | For | If | Return | ExprStmt

# ---- declarations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param(Node):
    """A func parameter `name` or `name: annotation`."""

    name: str
    annotation: str | None = None


@dataclass(frozen=True, slots=True)
class Func(Node):
    """`func name(params) {body}`: a helper inlined at its call sites."""

    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class CParam(Node):
    """A compile-time kernel parameter `name: kind [= default]`; kind is one of CPARAM_KINDS."""

    name: str
    kind: str
    default: Expr | None = None


CPARAM_KINDS = ("dtype", "int", "float", "bool")


@dataclass(frozen=True, slots=True)
class TensorParam(Node):
    """A global tensor parameter `name: dtype[d0, d1, ...]`; dims are Name or Int nodes.
    `name: dtype[dims] if cond else [alt]`: the compile-time `cond` picks the declared shape."""

    name: str
    dtype: str
    dims: tuple[Name | Int, ...]
    cond: Expr | None = None
    alt: tuple[Name | Int, ...] = ()


@dataclass(frozen=True, slots=True)
class ScalarParam(Node):
    """A runtime scalar parameter `name: dtype` (int, i32, f32, ...)."""

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class Tune(Node):
    """`tune name in [values]`: the choices the tuner tries for a compile-time parameter."""

    name: str
    values: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Kernel(Node):
    """A kernel; grid is () and threads None when the clause is absent."""

    name: str
    cparams: tuple[CParam, ...]
    params: tuple[TensorParam | ScalarParam, ...]
    grid: tuple[Expr, ...]
    threads: Expr | None
    tunes: tuple[Tune, ...]
    requires: tuple[Expr, ...]
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class Import(Node):
    """`import "path"`; the path is relative to the importing file."""

    path: str


@dataclass(frozen=True, slots=True)
class Module(Node):
    """A parsed .lbk file (or, from load_module, the merge of a file and its imports)."""

    imports: tuple[Import, ...] = ()
    funcs: tuple[Func, ...] = ()
    kernels: tuple[Kernel, ...] = ()


# ---- generic helpers -----------------------------------------------------------------


def _map_nodes(value: object, fn) -> object:
    """Apply fn to every node inside value (a node, tuple or leaf), bottom-up."""
    if isinstance(value, Node):
        changes = {
            f.name: _map_nodes(getattr(value, f.name), fn)
            for f in dataclasses.fields(value)
            if f.name != "loc"
        }
        return fn(dataclasses.replace(value, **changes))
    if isinstance(value, tuple):
        return tuple(_map_nodes(v, fn) for v in value)
    return value


def strip_locs(node: Node) -> Node:
    """A copy of node with every loc set to NO_LOC, for comparing structure."""
    return _map_nodes(node, lambda n: dataclasses.replace(n, loc=NO_LOC))


def walk(node: Node):
    """Yield node and every node below it, parents first."""
    stack: list[object] = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, Node):
            yield value
            children = [getattr(value, f.name) for f in dataclasses.fields(value)]
            stack.extend(reversed(children))
        elif isinstance(value, tuple):
            stack.extend(reversed(value))


def dump(node: object, locs: bool = False) -> str:
    """A one-line constructor-style rendering, e.g. `BinOp('+', Name('x'), Int(1))`."""
    if isinstance(node, Node):
        parts = [dump(getattr(node, f.name), locs) for f in dataclasses.fields(node)
                 if f.name != "loc"]
        if locs and node.loc != NO_LOC:
            parts.append(f"loc='{node.loc}'")
        return f"{type(node).__name__}({', '.join(parts)})"
    if isinstance(node, tuple):
        inner = ", ".join(dump(v, locs) for v in node)
        return f"({inner},)" if len(node) == 1 else f"({inner})"
    return repr(node)
