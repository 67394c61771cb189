"""32-bit flat offsets for the f16 path's units (`halves.store_pairs`).

numba indexes arrays in 64 bits (row * stride + column: two IMADs, LEA and LEA.HI.X per
access). A unit instead addresses element `i * n + j` of a C-contiguous tensor in 32 bits
(one IMAD) zero-extended into the address (one IMAD.WIDE.U32) with the `ld_at*`/`st_at*`
intrinsics. That is exact while every tensor the unit touches has fewer than 2^32 elements
and every start plus extent stays below 2^32: a block-uniform condition (`Flat.pre`),
computed once before the unit loop; when it fails, every unit takes the 64-bit per-element
path. Row values (a group's scale and zero point) that are plain loads are read with the same
flat offsets and no guard: their bounds join the unit's conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbitc.backends.numba_cuda.elements import shape_of
from lowbitc.ir.core import Op, Value

LIMIT = 2**32  # flat offsets are uint32


@dataclass
class Flat:
    """Conditions of the 32-bit unit path: `pre` uniform over the block (checked once),
    `unit` per unit (32-bit compares); `loads` maps a row value's id to its flat load."""

    pre: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    loads: dict[int, str] = field(default_factory=dict)

    def fits(self, dims: tuple[str, ...]) -> None:
        """Every flat offset of a tensor with these extents fits in 32 bits."""
        self.pre.append(f"{' * '.join(dims)} < {LIMIT}" if dims else "True")

    def window(self, start: str, extent: int) -> None:
        """start + [0, extent] neither negative nor 2^32 (so uint32 sums do not wrap)."""
        self.pre.append(f"0 <= {start} < {LIMIT - extent}")


def _through_views(ctx, v: Value, idx: tuple[str, ...]) -> tuple[Op, tuple[str, ...]] | None:
    """The load under broadcasts and dimension-keeping reshapes of `v`, and the index of
    its element that element `idx` of `v` reads."""
    while True:
        if v.id in ctx.scalars or v.id in ctx.bufs:
            return None
        op = ctx.lazy.get(v.id)
        if op is None:
            return None
        if op.opcode == "broadcast":
            v, idx = (
                op.operands[0],
                ctx.bcast(idx, shape_of(op.results[0].type), shape_of(op.operands[0].type)),
            )
            continue
        if op.opcode == "reshape":
            src, dst = shape_of(op.operands[0].type), op.attrs.shape
            if [d for d in src if d != 1] != [d for d in dst if d != 1]:
                return None
            kept = iter(i for i, d in zip(idx, dst, strict=False) if d != 1)
            v, idx = op.operands[0], tuple("0" if d == 1 else next(kept) for d in src)
            continue
        return (op, idx) if op.opcode == "load" else None


def row_load(ctx, flat: Flat, v: Value, idx: tuple[str, ...], row: tuple[str, str, str, str]):
    """Plan the unguarded flat load of row value `v` at `idx` (the unit's row and column)
    if it is a plain unmasked load of a 1-D or 2-D tensor; `row` is the unit's row as
    (64-bit start, extent, index name, uint32 row). Its bounds go to `flat` (a bound equal
    to the unit's own row check is skipped); returns whether it qualified."""
    got = _through_views(ctx, v, idx)
    if got is None:
        return False
    op, at = got
    t = ctx.tensor(op.operands[0])
    if op.attrs.masked or t.bits or len(t.dims) not in (1, 2) or t.interleaved:
        return False
    starts = [ctx.elem(s, ()) for s in op.operands[1:]]
    where = []
    sub = iter(at)
    for s, size, n in zip(starts, op.attrs.sizes, t.dims, strict=True):
        i = next(sub) if size > 0 else "0"
        if i == "0":
            flat.pre.append(f"0 <= {s} < {n}")
            where.append(f"U32({s})")
        elif (s, n, i) == row[:3]:
            where.append(row[3])
        else:
            g = ctx.src.tmp(f"{s} + {i}", "g")
            flat.unit.append(f"0 <= {g} < {n}")
            where.append(f"U32({g})")
    flat.fits(t.dims)
    i, n, j = (
        ("U32(0)", "U32(0)", where[0])
        if len(where) == 1
        else (where[0], f"U32({t.dims[1]})", where[1])
    )
    flat.loads[v.id] = f"ld_at({t.name}, {i}, {n}, {j}, 0)"
    return True
