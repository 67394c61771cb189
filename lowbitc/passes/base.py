"""Passes: named kernel -> kernel transforms, a registry, pipelines as lists of names,
and `rewrite`, the op-by-op rebuilding that local rewrite rules are written against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from lowbitc.errors import LoweringError
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Kernel, Op, Region, Value, renumber, walk
from lowbitc.ir.types import strip_layout
from lowbitc.ir.verify import verify

# A rule sees an op (operands already rewritten) and either returns None (keep it) or
# emits replacement ops through the builder and returns the values that replace its results.
Rule = Callable[[Op, Builder, "Defs"], "Sequence[Value] | None"]


@dataclass
class Defs:
    """The defining op of every value rewritten so far (for rules that look at producers)."""

    ops: dict[int, Op] = field(default_factory=dict)

    def of(self, v: Value) -> Op | None:
        return self.ops.get(v.id)


def max_id(k: Kernel) -> int:
    """The largest value id in the kernel (new values must take larger ones)."""
    ids = [v.id for v in k.params + k.dims]
    for r in (k.grid, k.body):
        for op in walk(r.ops):
            ids += [v.id for v in op.results]
            for reg in op.regions:
                ids += [a.id for a in reg.args]
    return max(ids, default=-1)


def rewrite(k: Kernel, rule: Rule) -> Kernel:
    """Rebuild the kernel, letting `rule` replace ops; the result is renumbered."""
    b = Builder(first_id=max_id(k) + 1)
    env: dict[int, Value] = {}
    defs = Defs()

    def m(v: Value) -> Value:
        return env.get(v.id, v)

    def region(r: Region) -> Region:
        with b.block() as ops:
            for op in r.ops:
                one(op)
        return Region(r.args, tuple(ops))

    def one(op: Op) -> None:
        new = replace(op, operands=tuple(m(v) for v in op.operands),
                      regions=tuple(region(r) for r in op.regions))
        b.loc = op.loc
        out = rule(new, b, defs)
        if out is None:
            b._blocks[-1].append(new)
            for r in new.results:
                defs.ops[r.id] = new
            return
        out = tuple(out)
        if len(out) != len(op.results):
            raise LoweringError(f"rewrite of {op.opcode} gave {len(out)} values", op.loc)
        for old, nv in zip(op.results, out):
            if strip_layout(old.type) != strip_layout(nv.type):
                raise LoweringError(
                    f"rewrite of {op.opcode} changed a result type: {old.type} -> {nv.type}",
                    op.loc)
            env[old.id] = nv

    grid, body = region(k.grid), region(k.body)
    return renumber(replace(k, grid=grid, body=body))


def retype(k: Kernel, types: dict[int, object]) -> Kernel:
    """The kernel with the values whose ids are in `types` given those types (same ids)."""
    def v(x: Value) -> Value:
        t = types.get(x.id)
        return x if t is None else Value(x.id, t, x.name)

    def region(r: Region) -> Region:
        return Region(tuple(v(a) for a in r.args), tuple(op_(o) for o in r.ops))

    def op_(o: Op) -> Op:
        return replace(o, results=tuple(v(x) for x in o.results),
                       operands=tuple(v(x) for x in o.operands),
                       regions=tuple(region(r) for r in o.regions))

    return replace(k, params=tuple(v(p) for p in k.params), grid=region(k.grid),
                   body=region(k.body))


@dataclass(frozen=True)
class Pass:
    """A named transform with integer options (keyword arguments of `fn`, defaults in
    `options`). `run` must return a new, valid kernel."""

    name: str
    fn: Callable[..., Kernel]
    doc: str = ""
    options: tuple[tuple[str, int], ...] = ()

    def run(self, k: Kernel) -> Kernel:
        return self.fn(k, **dict(self.options))

    def with_options(self, text: str) -> Pass:
        """This pass with the options of `text` ("bits=256,x=1") replacing the defaults."""
        known = dict(self.options)
        given = {}
        for item in filter(None, (x.strip() for x in text.split(","))):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key not in known:
                raise LoweringError(f"pass {self.name}: unknown option {key!r}; known: "
                                    f"{', '.join(sorted(known)) or 'none'}")
            if not value.lstrip("-").isdigit():
                raise LoweringError(f"pass {self.name}: option {key} takes an integer, "
                                    f"got {value!r}")
            given[key] = int(value)
        return replace(self, options=tuple(sorted({**known, **given}.items())))


PASSES: dict[str, Pass] = {}


def register(name: str, doc: str = "",
             options: dict[str, int] | None = None) -> Callable[[Callable], Callable]:
    def deco(fn: Callable[..., Kernel]) -> Callable[..., Kernel]:
        PASSES[name] = Pass(name, fn, doc or (fn.__doc__ or "").strip().splitlines()[0],
                            tuple(sorted((options or {}).items())))
        return fn
    return deco


def lookup(spec: str) -> Pass:
    """The pass a pipeline entry names: `name` or `name{option=value,...}`."""
    name, brace, rest = spec.partition("{")
    p = PASSES.get(name.strip())
    if p is None:
        raise LoweringError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}")
    if not brace:
        return p
    if not rest.endswith("}"):
        raise LoweringError(f"pass options must end in '}}': {spec!r}")
    return p.with_options(rest[:-1])


def run_pipeline(k: Kernel, names: Sequence[str], verify_each: bool = True,
                 trace: list[tuple[str, Kernel]] | None = None) -> Kernel:
    """Run the named passes in order (verifying after each); `trace` collects snapshots.
    An entry may give options: "vectorize{bits=256}"."""
    for name in names:
        k = lookup(name).run(k)
        if verify_each:
            verify(k)
        if trace is not None:
            trace.append((name, k))
    return k
