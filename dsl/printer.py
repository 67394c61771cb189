"""Print an AST back as .lbk source: `parse(to_source(m))` equals m up to locs.

Parentheses are added only where precedence needs them; blocks are indented by 2 spaces.
"""

from __future__ import annotations

import math

from lowbitc.dsl import ast

# Binding strength, loosest first (matches grammar.lark).
_OR, _AND, _NOT, _CMP, _BOR, _BXOR, _BAND, _SHIFT, _ARITH, _TERM, _UNARY, _POSTFIX, _ATOM = (
    range(1, 14))
_BINOP_PREC = {"|": _BOR, "^": _BXOR, "&": _BAND, "<<": _SHIFT, ">>": _SHIFT, "+": _ARITH,
               "-": _ARITH, "*": _TERM, "/": _TERM, "//": _TERM, "%": _TERM, "@": _TERM}
_INDENT = "  "


def _prec(e: ast.Node) -> int:
    if isinstance(e, ast.BoolOp):
        return _OR if e.op == "or" else _AND
    if isinstance(e, ast.UnaryOp):
        return _NOT if e.op == "not" else _UNARY
    if isinstance(e, ast.Compare):
        return _CMP
    if isinstance(e, ast.BinOp):
        return _BINOP_PREC[e.op]
    if isinstance(e, (ast.Call, ast.Subscript, ast.Attribute)):
        return _POSTFIX
    return _ATOM


def _wrap(e: ast.Node, min_prec: int) -> str:
    text = expr_source(e)
    return f"({text})" if _prec(e) < min_prec else text


def _float(value: float) -> str:
    if math.isinf(value):
        return "1e999"
    text = repr(value)
    return text if any(c in text for c in ".e") else text + ".0"


def _items(items: tuple) -> str:
    return ", ".join(expr_source(i) for i in items)


