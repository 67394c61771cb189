"""Bit-packing, the CPU's choice of packing: a packed tensor whose every read is a `load_codes`
window [BN, BK] feeding the weight side of a `dot` with few activation rows (a GEMV-like
reduction along K) is stored in the lanes packing (lowbitc.repack): each 16-code sub-vector
of a row then comes from one aligned vector load with a shift and a mask per lane, and odd
widths split into power-of-two bit planes. The choice is recorded on the loads
(`load_codes {packing="lanes16x128"}`); the compiled kernel transforms canonical words on
the host once per QTensor (`QTensor.packed_as`). Other tensors keep the canonical packing.
Codes of up to ROWS_MAX_BITS bits whose dot operand is a function of the code alone (a cast,
a table: no per-row or per-column operand) and whose windows cover whole blocks of 16 rows
take the rows packing instead (`packing="rows16"`): 16 rows per vector, so the dot
accumulates 16 outputs per vector with no horizontal sums. Codes of up to PLANES_MAX_BITS bits
whose weight is affine in the code bits (unsigned, two's complement and bipolar integers) take
the planes packing (`packing="planes16"`): every code bit in a plane of its own.
Run after `bitpack`, `lower-encode` and `dce` (every live packed read is a load_codes then).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from lowbitc.explain import note
from lowbitc.interp import evaluate
from lowbitc.ir.core import Kernel, Op, Value, walk
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TensorType, TileType, is_machine, numpy_dtype
from lowbitc.passes import row_index
from lowbitc.passes.base import register, rewrite
from lowbitc.repack import (
    LANES,
    Packing,
    PlanesPacking,
    RowsPacking,
    planes_format,
)
from lowbitc.signature import format_bits

# The lanes packing stores its steps in blocks of rows, the rows of a window (BN, or the
# largest power of two dividing it; at most MAX_TILE), so that a window is one run of memory:
# one stream per thread, not a stream per row 2 KB apart (Zen 4, 2 threads, streamed: the
# u4/nf4/f4e2m1fn/i4 mixture GEMV 0.87x, u5 0.89x, f6e3m2fn 0.85x the time of row by row;
# docs/performance.md). LANES_TILE, if set, overrides the choice (experiments; 0: row by row).
LANES_TILE: int | None = None
MAX_TILE = 128

# rows of `a` up to which the LLVM backend's fused dot decodes weights in registers (its
# MAX_ROWS); dots with more rows decode into a panel that reads the canonical packing
MAX_ROWS = 8
MAX_STEP = 128  # codes per step: one 512-bit vector of a 4-bit plane
ROWS_MAX_BITS = 4  # the rows packing's decode is one 16-entry permute per vector
_FUSIBLE = ELEMENTWISE | {"cast", "bitcast", "where", "lut"}


def _dots_fed(v_id: int, users: dict[int, list[tuple[Op, int]]]) -> list[tuple[Op, int]] | None:
    """The (dot, operand position) pairs value v reaches through elementwise ops and a
    transpose, or None when it reaches anything else."""
    stack, seen, dots = [v_id], set(), []
    while stack:
        vid = stack.pop()
        if vid in seen:
            continue
        seen.add(vid)
        for op, _ in users.get(vid, []):
            if op.opcode in _FUSIBLE:
                stack.extend(r.id for r in op.results)
            elif op.opcode == "transpose" and op.attrs.perm == (1, 0):
                for d, dpos in users.get(op.results[0].id, []):
                    if d.opcode != "dot":
                        return None
                    dots.append((d, dpos))
            else:
                return None
    return dots


def _feeds_dot(v_id: int, users: dict[int, list[tuple[Op, int]]]) -> bool:
    """Whether value v reaches `dot(a, transpose(.), acc)` as the weights through elementwise
    ops only, with at most MAX_ROWS rows of `a`."""
    dots = _dots_fed(v_id, users)
    return bool(dots) and all(pos == 1 and d.operands[0].type.shape[0] <= MAX_ROWS
                              for d, pos in dots)


def _feeds_int_dot(v_id: int, users: dict[int, list[tuple[Op, int]]]) -> bool:
    """Whether value v is only the weights of integer (i32) dots, any number of rows."""
    dots = _dots_fed(v_id, users)
    return bool(dots) and all(pos == 1 and d.results[0].type.dtype == "i32" for d, pos in dots)


def _derived_ops(v_id: int, users: dict[int, list[tuple[Op, int]]]) -> list[Op]:
    """The ops between value v and the dot (those computed from v)."""
    derived, stack, ops = {v_id}, [v_id], []
    while stack:
        for op, _ in users.get(stack.pop(), []):
            if op.opcode in _FUSIBLE and op.results[0].id not in derived:
                ops.append(op)
                derived.update(r.id for r in op.results)
                stack.extend(r.id for r in op.results)
    return ops


def _code_ops(v_id: int, users: dict[int, list[tuple[Op, int]]]) -> list[Op] | None:
    """The ops between value v and the dot, if none takes a tile operand that is not itself
    computed from v (the dot's weight is then a function of the code alone), else None."""
    ops = _derived_ops(v_id, users)
    derived = {v_id} | {r.id for op in ops for r in op.results}
    if all(o.id in derived or not isinstance(o.type, TileType) for op in ops for o in op.operands):
        return ops
    return None


def _row_indexed(load: Op, order: dict[int, int], defs: dict[int, Op],
                 users: dict[int, list[tuple[Op, int]]], min_rows: int = row_index.MIN_ROWS
                 ) -> bool:
    """Whether the dot's weight is a function of the code and of a small index per row that
    takes few tables (row_index.py: a mixture of formats' table index), for dots of at least
    `min_rows` rows of `a`."""
    dots = _dots_fed(load.results[0].id, users)
    if not dots or any(d.operands[0].type.shape[0] < min_rows for d, _ in dots):
        return False
    ops = sorted(_derived_ops(load.results[0].id, users), key=lambda o: order[id(o)])
    roots = [r for op in ops for r in op.results
             if any(u.opcode == "transpose" for u, _ in users.get(r.id, []))]
    return len(roots) == 1 and row_index.tables(load, ops, roots[0], defs) is not None


def code_values(src: Value, bits: int, ops: list[Op], root: Value,
                defs: dict[int, Op]) -> np.ndarray | None:
    """`root` (computed from the codes `src` by `ops`, in program order) for every code,
    evaluated at compile time; None when an operand outside them is not a constant."""
    inside = {src.id} | {r.id for op in ops for r in op.results}
    consts = []
    for op in ops:
        for o in op.operands:
            if o.id in inside:
                continue
            d = defs.get(o.id)
            if d is None or d.opcode != "const":
                return None
            consts.append(d)
    env = {src.id: np.arange(1 << bits).astype(numpy_dtype(src.type.dtype))}
    evaluate(consts + ops, env)
    return np.asarray(env[root.id]).reshape(-1)


def _weight_values(load: Op, ops: list[Op], order: dict[int, int], defs: dict[int, Op],
                   users: dict[int, list[tuple[Op, int]]]) -> np.ndarray | None:
    """The dot's weight for every code (the ops between the codes and the dot evaluated at
    compile time), or None when a scalar operand is not a constant."""
    src = load.results[0]
    inside = {src.id} | {r.id for op in ops for r in op.results}
    roots = [v for v in inside if any(u.opcode == "transpose" for u, _ in users.get(v, []))]
    if len(roots) != 1:
        return None
    root = next(r for op in ops for r in op.results if r.id == roots[0]) if roots[0] != src.id \
        else src
    return code_values(src, load.attrs.bits, sorted(ops, key=lambda o: order[id(o)]), root,
                       defs)


def choose(k: Kernel) -> dict[int, Packing | RowsPacking]:
    """{param id: packing} for the packed tensor params that take the lanes packing."""
    users: dict[int, list[tuple[Op, int]]] = {}
    order: dict[int, int] = {}
    defs: dict[int, Op] = {}
    for op in walk(k.body.ops):
        order[id(op)] = len(order)
        defs.update((r.id, op) for r in op.results)
        for i, v in enumerate(op.operands):
            users.setdefault(v.id, []).append((op, i))
    out = {}
    for p in k.params:
        t = p.type
        if not isinstance(t, TensorType) or is_machine(t.dtype) or len(t.shape) != 2:
            continue
        loads = users.get(p.id, [])
        where = loads[0][0].loc if loads else k.loc
        # integer (i32) dots: the byte dot reads the rows packing for any number of rows
        int_dot = bool(loads) and all(op.opcode == "load_codes"
                                      and _feeds_int_dot(op.results[0].id, users)
                                      for op, _ in loads)
        # 8-bit codes keep the canonical packing: bytes in order, which a widening byte load
        # (`vpmovzxbd`) reads as cheaply as one plane's shift and mask; those of integer dots
        # take the rows packing (16 rows' 4 bytes per vector: vpdpbusd's operand)
        why = ("8-bit codes: bytes in order are read as fast"
               if format_bits(t.dtype) == 8 and not int_dot
               else "not read by the kernel" if not loads
               else next(filter(None, (_blocker(op, pos, users, int_dot)
                                       for op, pos in loads)), ""))
        if why:
            note("param", p.name, "canonical packing", why, loc=where)
            continue
        bits = loads[0][0].attrs.bits
        trees = [_code_ops(op.results[0].id, users) for op, _ in loads]
        whole = all(op.attrs.sizes[0] % LANES == 0 and tree is not None
                    for (op, _), tree in zip(loads, trees, strict=True))
        if whole and int_dot:
            out[p.id] = RowsPacking(bits)  # the byte dot (VNNI) reads rows of any width
            note("param", p.name, f"{out[p.id].name} packing",
                 "the weights of integer dots, whole 16-row blocks: codes widened to bytes "
                 "for vpdpbusd, 16 rows per vector", loc=where)
            continue
        if bits <= ROWS_MAX_BITS and all(
            op.attrs.sizes[0] % LANES == 0 and tree is not None
            for (op, _), tree in zip(loads, trees, strict=True)
        ):
            affine = all(
                (vals := _weight_values(op, tree, order, defs, users)) is not None
                and planes_format(vals, bits)
                for (op, _), tree in zip(loads, trees, strict=True))
            out[p.id] = PlanesPacking(bits) if affine else RowsPacking(bits)
            note("param", p.name, f"{out[p.id].name} packing",
                 "a weight affine in the code bits: table dot over bit planes" if affine else
                 "a function of the code alone, whole 16-row blocks: 16 rows per vector",
                 loc=where)
            continue
        if all(op.attrs.sizes[0] % LANES == 0 and _row_indexed(op, order, defs, users)
               for op, _ in loads):
            out[p.id] = RowsPacking(bits)
            note("param", p.name, f"{out[p.id].name} packing",
                 "a function of the code and of a small index per row (one table over both), "
                 "whole 16-row blocks: 16 rows per vector", loc=where)
            continue
        step = math.gcd(MAX_STEP, *(op.attrs.sizes[1] for op, _ in loads))
        rows = math.gcd(*(op.attrs.sizes[0] for op, _ in loads))
        tile = LANES_TILE if LANES_TILE is not None else min(rows & -rows, MAX_TILE)
        out[p.id] = Packing(bits, step, tile if tile > 1 else 0)
        note("param", p.name, f"{out[p.id].name} packing",
             f"{bits}-bit codes" if bits > ROWS_MAX_BITS else
             "windows of rows not whole 16-row blocks"
             if all(tree is not None for tree in trees) else
             "a function of the code and of a small index per row, with fewer than "
             f"{row_index.MIN_ROWS} rows of a: a table per row, looked up with one permute"
             if all(_row_indexed(op, order, defs, users, 1) for op, _ in loads) else
             "the weight takes tile operands besides the codes (scales, zero points)",
             loc=where)
    return out


def _blocker(op: Op, pos: int, users: dict[int, list[tuple[Op, int]]],
             int_dot: bool = False) -> str:
    """Why a read of a packed param keeps the canonical packing, or '' if it does not
    (`int_dot`: every read feeds integer dots, which take any number of rows)."""
    if op.opcode != "load_codes" or pos != 0:
        return f"also used by {op.opcode} at {op.loc}" if op.loc else f"also used by {op.opcode}"
    if op.attrs.masked:
        return f"the load at {op.loc} is masked"
    if len(op.attrs.sizes) != 2 or not op.attrs.sizes[0]:
        return f"the load at {op.loc} is not a 2-D window"
    if op.attrs.sizes[1] % 32:
        return f"the load at {op.loc} reads {op.attrs.sizes[1]} codes per row, not a multiple of 32"
    if not (int_dot or _feeds_dot(op.results[0].id, users)):
        return (f"the load at {op.loc} does not feed dot(a, transpose(E)) through elementwise "
                f"ops with at most {MAX_ROWS} rows of a")
    return ""


@register("bitpack-lanes")
def bitpack_lanes(k: Kernel) -> Kernel:
    """Weights read by GEMV-like dots take the lanes packing (recorded on their load_codes)."""
    chosen = choose(k)
    if not chosen:
        return k

    def rule(op: Op, b, defs):
        if op.opcode != "load_codes" or op.operands[0].id not in chosen:
            return None
        attrs = replace(op.attrs, packing=chosen[op.operands[0].id].name)
        return (b.emit("load_codes", *op.operands, attrs=attrs),)

    return rewrite(k, rule)
