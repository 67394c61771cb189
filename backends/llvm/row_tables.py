"""Row tables: the part of a fused decode tree that is a function of the code and of values
constant along the window's K axis (one per row), tabulated per row.

A per-group mixture of formats decodes each row's group with the format its index names
(`where(tb == 1, view(c, W1), ...)` with `tb` a [BN, 1] tile, lowbitc/kernels/matmul_mix.lbk);
evaluated per code, that is every member's decode and a select per member for every 16 codes.
But such a value takes only 2^bits values in a row. Every op of E whose operands are the
codes, code tables (decode.py), other row-table values, constants and leaves constant along K
is a row table; per row of the window, each row table E reads is made once (16 entries per
register) and every 16 codes then cost one permute of it, as a code-book format's do.

The row's table is made one of two ways:
- tabulated: when every leaf is computed from one small-integer tile S of the window's rows
  (u8, i8 or bool: the mixture's loaded table index) by elementwise ops and reshapes with
  constants, the reference interpreter evaluates the row table for every value of S and
  every code at compile time; a row then loads its table from that constant at S[row]
  (one byte load and one vector load).
- evaluated: otherwise, E's row-table ops run once per row on the vector of all codes with
  the row's leaf values splatted.
AVX-512 and codes of up to 5 bits only (otherwise the tree is evaluated per code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lowbitc.backends.llvm import decode
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.fused_leaves import splat, vector_op
from lowbitc.backends.llvm.handlers import Env, convert, vtype
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.interp import evaluate as interpret
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TileType, numpy_dtype
from lowbitc.passes.row_index import SOURCES  # row tiles a table is tabulated over: values

OPS = decode.EXACT - {"lut"}  # elementwise ops evaluated on the table's lanes as on a code's
LANES = 16  # entries per permute register
# up to 32 entries: one permute per 16 codes (64 take two and a select, more than the
# conversion and arithmetic they would replace; decode.code_tables)
MAX_BITS = 5
MAX_WORDS = 1 << 13  # words of one tabulated table (32 KiB)


class RowTables(NamedTuple):
    """The values of E computed per row on the table of codes (`ops`, ids) and those of them
    the per-code evaluation looks up (`wanted`: E itself or values read by the rest of E)."""

    ops: frozenset[int]
    wanted: frozenset[int]


NONE = RowTables(frozenset(), frozenset())


def _bits(codes: Op) -> int:
    return codes.attrs.bits if codes.opcode == "load_codes" else 8


def find(tree: list[Op], codes: Op, root: Value, tables: dict,
         spaces: dict[int, tuple[int, ...]] | str) -> RowTables:
    """E's row-table values (tree in program order, `tables` its code tables, `spaces` the
    shape each value is computed in: fusion_plan.row_spaces); NONE when nothing is one."""
    if (not decode.table_permutes() or codes.opcode != "load_codes"
            or _bits(codes) > MAX_BITS or isinstance(spaces, str)
            or any(op.opcode in ("transpose", "codes") for op in tree)):
        return NONE  # (byte windows read codes in another lane order: fused_windows.py)
    shape = tuple(root.type.shape)
    src = codes.results[0].id
    inside = {op.results[0].id for op in tree}
    rows: set[int] = set()
    for op in tree:
        rid = op.results[0].id
        if rid in tables or op.opcode not in OPS or spaces.get(rid) != shape:
            continue
        kinds = [_kind(v, src, tables, rows, inside, shape) for v in op.operands]
        if None not in kinds and ("row" in kinds or "leaf" in kinds):
            rows.add(rid)
    used = {v.id for op in tree if op.results[0].id not in rows for v in op.operands}
    dtypes = {op.results[0].id: op.results[0].type.dtype for op in tree}
    wanted = frozenset(r for r in rows
                       if (r in used or r == root.id) and dtypes[r] in decode.WORD)
    return RowTables(frozenset(rows), wanted) if wanted else NONE


def _kind(v: Value, src: int, tables: dict, rows: set[int], inside: set[int],
          shape: tuple[int, ...]) -> str | None:
    """How operand v reaches a row table: the codes or a code table ("code"), a row-table
    value ("row"), a scalar ("scalar"), a leaf constant along K ("leaf"), or None (a value
    that varies along K other than through the code)."""
    if v.id == src or v.id in tables:
        return "code"
    if v.id in rows:
        return "row"
    if v.id in inside:
        return None
    if not isinstance(v.type, TileType):
        return "scalar"
    own = (1,) * (len(shape) - len(v.type.shape)) + tuple(v.type.shape)
    return "leaf" if len(own) == len(shape) and own[-1] == 1 else None


# the GEMM panel's decode (panel.py) looks E up in a table per row and window when E is a
# function of the code and per-row leaves (a code table minus the row's zero point times its
# scale: one permute per 16 codes instead of a permute, a subtract and a multiply). u4 with
# zero points, M = 16, Zen 4, 2 threads: 0.955-0.97x the time, M = 128 0.98x; nf4, u3, u5
# (two registers a row) and i4 0.96-1.01x. Each weight is rounded once, as before: the
# results are bit for bit the same.
# AVX-512 only: compiled for Zen 3 (AVX2, 8-entry permutes and selects) the u4 GEMM ran
# 0.99-1.01x the time on Zen 4 (no gain measured).
PANEL = True


def of_panel(plan) -> RowTables:
    """The row tables the panel decode looks up: E's, as found before the register dot moved
    a row scale out of them (Plan.whole_tables); NONE when it has none, without AVX-512 or
    with PANEL off."""
    return plan.whole_tables if PANEL and decode.permutes() else NONE


def panel_note(plan) -> str:
    """What explain adds to the panel's path when it looks up row tables."""
    return describe(dataclasses.replace(plan, row_tables=of_panel(plan)))


