"""Turn Lark's parse tree of a .lbk file into the typed AST (dsl/ast.py).

Checks that the grammar cannot express (a clause given twice, 1-3 grid dimensions, range
arguments, keyword-argument order, compile-time parameter kinds, duplicate parameter names,
expression depth) and reports them as DSLSyntaxError at the offending token.
"""

from __future__ import annotations

from lark import Token, Transformer_NonRecursive, Tree, v_args

from lowbitc.dsl import ast
from lowbitc.errors import DSLSyntaxError, SourceLoc

MAX_EXPR_DEPTH = 100
"""Deeper expressions are rejected so that recursive passes never hit Python's stack limit."""

MAX_BLOCK_DEPTH = 64
"""Deeper nesting of statements (each elif counts as one level) is rejected, for the same
reason."""

_RANGES = {"range": False, "static_range": True}


def _int_value(text: str) -> int:
    """The value of an INT token (decimal, 0x, 0b, with underscores)."""
    return int(text, 0) if text[:2].lower() in ("0x", "0b") else int(text, 10)


class ToAst(Transformer_NonRecursive):
    """Lark Transformer producing ast nodes with a SourceLoc from each rule's first token."""

    def __init__(self, filename: str, lines: list[str]):
        super().__init__()
        self.filename = filename
        self.lines = lines
        self._depth: dict[int, int] = {}

    # ---- locations and errors --------------------------------------------------------

    def loc_at(self, line: int, col: int) -> SourceLoc:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return SourceLoc(self.filename, line, col, text)

    def loc(self, meta) -> SourceLoc:
        if getattr(meta, "empty", True):
            return self.loc_at(1, 1)
        return self.loc_at(meta.line, meta.column)

    def tok_loc(self, tok: Token) -> SourceLoc:
        return self.loc_at(tok.line, tok.column)

    def error(self, message: str, loc: SourceLoc) -> DSLSyntaxError:
        return DSLSyntaxError(message, loc)

    def _expr(self, node: ast.Node, *children: object) -> ast.Node:
        """Record node's depth (1 + deepest child) and reject over-deep expressions."""
        depth = 1 + max((self._depth.get(id(c), 0) for c in children), default=0)
        if depth > MAX_EXPR_DEPTH:
            raise self.error(f"expression nested too deeply (more than {MAX_EXPR_DEPTH} "
                             "levels); split it with assignments", node.loc)
        self._depth[id(node)] = depth
        return node

    def _stmt(self, node: ast.Node, *bodies: tuple) -> ast.Node:
        """Record a compound statement's nesting depth and reject over-deep nesting."""
        depth = 1 + max((self._depth.get(id(s), 0) for body in bodies for s in body),
                        default=0)
        if depth > MAX_BLOCK_DEPTH:
            raise self.error(f"blocks nested too deeply (more than {MAX_BLOCK_DEPTH} levels)",
                             node.loc)
        self._depth[id(node)] = depth
        return node

    # ---- module, declarations --------------------------------------------------------

    @v_args(meta=True)
    def start(self, meta, items):
        groups = {ast.Import: [], ast.Func: [], ast.Kernel: []}
        for item in items:
            groups[type(item)].append(item)
        return ast.Module(tuple(groups[ast.Import]), tuple(groups[ast.Func]),
                          tuple(groups[ast.Kernel]), loc=self.loc_at(1, 1))

    @v_args(meta=True)
    def import_(self, meta, children):
        (tok,) = children
        return ast.Import(tok[1:-1], loc=self.loc(meta))

    @v_args(meta=True)
    def func(self, meta, children):
        name, *params, body = children
        params = tuple(p for p in params if p is not None)
        self._check_unique([(p.name, p.loc) for p in params])
        return ast.Func(str(name), params, body, loc=self.loc(meta))

    @v_args(meta=True)
    def fparam(self, meta, children):
        name, annotation = children
        return ast.Param(str(name), None if annotation is None else str(annotation),
                         loc=self.loc(meta))

    @v_args(meta=True)
    def kernel(self, meta, children):
        name, cparams, *rest = children
        body = rest.pop()
        params = tuple(p for p in rest if isinstance(p, (ast.TensorParam, ast.ScalarParam)))
        clauses = [c for c in rest if isinstance(c, Tree)]
        cparams = cparams or ()
        self._check_unique([(p.name, p.loc) for p in (*cparams, *params)])
        found: dict[str, object] = {}
        for clause in clauses:
            if clause.data in found:
                raise self.error(f"duplicate '{clause.data}' clause", clause.children[0])
            found[clause.data] = clause.children[1]
        tunes = found.get("tune", ())
        self._check_unique([(t.name, t.loc) for t in tunes], what="tune")
        return ast.Kernel(str(name), cparams, params, found.get("grid", ()),
                          found.get("threads"), tunes, found.get("require", ()), body,
                          loc=self.loc(meta))

    def _check_unique(self, names: list[tuple[str, SourceLoc]], what: str = "parameter"):
        seen: set[str] = set()
        for name, loc in names:
            if name in seen:
                raise self.error(f"duplicate {what} '{name}'", loc)
            seen.add(name)

    def cparams(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def cparam(self, meta, children):
        name, kind, default = children
        if kind not in ast.CPARAM_KINDS:
            kinds = ", ".join(ast.CPARAM_KINDS)
            raise self.error(f"compile-time parameter '{name}' has kind '{kind}'; expected "
                             f"one of {kinds}", self.tok_loc(kind))
        return ast.CParam(str(name), str(kind), default, loc=self.loc(meta))

    @v_args(meta=True)
    def tensor_param(self, meta, children):
        name, dtype, dims, cond, alt = children
        return ast.TensorParam(str(name), str(dtype), dims, cond, alt or (), loc=self.loc(meta))

    @v_args(meta=True)
    def scalar_param(self, meta, children):
        name, dtype = children
        return ast.ScalarParam(str(name), str(dtype), loc=self.loc(meta))

    def dims(self, children):
        return tuple(children)

    def dim(self, children):
        (tok,) = children
        if tok.type == "INT":
            return ast.Int(_int_value(tok), loc=self.tok_loc(tok))
        return ast.Name(str(tok), loc=self.tok_loc(tok))

    # ---- kernel clauses (kept as Tree(kind, [loc, value]) until `kernel` sorts them) --

    @v_args(meta=True)
    def grid(self, meta, children):
        if len(children) > 3:
            raise self.error(f"a grid has 1 to 3 dimensions, got {len(children)}",
                             children[3].loc)
        return Tree("grid", [self.loc(meta), tuple(children)])

    @v_args(meta=True)
    def threads(self, meta, children):
        return Tree("threads", [self.loc(meta), children[0]])

    @v_args(meta=True)
    def tune(self, meta, children):
        return Tree("tune", [self.loc(meta), tuple(children)])

    @v_args(meta=True)
    def tune_item(self, meta, children):
        name, *values = children
        values = tuple(v for v in values if v is not None)
        return ast.Tune(str(name), values, loc=self.loc(meta))

    @v_args(meta=True)
    def require(self, meta, children):
        return Tree("require", [self.loc(meta), tuple(children)])

    # ---- statements ------------------------------------------------------------------

    def block(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def assign(self, meta, children):
        name, value = children
        return ast.Assign(str(name), value, loc=self.loc(meta))

    @v_args(meta=True)
    def augassign(self, meta, children):
        name, op, value = children
        return ast.AugAssign(str(name), str(op)[0], value, loc=self.loc(meta))

    @v_args(meta=True)
    def for_(self, meta, children):
        var, rng, (args, kwargs), body = children
        loc = self.loc(meta)
        if rng not in _RANGES:
            raise self.error(f"expected 'range' or 'static_range' after 'in', found '{rng}'",
                             self.tok_loc(rng))
        stages = None
        for name, value in kwargs:  # range(..., stages=S): a software pipeline's depth
            if name != "stages" or _RANGES[rng]:
                raise self.error(f"{rng}() takes no keyword argument {name!r}"
                                 + ("" if _RANGES[rng] else " (only stages=)"), value.loc)
            stages = value
        if not 1 <= len(args) <= 3:
            raise self.error(f"{rng}() takes 1 to 3 arguments, got {len(args)}",
                             self.tok_loc(rng))
        zero, one = ast.Int(0, loc=loc), ast.Int(1, loc=loc)
        start, stop, step = ((zero, args[0], one) if len(args) == 1 else
                             (args[0], args[1], one) if len(args) == 2 else tuple(args))
        return self._stmt(ast.For(str(var), start, stop, step, _RANGES[rng], body, stages,
                                  loc=loc), body)

    @v_args(meta=True)
    def if_(self, meta, children):
        cond, then, *elifs, orelse = children
        orelse = orelse or ()
        for elif_cond, elif_body, elif_loc in reversed(elifs):
            orelse = (self._stmt(ast.If(elif_cond, elif_body, orelse, loc=elif_loc),
                                 elif_body, orelse),)
        return self._stmt(ast.If(cond, then, orelse, loc=self.loc(meta)), then, orelse)

    @v_args(meta=True)
    def elif_(self, meta, children):
        return (children[0], children[1], self.loc(meta))

    def else_(self, children):
        return children[0]

    @v_args(meta=True)
    def return_(self, meta, children):
        return ast.Return(children[0], loc=self.loc(meta))

    @v_args(meta=True)
    def expr_stmt(self, meta, children):
        return ast.ExprStmt(children[0], loc=self.loc(meta))

    # ---- expressions -----------------------------------------------------------------

    @v_args(meta=True)
    def or_(self, meta, children):
        return self._expr(ast.BoolOp("or", *children, loc=self.loc(meta)), *children)

    @v_args(meta=True)
    def and_(self, meta, children):
        return self._expr(ast.BoolOp("and", *children, loc=self.loc(meta)), *children)

    @v_args(meta=True)
    def not_(self, meta, children):
        return self._expr(ast.UnaryOp("not", children[0], loc=self.loc(meta)), children[0])

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return self._expr(ast.Compare(str(op), left, right, loc=self.loc(meta)), left, right)

    @v_args(meta=True)
    def binop(self, meta, children):
        left, op, right = children
        return self._expr(ast.BinOp(str(op), left, right, loc=self.loc(meta)), left, right)

    @v_args(meta=True)
    def unary(self, meta, children):
        op, operand = children
        return self._expr(ast.UnaryOp(str(op), operand, loc=self.loc(meta)), operand)

    @v_args(meta=True)
    def call(self, meta, children):
        func, (args, kwargs) = children
        values = [func, *args, *(v for _, v in kwargs)]
        return self._expr(ast.Call(func, args, kwargs, loc=self.loc(meta)), *values)

    def args(self, children):
        args: list[ast.Expr] = []
        kwargs: list[tuple[str, ast.Expr]] = []
        for arg in children:
            if arg is None:
                continue
            if isinstance(arg, tuple):
                if arg[0] in (k for k, _ in kwargs):
                    raise self.error(f"keyword argument '{arg[0]}' given twice", arg[2])
                kwargs.append(arg[:2])
            elif kwargs:
                raise self.error("positional argument after a keyword argument", arg.loc)
            else:
                args.append(arg)
        return tuple(args), tuple(kwargs)

    def posarg(self, children):
        return children[0]

    def kwarg(self, children):
        name, value = children
        return (str(name), value, self.tok_loc(name))

    def kwarg_str(self, children):  # a string is only ever a keyword's value
        name, tok = children
        return (str(name), ast.Str(str(tok)[1:-1], loc=self.tok_loc(tok)), self.tok_loc(name))

    @v_args(meta=True)
    def subscript(self, meta, children):
        base, *items = children
        return self._expr(ast.Subscript(base, tuple(items), loc=self.loc(meta)), base, *items)

    def index(self, children):
        return children[0]

    @v_args(meta=True)
    def slice_size(self, meta, children):
        start, _, size = children
        return self._expr(ast.SliceSize(start, size, loc=self.loc(meta)), start, size)

    @v_args(meta=True)
    def slice_range(self, meta, children):
        start, stop = children
        return self._expr(ast.SliceRange(start, stop, loc=self.loc(meta)), start, stop)

    @v_args(meta=True)
    def slice_all(self, meta, children):
        return ast.SliceAll(loc=self.loc(meta))

    @v_args(meta=True)
    def attribute(self, meta, children):
        base, name = children
        return self._expr(ast.Attribute(base, str(name), loc=self.loc(meta)), base)

    def name(self, children):
        (tok,) = children
        return ast.Name(str(tok), loc=self.tok_loc(tok))

    def int_(self, children):
        (tok,) = children
        return ast.Int(_int_value(tok), loc=self.tok_loc(tok))

    def float_(self, children):
        (tok,) = children
        return ast.Float(float(tok.replace("_", "")), loc=self.tok_loc(tok))

    @v_args(meta=True)
    def true_(self, meta, children):
        return ast.Bool(True, loc=self.loc(meta))

    @v_args(meta=True)
    def false_(self, meta, children):
        return ast.Bool(False, loc=self.loc(meta))

    @v_args(meta=True)
    def tuple_(self, meta, children):
        items = tuple(children)
        return self._expr(ast.TupleExpr(items, loc=self.loc(meta)), *items)

    @v_args(meta=True)
    def list_(self, meta, children):
        items = tuple(c for c in children if c is not None)
        return self._expr(ast.ListExpr(items, loc=self.loc(meta)), *items)
