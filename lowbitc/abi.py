"""What launching a compiled kernel needs, as plain data: its name, parameters (names, types,
shapes), symbolic dims and the grid as straight-line integer arithmetic.

Built from the lowered IR when a kernel is compiled and stored beside its object code, so a
compile-cache hit binds arguments and sizes the grid without importing, building or parsing
the IR. An `ABI` has the `name`/`params`/`dims` of an IR kernel, so `signature.Binder` and
`signature.bind` take either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from lowbitc.errors import LowbitcError, VerifyError
from lowbitc.ir.types import ScalarType, TensorType
from lowbitc.repack import Packing, parse

if TYPE_CHECKING:
    from lowbitc.ir.core import Kernel, Value


class Param(NamedTuple):
    """A kernel parameter or dim as the ABI keeps it: an IR value's id, type and name (a
    tuple, so a cache hit need not import the IR's core module)."""

    id: int
    type: TensorType | ScalarType
    name: str


def _params(values: tuple[Value, ...]) -> tuple[Param, ...]:
    return tuple(Param(v.id, v.type, v.name) for v in values)

# the grid's integer ops, with the IR's semantics (division truncates toward zero, as in C)
INT_OPS: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: 0 if b == 0 else (abs(a) // abs(b)) * (1 if (a >= 0) == (b >= 0) else -1),
    "rem": lambda a, b: 0 if b == 0 else a - b * (abs(a) // abs(b)) * (1 if (a >= 0) == (b >= 0)
                                                                      else -1),
    "min": min, "max": max,
}  # fmt: skip

# one grid step: (result id, INT_OPS name or None for a constant, operand ids, constant)
Step = tuple[int, str | None, tuple[int, ...], int | None]


def grid_program(k: Kernel) -> tuple[tuple[Step, ...], tuple[int, ...]] | None:
    """The grid region of `k` as steps and the ids of the block counts, or None when it uses
    an op other than integer constants and INT_OPS (then only the interpreter evaluates it)."""
    steps: list[Step] = []
    for op in k.grid.ops[:-1]:
        if op.opcode == "const" and isinstance(op.attrs.value, int):
            steps.append((op.results[0].id, None, (), int(op.attrs.value)))
        elif op.opcode in INT_OPS and op.results[0].type.dtype in ("i64", "i32"):
            steps.append((op.results[0].id, op.opcode, tuple(v.id for v in op.operands), None))
        else:
            return None
    return tuple(steps), tuple(v.id for v in k.grid.ops[-1].operands)


def grid_runner(steps: tuple[Step, ...], out: tuple[int, ...]) -> Callable[[dict], tuple]:
    """A function {value id: int} -> (x, y, z) block counts running `steps`."""
    compiled = [
        (rid, None if op is None else INT_OPS[op], args, value) for rid, op, args, value in steps
    ]

    def run_grid(env: dict) -> tuple[int, int, int]:
        for rid, fn, args, value in compiled:
            env[rid] = value if fn is None else fn(*(env[a] for a in args))
        counts = [env[i] for i in out]
        return tuple(counts + [1] * (3 - len(counts)))  # type: ignore[return-value]

    return run_grid