def describe(plan) -> str:
    """What explain adds to a fused dot's path ("" without row tables)."""
    if not plan.row_tables.wanted:
        return ""
    return (", the decode a table per row (one permute per 16 codes)" if decode.permutes()
            else ", the decode a table per row (AVX2: a permute per 8 entries and 8 codes)")


def by_row(env: Env, plan) -> Callable[[str], dict[int, list[str]]] | None:
    """`tables(j)`: row j's tables, for each wanted value of plan.row_tables its <16 x i32>
    registers (2^bits entries, repeated to 16); None when E has no row tables."""
    if not plan.row_tables.wanted:
        return None
    found = tabulated(env.defs, plan)
    if found is not None:
        source, made = found
        names = {rid: _constant(env, t) for rid, t in made.items()}
        return lambda j: _load(env, plan, source, names, j)
    split = _split(env.defs, plan)
    if split is not None:
        first, (source, made) = split
        names = {rid: _constant(env, t) for rid, t in made.items()}
        return lambda j: _evaluate(env, plan, j, _load(env, first, source, names, j))
    return lambda j: _evaluate(env, plan, j)


def _split(defs: dict[int, Op], plan):
    """(the plan of E's first row tables, what `tabulated` gives for them) when the row
    tables that read no leaf computed at run time (the mixture's member decodes, selected by
    the table index) tabulate and the rest (a zero point subtracted) can be evaluated on them
    per row: one register of table a row; else None."""
    if _width(plan) != LANES:
        return None
    late: set[int] = set()
    for v in _leaves(plan):
        if not isinstance(v.type, TileType):
            if not _const(v, defs):
                late.add(v.id)
            continue
        ops = _chain(v, defs)
        values = [v] + [op.operands[[isinstance(u.type, TileType) for u in op.operands]
                                    .index(True)] for op in ops]
        if not any(u.type.dtype in SOURCES for u in values):
            late.add(v.id)
    first: set[int] = set()
    for op in plan.tree:
        rid = op.results[0].id
        if rid in plan.row_tables.ops and not any(
                v.id in late or (v.id in plan.row_tables.ops and v.id not in first)
                for v in op.operands):
            first.add(rid)
    rest = [op for op in plan.tree
            if op.results[0].id in plan.row_tables.ops and op.results[0].id not in first]
    wanted = {v.id for op in rest for v in op.operands if v.id in first}
    if not late or not rest or not wanted:
        return None
    sub = dataclasses.replace(plan, row_tables=RowTables(frozenset(first), frozenset(wanted)))
    found = tabulated(defs, sub)
    return None if found is None else (sub, found)


def _width(plan) -> int:
    return max(LANES, 1 << _bits(plan.codes))


