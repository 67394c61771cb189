"""Word-aligned units: how the CUDA renderer turns element loops over packed codes into
whole-word loads with constant shifts.

A root loop (a store, or a tile written to shared memory) whose value reads packed codes
along its last dim runs over *units* of P consecutive columns, P = 32 / gcd(bits, 32) (one
uint32 word for u4, 3 words for 32 codes of u3). When the window starts on a word boundary
and the whole unit is inside every tensor it touches (one check per unit, uniform in the
row), each unit loads its words once and every code is a constant shift and mask of them;
bounds checks vanish from the elements (masks still apply). Otherwise the unit falls back to
the generic per-element code. The handlers of `load`, `load_codes` and `store` ask
`window_in_unit` whether they may take the fast path.

A unit written to an f16/bf16 shared tile (a decoded weight tile that `ldmatrix` reads) goes
out as one 16-byte store per 8 columns (`vector_store`), not 8 two-byte stores: with rows a
multiple of 8 halves apart, a two-byte store at one column by 32 lanes on different rows can
reach only 8 distinct banks (the row stride moves whole 16-byte chunks), a 4-way conflict
whatever the padding or unit order; 16-byte stores take one wavefront per 8 lanes when the 8
lanes' chunks cover the 32 banks (checked per warp in the simulator, `bank_trace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd

from lowbitc.backends.numba_cuda.interleave import code_bit
from lowbitc.ir.core import Value


@dataclass
class Unit:
    """The unit being rendered: first column `c0`, width `p`, column names -> offset,
    conditions that make the fast path valid, word loads to emit before the elements."""

    c0: str
    p: int
    cols: dict[str, int]
    outer: frozenset[str]
    depth: int
    conds: list[str] = field(default_factory=list)
    prologue: list[str] = field(default_factory=list)
    words: dict[tuple, str] = field(default_factory=dict)
    halves: list[str] = field(default_factory=list)  # bits of a 16-byte store being gathered


def unit_width(bits: list[int]) -> int:
    """Columns per unit for packed formats of these widths (0 if there are none)."""
    p = 0
    for b in bits:
        q = 32 // gcd(b, 32)
        p = q if p == 0 else p * q // gcd(p, q)
    return p if p <= 32 else 0


def packed_bits(ctx, values: list[Value]) -> list[int]:
    """Widths of the packed tensors whose codes the lazy values read (load_codes)."""
    seen, out, todo = set(), [], list(values)
    while todo:
        v = todo.pop()
        op = ctx.lazy.get(v.id)
        if op is None or v.id in seen:
            continue
        seen.add(v.id)
        if op.opcode == "load_codes":
            out.append(op.attrs.bits)
        todo.extend(op.operands)
    return out


def window_in_unit(ctx, starts: list[str], sizes, idx, dims) -> list[str] | None:
    """Global indices of an element whose window is checked once per unit (the unit's
    conditions are recorded), or None when the element is not on the unit's columns."""
    u = ctx.unit
    if u is None or not idx or sizes[-1] == 0 or idx[-1] not in u.cols:
        return None
    if not all(i in u.outer for i in idx[:-1]):  # rows must be known before the unit
        return None
    lead = list(idx[:-1])
    where, k = [], 0
    for s, size, n in zip(starts[:-1], sizes[:-1], dims[:-1], strict=True):
        if size > 0:
            g = f"{s} + {lead[k]}"
            k += 1
            cond = f"0 <= {g} < {n}"
        else:
            g, cond = s, f"0 <= {s} < {n}"
        where.append(g)
        if cond not in u.conds:
            u.conds.append(cond)
    first = f"{starts[-1]} + {u.c0}"
    cond = f"0 <= {first} and {first} + {u.p} <= {dims[-1]}"
    if cond not in u.conds:
        u.conds.append(cond)
    where.append(f"{first} + {u.cols[idx[-1]]}")
    return where


def unit_codes(ctx, t, starts: list[str], where: list[str], col: int) -> str:
    """Code `col` of the unit, a constant shift and mask of the unit's words (loaded once)."""
    u = ctx.unit
    b = t.bits
    first = f"{starts[-1]} + {u.c0}"
    aligned = f"({starts[-1]} * {b}) & 31 == 0"
    if aligned not in u.conds:
        u.conds.append(aligned)
    rows = where[:-1]

    def word(k: int) -> str:
        key = (t.name, tuple(rows), starts[-1], k)
        name = u.words.get(key)
        if name is None:
            name = u.words[key] = ctx.src.fresh("w")
            at = ", ".join([*rows, f"(({first}) * {b} >> 5) + {k}"])
            u.prologue.append(f"{name} = U32({t.name}[{at}])")
        return name

    bit = code_bit(b, col) if t.interleaved else col * b
    k, o = bit // 32, bit % 32
    mask = (1 << b) - 1
    x = word(k) if o == 0 else f"({word(k)} >> U32({o}))"
    if o + b > 32:
        x = f"({x} | ({word(k + 1)} << U32({32 - o})))"
    return x if o + b == 32 else f"({x} & U32({mask:#x}))"


VECTOR = 8  # halves per 16-byte shared store


