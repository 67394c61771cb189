"""Lower a parsed kernel (AST) with its compile-time parameters bound to tile IR.

Compile-time values (ints, floats, bools, format names) are folded here, so tile shapes are
static; runtime values become IR values. Variables re-assigned inside a `for` or a dynamic
`if` become loop-carried values / branch results. `static_range` loops unroll here, and
helper `func`s are inlined at their call sites.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.dsl import ast as A
from lowbitc.dsl.builtins import BUILTINS
from lowbitc.dsl.context import Ctx, Window, materialize
from lowbitc.errors import DSLNameError, DSLTypeError, LowbitcError, SourceLoc, VerifyError
from lowbitc.formats import lookup as lookup_format
from lowbitc.formats import register as register_format
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Kernel, Region, Value, renumber
from lowbitc.ir.opdefs import AxisAttrs, ForAttrs
from lowbitc.ir.types import ScalarType, TensorType, is_machine, strip_layout
from lowbitc.ir.verify import verify

SCALAR_ALIASES = {"int": "i64", "float": "f32", "bool": "bool"}


@dataclass(frozen=True)
class Format:
    """A format name used as a value (`cast(q, f32)`, `zeros(f32, ...)`, the `W` param)."""

    name: str


def resolve_dtype(name: str, loc: SourceLoc, env: dict | None = None) -> str:
    """A dtype name as written (or a dtype cparam) -> its canonical name; error if unknown."""
    if env is not None and isinstance(env.get(name), Format):
        return env[name].name
    name = SCALAR_ALIASES.get(name, name)
    if is_machine(name):
        return name
    try:
        return lookup_format(name).name
    except (ValueError, KeyError):
        raise DSLNameError(f"unknown format {name!r}", loc) from None


class _Lowering:
    def __init__(self, module: A.Module, kernel: A.Kernel, params: dict[str, object]):
        self.module = module
        self.k = kernel
        self.b = Builder()
        self.funcs = {f.name: f for f in module.funcs}
        self.env: dict[str, object] = {}
        self.ctx = Ctx(self.b, self.eval, self.materialize)
        self.depth = 0
        self._bind_cparams(params)

    # ---------------------------------------------------------------- parameters
    def _bind_cparams(self, params: dict[str, object]) -> None:
        known = {c.name for c in self.k.cparams}
        unknown = sorted(set(params) - known)
        if unknown:
            raise DSLNameError(
                f"kernel {self.k.name} has no compile-time parameter {', '.join(unknown)}; "
                f"it has: {', '.join(sorted(known)) or 'none'}", self.k.loc)
        for c in self.k.cparams:
            if c.name in params:
                v = params[c.name]
            elif c.default is not None:
                v = self._static(c.default)
            else:
                raise DSLTypeError(
                    f"compile-time parameter {c.name} has no default; pass it", c.loc)
            self.env[c.name] = self._coerce_cparam(c, v)

    def _coerce_cparam(self, c: A.CParam, v: object) -> object:
        if c.kind == "dtype":
            if getattr(v, "kind", None) == "codebook":
                register_format(v)
            name = v.name if isinstance(v, Format) else getattr(v, "name", v)
            if not isinstance(name, str):
                raise DSLTypeError(f"{c.name} must be a format name, got {v!r}", c.loc)
            return Format(resolve_dtype(name, c.loc))
        kinds = {"int": int, "float": (int, float), "bool": bool}
        if isinstance(v, bool) != (c.kind == "bool") or not isinstance(v, kinds[c.kind]):
            raise DSLTypeError(f"{c.name} must be {c.kind}, got {v!r}", c.loc)
        return float(v) if c.kind == "float" else v

    def _static(self, e: A.Expr) -> object:
        v = self.eval(e)
        if isinstance(v, Value):
            raise DSLTypeError("expected a compile-time value here", e.loc)
        return v

    def _params(self) -> tuple[tuple[Value, ...], tuple[Value, ...]]:
        params: list[Value] = []
        dims: dict[str, Value] = {}
        for p in self.k.params:
            if p.name in self.env:
                raise DSLNameError(f"{p.name} is already defined", p.loc)
            if isinstance(p, A.ScalarParam):
                v = self.b.value(ScalarType(resolve_dtype(p.dtype, p.loc, self.env)), p.name)
            else:
                shape: list[int | str] = []
                for d in self._declared_dims(p):
                    if isinstance(d, A.Int):
                        shape.append(d.value)
                        continue
                    if d.id in self.env and not isinstance(self.env[d.id], Value):
                        size = self._static(d)
                        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                            raise DSLTypeError(f"dim {d.id} of {p.name} must be a "
                                               f"non-negative int, got {_show(size)}", d.loc)
                        shape.append(size)
                        continue
                    if d.id not in dims:
                        dims[d.id] = self.b.value(ScalarType("i64"), d.id)
                    shape.append(d.id)
                dt = resolve_dtype(p.dtype, p.loc, self.env)
                v = self.b.value(TensorType(dt, tuple(shape)), p.name)
            params.append(v)
        for name in dims:
            if name in self.env:
                raise DSLNameError(f"dim {name} clashes with a compile-time parameter", self.k.loc)
        for v in params + list(dims.values()):
            self.env[v.name] = v
        return tuple(params), tuple(dims.values())

    def _declared_dims(self, p: A.TensorParam) -> tuple[A.Name | A.Int, ...]:
        """The dims of `p`, or its `else` dims when its `if` condition is false."""
        if p.cond is None:
            return p.dims
        cond = self._static(p.cond)
        if not isinstance(cond, bool):
            raise DSLTypeError(f"the shape condition of {p.name} must be a compile-time bool, "
                               f"got {cond!r}", p.cond.loc)
        return p.dims if cond else p.alt

    # ---------------------------------------------------------------- entry
    def lower(self) -> Kernel:
        for r in self.k.requires:
            if self._static(r) is not True:
                raise DSLTypeError(
                    "requirement does not hold for these parameters: "
                    + ", ".join(f"{k}={_show(v)}" for k, v in self.env.items()), r.loc)
        params, dims = self._params()
        threads = 1 if self.k.threads is None else self._static(self.k.threads)
        if not isinstance(threads, int) or threads < 1:
            raise DSLTypeError(f"threads must be a positive int, got {threads!r}", self.k.loc)
        self.ctx.threads = threads
        grid_exprs = self.k.grid or (A.Int(1, loc=self.k.loc),)
        if len(grid_exprs) > 3:
            raise DSLTypeError("grid takes 1 to 3 block counts", grid_exprs[3].loc)
        with self.b.block() as gops:
            counts = [self.materialize(self.eval(e), "i64", e.loc) for e in grid_exprs]
            self.b.op("yield", counts)
        with self.b.block() as body:
            self.stmts(self.k.body)
        meta = tuple((c.name, _show(self.env[c.name])) for c in self.k.cparams)
        k = Kernel(self.k.name, params, dims, Region((), tuple(gops)), Region((), tuple(body)),
                   threads, meta, self.k.loc)
        return verify(renumber(k))

    # ---------------------------------------------------------------- statements
    def stmts(self, stmts: tuple[A.Stmt, ...]) -> object:
        for s in stmts:
            self.b.loc = s.loc
            if isinstance(s, A.Assign):
                self.env[s.target] = self.eval(s.value)
            elif isinstance(s, A.AugAssign):
                op = A.BinOp(s.op, A.Name(s.target, loc=s.loc), s.value, loc=s.loc)
                self.env[s.target] = self.eval(op)
            elif isinstance(s, A.ExprStmt):
                self.eval(s.expr)
            elif isinstance(s, A.For):
                self.for_(s)
            elif isinstance(s, A.If):
                out = self.if_(s)
                if out is not None:  # a compile-time branch ended with a return
                    return out
            elif isinstance(s, A.Return):
                if self.depth == 0:
                    raise DSLTypeError("return outside a func", s.loc)
                if s is not stmts[-1]:
                    raise DSLTypeError("return must be the last statement of a func", s.loc)
                return self.eval(s.value)
            else:  # pragma: no cover - the parser produces no other statements
                raise DSLTypeError(f"unsupported statement {type(s).__name__}", s.loc)
        return None

    def for_(self, s: A.For) -> None:
        if s.unroll:
            lo, hi, st = (self._static(e) for e in (s.start, s.stop, s.step))
            for i in range(lo, hi, st):
                self.env[s.var] = i
                self.stmts(s.body)
            return
        bounds = [self.materialize(self.eval(e), "i64", e.loc) for e in (s.start, s.stop, s.step)]
        carried = [n for n in _assigned(s.body) if n in self.env and n != s.var]
        inits = [self._carry_value(n, s.loc) for n in carried]
        iv = self.b.value(ScalarType("i64"))
        args = [self.b.value(v.type) for v in inits]
        saved = dict(self.env)
        self.env.update(zip(carried, args))
        self.env[s.var] = iv
        with self.b.block() as ops:
            self.stmts(s.body)
            outs = [self._carried_out(n, a, s.loc) for n, a in zip(carried, args)]
            self.b.op("yield", outs)
        self.env = saved
        loop = self.b.op("for", bounds + inits, ForAttrs(False, self._stages(s)),
                         [Region((iv, *args), tuple(ops))], loc=s.loc)
        self.env.update(zip(carried, loop.results))

    def _stages(self, s: A.For) -> int:
        """The loop's `stages=` (0 when not given): a compile-time int of at least 2."""
        if s.stages is None:
            return 0
        n = self._static(s.stages)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise DSLTypeError(f"stages= must be a compile-time int >= 2 (the pipeline's depth), "
                               f"got {_show(n)}", s.stages.loc)
        return n

    def _carry_value(self, name: str, loc: SourceLoc) -> Value:
        v = self.env[name]
        if isinstance(v, Value) and not isinstance(v.type, TensorType):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self.materialize(v, "i64" if isinstance(v, int) else "f32", loc)
        raise DSLTypeError(f"{name} cannot change inside a loop (it is {_show(v)})", loc)

    def _carried_out(self, name: str, arg: Value, loc: SourceLoc) -> Value:
        v = self.materialize(self.env[name], arg.type.dtype, loc)
        if strip_layout(v.type) != strip_layout(arg.type):
            raise DSLTypeError(
                f"{name} changes type in the loop: {arg.type} before, {v.type} after", loc)
        return v

    def if_(self, s: A.If) -> object:
        """An if; for a compile-time condition, the taken branch's return value (or None)."""
        c = self.eval(s.cond)
        if not isinstance(c, Value):
            return self.stmts(s.then if c else s.orelse)
        if c.type != ScalarType("bool"):
            raise DSLTypeError(f"if needs a bool scalar condition, got {c.type}", s.cond.loc)
        names = [n for n in dict.fromkeys(_assigned(s.then) + _assigned(s.orelse))
                 if n in self.env]
        saved = dict(self.env)
        branches, results = [], []
        for block in (s.then, s.orelse):
            self.env = dict(saved)
            with self.b.block() as ops:
                if self.stmts(block) is not None:
                    raise DSLTypeError("return inside a run-time if: assign the value in both "
                                       "branches and return it after the if", s.loc)
                outs = [self.materialize(self.env[n], _dtype_of(saved[n]), s.loc) for n in names]
                self.b.op("yield", outs)
            branches.append(Region((), tuple(ops)))
            results.append([o.type for o in outs])
        if [strip_layout(t) for t in results[0]] != [strip_layout(t) for t in results[1]]:
            raise DSLTypeError("the branches of an if give variables different types", s.loc)
        self.env = saved
        op = self.b.op("if", [c], regions=branches, loc=s.loc, result_types=results[0])
        self.env.update(zip(names, op.results))
        return None

    # ---------------------------------------------------------------- expressions
    def eval(self, e: A.Expr) -> object:
        try:
            return self._eval(e)
        except VerifyError as err:  # an op's type rule rejected the operands the user wrote
            raise DSLTypeError(err.message, err.loc or e.loc) from None
        except LowbitcError as err:
            if err.loc is None:
                raise type(err)(err.message, e.loc) from None
            raise

    def _eval(self, e: A.Expr) -> object:
        if isinstance(e, (A.Int, A.Float, A.Bool)):
            return e.value
        if isinstance(e, A.Str):
            raise DSLTypeError('a string is only allowed as a keyword value, e.g. cast(x, u4, '
                               'rounding="stochastic", seed=s)', e.loc)
        if isinstance(e, A.Name):
            if e.id in self.env:
                return self.env[e.id]
            if e.id in BUILTINS or e.id in self.funcs:
                return e.id
            try:
                return Format(resolve_dtype(e.id, e.loc))
            except DSLNameError:
                raise DSLNameError(f"name {e.id!r} is not defined", e.loc) from None
        if isinstance(e, (A.TupleExpr, A.ListExpr)):
            return tuple(self.eval(i) for i in e.items)
        if isinstance(e, A.Attribute):
            if isinstance(e.base, A.Name) and e.base.id == "block" and "block" not in self.env:
                axis = {"x": 0, "y": 1, "z": 2}.get(e.name)
                if axis is None:
                    raise DSLNameError(f"block has x, y and z, not {e.name!r}", e.loc)
                return self.b.emit("block_id", attrs=AxisAttrs(axis), loc=e.loc)
            raise DSLNameError(f"unknown attribute {e.name!r}", e.loc)
        if isinstance(e, A.Subscript):
            return Window.from_subscript(self.ctx, e)
        if isinstance(e, A.Call):
            return self.call(e)
        op = {A.BinOp: "binary", A.Compare: "compare", A.BoolOp: "boolop", A.UnaryOp: "unary"}
        kind = op.get(type(e))
        if kind is None:
            raise DSLTypeError(f"unsupported expression {type(e).__name__}", e.loc)
        return BUILTINS["__" + kind](self.ctx, e)

    def call(self, e: A.Call) -> object:
        f = self.eval(e.func)
        if isinstance(f, str) and f in self.funcs and f not in self.env:
            return self.inline(self.funcs[f], e)
        if isinstance(f, str) and f in BUILTINS:
            return BUILTINS[f](self.ctx, e)
        raise DSLTypeError(f"{_show(f)} is not callable", e.func.loc)

    def inline(self, f: A.Func, e: A.Call) -> object:
        if e.kwargs or len(e.args) != len(f.params):
            raise DSLTypeError(f"{f.name} takes {len(f.params)} positional arguments", e.loc)
        if self.depth > 32:
            raise DSLTypeError(f"{f.name}: functions nest too deeply (recursion?)", e.loc)
        args = [self.eval(a) for a in e.args]
        saved = self.env
        self.env = {k: v for k, v in saved.items() if not isinstance(v, Value)}
        self.env.update({p.name: a for p, a in zip(f.params, args)})
        self.depth += 1
        try:
            out = self.stmts(f.body)
        finally:
            self.depth -= 1
            self.env = saved
        return out

    def materialize(self, v: object, dtype: str, loc: SourceLoc) -> Value:
        return materialize(self.b, v, dtype, loc)


def _dtype_of(v: object) -> str:
    if isinstance(v, Value):
        return v.type.dtype
    return "f32" if isinstance(v, float) else "bool" if isinstance(v, bool) else "i64"


def _assigned(stmts: tuple[A.Stmt, ...]) -> list[str]:
    out: list[str] = []
    for s in stmts:
        if isinstance(s, (A.Assign, A.AugAssign)):
            out.append(s.target)
        elif isinstance(s, A.For):
            out += _assigned(s.body)
        elif isinstance(s, A.If):
            out += _assigned(s.then) + _assigned(s.orelse)
    return list(dict.fromkeys(out))


def _show(v: object) -> str:
    if isinstance(v, Format):
        return v.name
    if isinstance(v, Value):
        return str(v.type)
    return repr(v) if not isinstance(v, bool) else str(v).lower()


def lower_kernel(module: A.Module, kernel: A.Kernel, params: dict[str, object]) -> Kernel:
    """Specialise `kernel` with compile-time `params` (defaults fill the rest) to tile IR."""
    return _Lowering(module, kernel, params).lower()