def _leaves(plan) -> list[Value]:
    """The operands of E's row-table ops computed outside E (tiles and scalars)."""
    inner = {plan.codes.results[0].id, *plan.tables, *plan.row_tables.ops}
    out: dict[int, Value] = {}
    for op in plan.tree:
        if op.results[0].id in plan.row_tables.ops:
            out.update((v.id, v) for v in op.operands if v.id not in inner)
    return list(out.values())


def _chain(v: Value, defs: dict[int, Op]) -> list[Op]:
    """The ops computing tile v from one tile operand and constants (elementwise ops and
    reshapes), v's own first: v is a function of the last op's tile operand."""
    ops = []
    while True:
        op = defs.get(v.id)
        if op is None or (op.opcode not in OPS and op.opcode != "reshape"):
            return ops
        tiles = [u for u in op.operands if isinstance(u.type, TileType)]
        if len(tiles) != 1 or not all(_const(u, defs) for u in op.operands if u is not tiles[0]):
            return ops
        ops.append(op)
        v = tiles[0]


def _const(v: Value, defs: dict[int, Op]) -> bool:
    d = defs.get(v.id)
    return not isinstance(v.type, TileType) and d is not None and d.opcode == "const"


def tabulated(defs: dict[int, Op], plan):
    """(S, {wanted id: uint32 table [values of S, width]}) when every leaf of the row tables
    is a constant or computed from one small-integer tile S of the window's rows; else None."""
    rows = plan.root.type.shape[0]
    chains, consts = [], []
    for v in _leaves(plan):
        if not isinstance(v.type, TileType):
            if not _const(v, defs):
                return None  # a run-time scalar: evaluate per row
            consts.append(defs[v.id])
            continue
        ops = _chain(v, defs)
        values = [v] + [op.operands[[isinstance(u.type, TileType) for u in op.operands]
                                    .index(True)] for op in ops]
        chains.append((ops, {u.id: (i, u) for i, u in enumerate(values)
                             if u.type.dtype in SOURCES and row_dim(u, rows) is not None}))
    common = set.intersection(*(set(c) for _, c in chains)) if chains else set()
    if not common:
        return None
    ops0, cand0 = chains[0]
    source = min((cand0[i][1] for i in common), key=lambda u: SOURCES[u.type.dtype])
    n = _width(plan)
    if SOURCES[source.type.dtype] * n > MAX_WORDS:
        return None
    steps: list[Op] = []
    for ops, cand in chains:  # each leaf's ops from the source up, in order
        steps += [op for op in reversed(ops[:cand[source.id][0]]) if op not in steps]
    consts += [defs[u.id] for op in steps for u in op.operands if not isinstance(u.type, TileType)]
    return source, _tabulate(plan, source, consts, steps, n)


def row_dim(v: Value, rows: int) -> int | None:
    """The dim of tile v that runs along the window's rows (v holds one value per row)."""
    shape = v.type.shape
    if int(np.prod(shape)) != rows:
        return None
    big = [i for i, d in enumerate(shape) if d != 1]
    return big[0] if len(big) == 1 else 0 if rows == 1 else None


def _tabulate(plan, source: Value, consts: list[Op], steps: list[Op],
              n: int) -> dict[int, np.ndarray]:
    """The wanted row tables for every value of the source (rows) and code (columns), by the
    reference interpreter (uint32 bit patterns)."""
    count = SOURCES[source.type.dtype]
    values = np.arange(count).astype(np.uint8).view(numpy_dtype(source.type.dtype)) \
        if source.type.dtype != "bool" else np.array([False, True])
    bits = _bits(plan.codes)
    src = plan.codes.results[0]
    env = {source.id: values.reshape(count, 1),
           src.id: (np.arange(n) % (1 << bits)).astype(numpy_dtype(src.type.dtype))
           .reshape(1, n)}
    for rid, table in plan.tables.items():
        word = decode.WORD[_dtype_of(plan, rid)]
        env[rid] = np.resize(np.asarray(table, np.uint32), n).view(word).reshape(1, n)
    interpret(consts, env)
    for op in steps:
        if op.opcode == "reshape":  # the same values, one per row
            env[op.results[0].id] = env[op.operands[0].id]
        else:
            interpret([op], env)
    interpret([op for op in plan.tree if op.results[0].id in plan.row_tables.ops], env)
    return {rid: np.broadcast_to(env[rid], (count, n))
            .astype(decode.WORD[_dtype_of(plan, rid)]).view(np.uint32)
            for rid in plan.row_tables.wanted}