def vector_store(ctx, buf, idx: tuple[str, ...], x: str) -> bool:
    """In a unit's fast path, element idx (value x) of an f16/bf16 shared tile joins the
    16-byte store of its 8 columns, emitted at the 8th (see the module doc); False (store it
    alone) off a unit, or when the chunk would not be 16 bytes inside one row: units of a
    multiple of 8 columns, rows a multiple of 8 halves apart, no stage base, and a swizzle
    (if any) that moves whole 8-half chunks."""
    u = ctx.unit
    if (u is None or buf.dtype not in ("f16", "bf16") or not idx or idx[-1] not in u.cols
            or u.p % VECTOR or buf.base or any(s % VECTOR for s in buf.strides()[:-1])
            or (buf.swizzle is not None and buf.swizzle[1] < 3)):
        return False
    j = u.cols[idx[-1]]
    src = ctx.src
    if j % VECTOR == 0:
        u.halves = []
    if len(u.halves) != j % VECTOR:
        raise AssertionError("unit columns rendered out of order")
    bits = f"U32(u16_from_f16(F16({x})))" if buf.dtype == "f16" else f"U32(U16({x}))"
    u.halves.append(src.tmp(bits, "hb"))
    if len(u.halves) == VECTOR:
        h = u.halves
        words = [src.tmp(f"{h[i]} | ({h[i + 1]} << U32(16))", "hw") for i in range(0, VECTOR, 2)]
        first = next(n for n, c in u.cols.items() if c == j - VECTOR + 1)
        off = ctx.offset(buf, (*idx[:-1], first))
        src.line(f"st_at_f16x8({buf.name}, U32(0), U32(0), U32({off}), I64(0), "
                 f"{', '.join(words)})")
    return True


def unit_loop(ctx, shape: tuple[int, ...], p: int, body) -> None:
    """Loop over units of p columns (strided by the thread count); see the module doc."""
    src = ctx.src
    rows, cols = 1, shape[-1]
    for d in shape[:-1]:
        rows *= d
    per_row = cols // p
    e = src.fresh("e")
    src.line(f"{e} = tid")
    with src.block(f"while {e} < {rows * per_row}:"), ctx.scope():
        if len(shape) > 1:
            q = src.tmp(f"{e} // {per_row}", "q")
            u = src.tmp(f"{e} - {q} * {per_row}", "u")
            lead = ctx.unravel(q, shape[:-1])
        else:
            q, u, lead = "0", e, ()
        c0 = src.tmp(f"{u} * {p}", "c")
        names = [src.tmp(f"{c0} + {j}", "c") for j in range(p)]
        unit = Unit(c0, p, {n: j for j, n in enumerate(names)}, frozenset(("0", *lead)),
                    src.depth)
        start = len(src.lines)
        src.depth += 1
        ctx.unit = unit
        try:
            with ctx.scope():
                for n in names:
                    body((*lead, n), f"{q} * {cols} + {n}" if lead else n)
        finally:
            ctx.unit = None
            src.depth -= 1
        fast = src.lines[start:]
        del src.lines[start:]
        if not unit.conds:
            pad = "    " * unit.depth
            src.lines += [pad + line for line in unit.prologue] + [x[4:] for x in fast]
        else:
            src.line(f"if {' and '.join(unit.conds)}:")
            pad = "    " * (unit.depth + 1)
            src.lines += [pad + line for line in unit.prologue] + fast
            with src.block("else:"):
                j = src.fresh("j")
                src.line(f"{j} = 0")
                with src.block(f"while {j} < {p}:"), ctx.scope():
                    n = src.tmp(f"{c0} + {j}", "c")
                    body((*lead, n), f"{q} * {cols} + {n}" if lead else n)
                    src.line(f"{j} += 1")
        src.line(f"{e} += nthr")


def unit_edge_mask(ctx, op, idx) -> str | None:
    """`True` for an edge mask `arange + k < lim` (or `<=`) on the unit's columns, with the
    unit condition that its last column passes: the mask grows with the column, so one
    compare per unit replaces one per element. None when `op` is no such mask."""
    u = ctx.unit
    if op.opcode not in ("lt", "le") or not idx or idx[-1] not in u.cols:
        return None
    x, lim = op.operands
    add = ctx.lazy.get(x.id)
    if lim.id not in ctx.scalars or add is None or add.opcode != "add" or x.type.dtype != "i64":
        return None
    ar, k = add.operands
    if ar.id in ctx.scalars:
        ar, k = k, ar
    ar_op = ctx.lazy.get(ar.id)
    if k.id not in ctx.scalars or ar_op is None or ar_op.opcode != "arange":
        return None
    shape = op.results[0].type.shape
    if ctx.bcast(idx, shape, ar.type.shape) != (idx[-1],) or x.type.shape != shape:
        return None
    last = f"{ctx.scalars[k.id]} + {u.c0} + {u.p - 1}"
    cond = f"{last} {'<' if op.opcode == 'lt' else '<='} {ctx.scalars[lim.id]}"
    if cond not in u.conds:
        u.conds.append(cond)
    return "True"
