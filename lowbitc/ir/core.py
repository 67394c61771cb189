"""The tile IR's data: values, ops, regions and kernels (frozen; passes build new ones).

Every op is one `Op` node: an opcode, typed results, operands, a per-op attribute dataclass
(see `opdefs`), nested regions (loop and branch bodies) and the source location it came from.
Value ids are canonical (definition order, see `renumber`), so structural equality is
meaningful and `parse(print(k)) == k`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from lowbitc.errors import SourceLoc
from lowbitc.ir.types import Type


@dataclass(frozen=True, slots=True)
class Value:
    """An SSA value. Kernel parameters and dims carry their source name."""

    id: int
    type: Type
    name: str = ""

    def __str__(self) -> str:
        return f"%{self.name}" if self.name else f"%{self.id}"


@dataclass(frozen=True, slots=True)
class Attrs:
    """Base of the per-op attribute dataclasses (an op with no attributes uses this)."""


@dataclass(frozen=True, slots=True)
class Region:
    """A block of ops with arguments (loop index, loop-carried values); ends in `yield`."""

    args: tuple[Value, ...]
    ops: tuple[Op, ...]


@dataclass(frozen=True, slots=True)
class Op:
    opcode: str
    results: tuple[Value, ...]
    operands: tuple[Value, ...]
    attrs: Attrs = field(default_factory=Attrs)
    regions: tuple[Region, ...] = ()
    loc: SourceLoc | None = None

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"op {self.opcode} has {len(self.results)} results, not 1")
        return self.results[0]


@dataclass(frozen=True, slots=True)
class Kernel:
    """A kernel: named params (tensors, scalars), symbolic dims, launch, grid and body.

    `grid` computes the 1-3 block counts from params and dims and ends in `yield`;
    `meta` records the compile-time parameters it was specialised with (printed, cached).
    """

    name: str
    params: tuple[Value, ...]
    dims: tuple[Value, ...]
    grid: Region
    body: Region
    threads: int = 1
    meta: tuple[tuple[str, str], ...] = ()
    loc: SourceLoc | None = None

    def param(self, name: str) -> Value:
        for v in self.params + self.dims:
            if v.name == name:
                return v
        raise KeyError(name)


def walk(ops: tuple[Op, ...]) -> Iterator[Op]:
    """Every op, nested regions included, in program order."""
    for op in ops:
        yield op
        for r in op.regions:
            yield from walk(r.ops)


def renumber(k: Kernel) -> Kernel:
    """Give every value its canonical id: textual order over params, dims, grid, body."""
    mapping: dict[int, Value] = {}
    counter = 0

    def fresh(v: Value) -> Value:
        nonlocal counter
        nv = Value(counter, v.type, v.name)
        counter += 1
        mapping[v.id] = nv
        return nv

    def use(v: Value) -> Value:
        return mapping[v.id]

    def region(r: Region) -> Region:
        args = tuple(fresh(a) for a in r.args)
        return Region(args, tuple(op_(o) for o in r.ops))

    def op_(o: Op) -> Op:
        operands = tuple(use(v) for v in o.operands)
        results = tuple(fresh(v) for v in o.results)  # textual order: results, then bodies
        regions = tuple(region(r) for r in o.regions)
        return Op(o.opcode, results, operands, o.attrs, regions, o.loc)

    params = tuple(fresh(v) for v in k.params)
    dims = tuple(fresh(v) for v in k.dims)
    grid = region(k.grid)
    body = region(k.body)
    return Kernel(k.name, params, dims, grid, body, k.threads, k.meta, k.loc)