def _constant(env: Env, table: np.ndarray) -> str:
    """A private constant global holding `table` (rows of whole 64-byte lines)."""
    em = env.em
    name = f"@rowtab{len(em.globals)}"
    items = ", ".join(f"i32 {int(w)}" for w in table.reshape(-1).view(np.int32))
    em.globals.append(f"{name} = private unnamed_addr constant [{table.size} x i32] "
                      f"[{items}], align 64")
    return name


def _load(env: Env, plan, source: Value, names: dict[int, str], j: str
          ) -> dict[int, list[str]]:
    """Row j's tables read from the tabulated constants at the source's value for row j."""
    em = env.em
    n = _width(plan)
    buf = env.get(source)
    dim = row_dim(source, plan.root.type.shape[0])
    s = em.load_elem(buf, em.val(f"mul i64 {j}, {buf.strides[dim]}"))
    index = em.val(f"zext {vtype(source.type.dtype)} {s} to i64")
    first = em.val(f"mul i64 {index}, {n}")
    out = {}
    for rid, name in names.items():
        regs = []
        for r in range(0, n, LANES):
            p = em.val(f"getelementptr inbounds i32, ptr {name}, "
                       f"i64 {em.val(f'add i64 {first}, {r}')}")
            regs.append(em.val(f"load <{LANES} x i32>, ptr {p}, align 64"))
        out[rid] = regs
    return out


def _evaluate(env: Env, plan, j: str, known: dict[int, list[str]] | None = None
              ) -> dict[int, list[str]]:
    """Row j's tables evaluated at run time on the vector of all codes (from `known` row
    tables' registers, one each, on)."""
    em = env.em
    bits = _bits(plan.codes)
    n = _width(plan)
    codes = np.arange(n) % (1 << bits)
    src = plan.codes.results[0]
    vals = {src.id: _words(codes) if src.type.dtype in ("i32", "u32")
            else convert(em, _words(codes), "u32", src.type.dtype, n)}
    for rid, table in plan.tables.items():
        dt = _dtype_of(plan, rid)
        words = _words(np.resize(np.asarray(table, np.uint32), n))
        vals[rid] = em.val(f"bitcast <{n} x i32> {words} to {vtype(dt, n)}") \
            if dt == "f32" else words
    for rid, (words,) in (known or {}).items():
        vals[rid] = em.val(f"bitcast <{n} x i32> {words} to <{n} x float>") \
            if _dtype_of(plan, rid) == "f32" else words
    shape = tuple(plan.root.type.shape)
    for op in plan.tree:
        rid = op.results[0].id
        if rid not in plan.row_tables.ops or rid in vals:
            continue
        args = [vals[v.id] if v.id in vals else _leaf(env, v, shape, j, n)
                for v in op.operands]
        vals[rid] = vector_op(env, op, args, n)
    out = {}
    for rid in plan.row_tables.wanted:
        words = vals[rid]
        if _dtype_of(plan, rid) == "f32":
            words = em.val(f"bitcast <{n} x float> {words} to <{n} x i32>")
        out[rid] = [em.val(f"shufflevector <{n} x i32> {words}, <{n} x i32> poison, "
                           f"<{LANES} x i32> {_lanes(range(r, r + LANES))}")
                    for r in range(0, n, LANES)] if n > LANES else [words]
    return out


def _dtype_of(plan, rid: int) -> str:
    for op in plan.tree:
        if op.results[0].id == rid:
            return op.results[0].type.dtype
    return plan.root.type.dtype


def _words(values) -> str:
    return _lanes(int(np.int32(np.uint32(w))) for w in values)


def _lanes(values) -> str:
    return "<" + ", ".join(f"i32 {v}" for v in values) + ">"


def _leaf(env: Env, v: Value, shape: tuple[int, ...], j: str, n: int) -> str:
    """Leaf v (a scalar, or a tile constant along K) for row j, splatted to n lanes."""
    em = env.em
    x = env.get(v)
    if not isinstance(x, Buf):
        return splat(em, x, v.type.dtype, n)
    bv = broadcast_view(x, shape)
    return splat(em, em.load_elem(bv, em.val(f"mul i64 {j}, {bv.strides[0]}")), bv.dtype, n)