@dataclass(frozen=True)
class ABI:
    """A kernel's calling convention; `grid` is None when the grid needs the interpreter."""

    name: str
    params: tuple[Param, ...]
    dims: tuple[Param, ...]
    grid: tuple[tuple[Step, ...], tuple[int, ...]] | None
    # (param name, packing name, bits) of the params read in a layout-specific packing
    packed: tuple[tuple[str, str, int], ...] = ()

    @classmethod
    def of(cls, k: Kernel) -> ABI:
        return cls(k.name, _params(k.params), _params(k.dims), grid_program(k), packed_params(k))

    def packings(self) -> dict[str, Packing]:
        """{param name: packing} of the params whose words are not canonical."""
        return {name: parse(packing, bits) for name, packing, bits in self.packed}

    def grid_function(self) -> Callable[[dict], tuple[int, int, int]] | None:
        return None if self.grid is None else grid_runner(*self.grid)

    def to_json(self) -> dict:
        """JSON data that `from_json` reads back into an equal ABI."""
        return {
            "name": self.name,
            "params": [_value_json(v) for v in self.params],
            "dims": [_value_json(v) for v in self.dims],
            "grid": None
            if self.grid is None
            else [[list(s[:2]) + [list(s[2]), s[3]] for s in self.grid[0]], list(self.grid[1])],
            "packed": [list(x) for x in self.packed],
        }

    @classmethod
    def from_json(cls, data: dict) -> ABI:
        """The ABI `to_json` wrote; LowbitcError on anything else."""
        try:
            grid = data["grid"]
            if grid is not None:
                steps = tuple(_step(s) for s in grid[0])
                grid = (steps, tuple(int(i) for i in grid[1]))
            return cls(
                str(data["name"]),
                tuple(_value(v) for v in data["params"]),
                tuple(_value(v) for v in data["dims"]),
                grid,
                tuple((str(n), str(p), int(b)) for n, p, b in data.get("packed", [])),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LowbitcError(f"malformed kernel ABI record: {exc!r}") from None


def packed_params(k: Kernel) -> tuple[tuple[str, str, int], ...]:
    """(param name, packing, bits) for every param a `load_codes` reads in a packing other
    than the canonical one (the bitpack-lanes pass records it on the loads)."""
    from lowbitc.ir.core import walk  # at compile time only: a cache hit reads `packed`

    names = {p.id: p.name for p in k.params}
    out = {}
    for op in walk(k.body.ops):
        if op.opcode == "load_codes" and op.attrs.packing:
            out[names[op.operands[0].id]] = (op.attrs.packing, op.attrs.bits)
    for op in walk(k.body.ops):  # one packing per tensor: every other access must agree
        for v in op.operands:
            name = names.get(v.id)
            if name not in out:
                continue
            given = op.attrs.packing if op.opcode == "load_codes" else ""
            if given != out[name][0]:
                raise VerifyError(
                    f"kernel {k.name}: {op.opcode} uses tensor {name!r} in "
                    f"{given or 'the canonical packing'}, but it is read in packing "
                    f"{out[name][0]}: a tensor has one packing",
                    op.loc,
                )
    return tuple((n, p, b) for n, (p, b) in sorted(out.items()))


def grid_of(
    abi: ABI, values: dict, dims: dict, run_grid: Callable[[dict], tuple[int, int, int]]
) -> tuple[int, int, int]:
    """The (x, y, z) block counts for bound scalar `values` and `dims` (by name)."""
    env = {p.id: values[p.name] for p in abi.params if not isinstance(p.type, TensorType)}
    env.update({d.id: dims[d.name] for d in abi.dims})
    g = run_grid(env)
    if min(g) < 0:
        raise LowbitcError(f"kernel {abi.name}: the grid {g} has a negative count")
    return g


def _value_json(v: Value | Param) -> list:
    t = v.type
    if isinstance(t, TensorType):
        return [v.id, v.name, t.dtype, list(t.shape)]
    if isinstance(t, ScalarType):
        return [v.id, v.name, t.dtype, None]
    raise LowbitcError(f"kernel parameter {v} has type {t}, not a tensor or scalar")


def _value(data: list) -> Param:
    vid, name, dtype, shape = data
    if not isinstance(vid, int) or not isinstance(name, str) or not isinstance(dtype, str):
        raise ValueError(f"bad parameter record {data!r}")
    if shape is None:
        return Param(vid, ScalarType(dtype), name)
    if not all(isinstance(d, (int, str)) for d in shape):
        raise ValueError(f"bad shape in parameter record {data!r}")
    return Param(vid, TensorType(dtype, tuple(shape)), name)


def _step(data: list) -> Step:
    rid, op, args, value = data
    if op is not None and op not in INT_OPS:
        raise ValueError(f"unknown grid op {op!r}")
    if op is None and not isinstance(value, int):
        raise ValueError(f"bad grid constant {value!r}")
    return int(rid), op, tuple(int(a) for a in args), value
