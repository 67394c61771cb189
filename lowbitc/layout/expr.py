"""Safe evaluation of layout expressions typed by a user, e.g. `spatial(8,4) * local(1,2)`,
`Layout((4,8),(8,1))` or `composition(Swizzle(3,3,3), Layout((8,64),(64,1)))`.

The text is parsed with `ast` and walked node by node: only int/None literals, tuples and
lists, `*` and `/`, and calls of the whitelisted names below are accepted; nothing is eval'd.
"""

from __future__ import annotations

import ast

from lowbitc.errors import UserArgumentError
from lowbitc.layout import algebra, tv
from lowbitc.layout.layout import Layout, coalesce, make_layout
from lowbitc.layout.mma import MMA_FRAGMENTS
from lowbitc.layout.swizzle import Swizzle

MAX_TEXT = 2000
MAX_INT = 1 << 24

FUNCTIONS = {
    "Layout": Layout,
    "Swizzle": Swizzle,
    "make_layout": make_layout,
    "coalesce": coalesce,
    "spatial": tv.spatial,
    "local": tv.local,
    "replicated": tv.replicated,
    **{name: getattr(algebra, name) for name in (
        "composition", "complement", "left_inverse", "right_inverse", "logical_divide",
        "zipped_divide", "tiled_divide", "flat_divide", "logical_product", "zipped_product",
        "tiled_product", "flat_product", "blocked_product", "raked_product")},
}
VALUES = {name: make() for name, make in MMA_FRAGMENTS.items()}


def evaluate(text: str):
    """The layout (or TV layout) the expression denotes; UserArgumentError otherwise."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise UserArgumentError(f"layout expression: expected text of at most {MAX_TEXT} "
                                f"characters, got {type(text).__name__} of {len(str(text))}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise UserArgumentError(f"layout expression {text!r}: not valid syntax ({e.msg})") from None
    return _eval(tree.body, text)


def _fail(node: ast.AST, text: str, why: str):
    snippet = ast.get_source_segment(text.strip(), node) or type(node).__name__
    raise UserArgumentError(f"layout expression {text!r}: {why}: {snippet!r}")


def _eval(node: ast.AST, text: str):
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            if abs(v) > MAX_INT:
                _fail(node, text, f"integers are limited to {MAX_INT}")
            return v
        _fail(node, text, "only integer and None literals are allowed")
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, text) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _eval(node.operand, text)
        if isinstance(v, int):
            return -v
        _fail(node, text, "minus applies to integers only")
    if isinstance(node, ast.Name):
        if node.id in VALUES:
            return VALUES[node.id]
        if node.id in FUNCTIONS:
            _fail(node, text, f"{node.id} must be called")
        _fail(node, text, f"unknown name (allowed: {', '.join(sorted({**FUNCTIONS, **VALUES}))})")
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        a, b = _eval(node.left, text), _eval(node.right, text)
        if not (isinstance(a, tv.TVLayout) and isinstance(b, tv.TVLayout)):
            _fail(node, text, "* and / combine thread-value layouts only")
        return a * b if isinstance(node.op, ast.Mult) else a / b
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name in VALUES and not node.args and not node.keywords:
            return VALUES[name]
        if name not in FUNCTIONS:
            _fail(node, text, f"unknown function (allowed: {', '.join(sorted(FUNCTIONS))})")
        if any(k.arg is None for k in node.keywords):
            _fail(node, text, "** arguments are not allowed")
        args = [_eval(a, text) for a in node.args]
        kwargs = {k.arg: _eval(k.value, text) for k in node.keywords}
        try:
            return FUNCTIONS[name](*args, **kwargs)
        except TypeError as e:
            _fail(node, text, f"bad arguments ({e})")
    _fail(node, text, "not allowed in a layout expression")