def expr_source(e: ast.Node) -> str:
    """Source text of an expression or subscript item."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Str):
        return f'"{e.value}"'
    if isinstance(e, ast.Int):
        return str(e.value) if e.value >= 0 else f"({e.value})"
    if isinstance(e, ast.Float):
        return _float(e.value) if not math.copysign(1.0, e.value) < 0 else f"(-{_float(-e.value)})"
    if isinstance(e, (ast.BoolOp, ast.BinOp)):
        p = _prec(e)
        return f"{_wrap(e.left, p)} {e.op} {_wrap(e.right, p + 1)}"
    if isinstance(e, ast.Compare):
        return f"{_wrap(e.left, _BOR)} {e.op} {_wrap(e.right, _BOR)}"
    if isinstance(e, ast.UnaryOp):
        if e.op == "not":
            return f"not {_wrap(e.operand, _NOT)}"
        return f"{e.op}{_wrap(e.operand, _UNARY)}"
    if isinstance(e, ast.Call):
        args = [expr_source(a) for a in e.args] + [f"{k}={expr_source(v)}" for k, v in e.kwargs]
        return f"{_wrap_base(e.func)}({', '.join(args)})"
    if isinstance(e, ast.Subscript):
        return f"{_wrap_base(e.base)}[{_items(e.items)}]"
    if isinstance(e, ast.Attribute):
        return f"{_wrap_base(e.base)}.{e.name}"
    if isinstance(e, ast.TupleExpr):
        return f"({expr_source(e.items[0])},)" if len(e.items) == 1 else f"({_items(e.items)})"
    if isinstance(e, ast.ListExpr):
        return f"[{_items(e.items)}]"
    if isinstance(e, ast.SliceSize):
        return f"{expr_source(e.start)} :+ {expr_source(e.size)}"
    if isinstance(e, ast.SliceRange):
        return f"{expr_source(e.start)} : {expr_source(e.stop)}"
    if isinstance(e, ast.SliceAll):
        return ":"
    raise TypeError(f"not an expression node: {type(e).__name__}")


def _wrap_base(e: ast.Node) -> str:
    """A postfix operand; number literals get parentheses so `(1).x` is not read as a float."""
    if isinstance(e, (ast.Int, ast.Float)):
        return f"({expr_source(e)})"
    return _wrap(e, _POSTFIX)


def _block(body: tuple) -> list[str]:
    return ["{", *(_INDENT + line for stmt in body for line in _stmt(stmt)), "}"]


def _join_block(head: str, body: tuple) -> list[str]:
    """`head {`, the indented body, `}`."""
    return [f"{head} {{", *_block(body)[1:]]


def _stmt(s: ast.Node) -> list[str]:
    """Lines of one statement, indented relative to the statement itself."""
    if isinstance(s, ast.Assign):
        return [f"{s.target} = {expr_source(s.value)}"]
    if isinstance(s, ast.AugAssign):
        return [f"{s.target} {s.op}= {expr_source(s.value)}"]
    if isinstance(s, ast.Return):
        return [f"return {expr_source(s.value)}"]
    if isinstance(s, ast.ExprStmt):
        return [expr_source(s.expr)]
    if isinstance(s, ast.For):
        fn = "static_range" if s.unroll else "range"
        args = (_items((s.stop,)) if _is_default_range(s)
                else _items((s.start, s.stop, s.step)))
        if s.stages is not None:
            args += f", stages={expr_source(s.stages)}"
        return _join_block(f"for {s.var} in {fn}({args})", s.body)
    if isinstance(s, ast.If):
        lines = _join_block(f"if {expr_source(s.cond)}", s.then)
        orelse = s.orelse
        while len(orelse) == 1 and isinstance(orelse[0], ast.If):
            elif_ = _join_block(f"elif {expr_source(orelse[0].cond)}", orelse[0].then)
            lines[-1] += " " + elif_[0]
            lines.extend(elif_[1:])
            orelse = orelse[0].orelse
        if orelse:
            else_ = _join_block("else", orelse)
            lines[-1] += " " + else_[0]
            lines.extend(else_[1:])
        return lines
    raise TypeError(f"not a statement node: {type(s).__name__}")


def _is_default_range(s: ast.For) -> bool:
    return (isinstance(s.start, ast.Int) and s.start.value == 0
            and isinstance(s.step, ast.Int) and s.step.value == 1)


def _func(f: ast.Func) -> list[str]:
    params = ", ".join(p.name if p.annotation is None else f"{p.name}: {p.annotation}"
                       for p in f.params)
    return _join_block(f"func {f.name}({params})", f.body)


def _tensor_param(p: ast.TensorParam) -> str:
    text = f"{p.name}: {p.dtype}[{_items(p.dims)}]"
    return text if p.cond is None else f"{text} if {expr_source(p.cond)} else [{_items(p.alt)}]"


def _kernel(k: ast.Kernel) -> list[str]:
    head = f"kernel {k.name}"
    if k.cparams:
        cps = [f"{c.name}: {c.kind}" + ("" if c.default is None
                                          else f" = {expr_source(c.default)}")
               for c in k.cparams]
        head += f"[{', '.join(cps)}]"
    params = [_tensor_param(p) if isinstance(p, ast.TensorParam) else f"{p.name}: {p.dtype}"
              for p in k.params]
    one_line = f"{head}({', '.join(params)})"
    if len(one_line) <= 96:
        lines = [one_line]
    else:
        lines = [f"{head}(", *(f"{_INDENT * 2}{p}," for p in params), ")"]
    if k.grid:
        lines.append(f"{_INDENT}grid ({_items(k.grid)})")
    if k.threads is not None:
        lines.append(f"{_INDENT}threads {expr_source(k.threads)}")
    if k.tunes:
        tunes = ", ".join(f"{t.name} in [{_items(t.values)}]" for t in k.tunes)
        lines.append(f"{_INDENT}tune {tunes}")
    if k.requires:
        lines.append(f"{_INDENT}require {_items(k.requires)}")
    return lines + _block(k.body)


def to_source(node: ast.Node) -> str:
    """Source text for a Module, Func, Kernel, statement or expression."""
    if isinstance(node, ast.Module):
        parts = [f'import "{i.path}"' for i in node.imports]
        chunks = ["\n".join(parts)] if parts else []
        chunks += ["\n".join(_func(f)) for f in node.funcs]
        chunks += ["\n".join(_kernel(k)) for k in node.kernels]
        return "\n\n".join(chunks) + "\n"
    if isinstance(node, ast.Func):
        return "\n".join(_func(node)) + "\n"
    if isinstance(node, ast.Kernel):
        return "\n".join(_kernel(node)) + "\n"
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.For, ast.If, ast.Return, ast.ExprStmt)):
        return "\n".join(_stmt(node))
    return expr_source(node)
