"""Weights that are a function of the code and of a small per-row index (bitpack_lanes.py):
the decode of a per-group mixture of formats, `where(tb == 1, view(c, W1), ...)` with `tb`
one table index per row. The LLVM backend's rows packing looks such a weight up in one table
over (index, code) (backends/llvm/rows_index.py) when the index takes few distinct tables;
`tables` finds that at compile time, as the backend's row tables do (row_tables.py).
"""

from __future__ import annotations

import numpy as np

from lowbitc.interp import evaluate
from lowbitc.ir.core import Op, Value
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType, numpy_dtype

SOURCES = {"bool": 2, "u8": 256, "i8": 256}  # index tiles: their values
MAX_BITS = 4  # one 16-entry table per index value
MAX_ENTRIES = 64  # four 16-word registers: two permutes and a select per 16 codes
# rows of `a` from which the shared table wins: its lookup (two permutes and a select per 16
# codes for 4 tables) is shared by the rows of `a`, the lanes packing's per-row table (one
# permute) is not, nor its per-row horizontal sums. CPU time of one thread, 4096^2 g64,
# u4/nf4/f4e2m1fn/i4, in cache (lanes / shared table): M=1 606/790 us (lanes kept), M=2
# 870/792, M=3 2160/1191, M=4 2135/1462, M=8 4677/2202
MIN_ROWS = 2
_OPS = ELEMENTWISE | {"cast", "bitcast", "where"}


def indexed(values: np.ndarray, bits: int) -> tuple[int, int, np.ndarray] | None:
    """(D, r0, table) for tables `values` [index values, >= 2^bits] (one row per index value):
    every index >= D reads row r0 < D, and `table` is rows 0..D-1's first 2^bits entries,
    flat (entry index << bits | code); None when that takes more than MAX_ENTRIES entries."""
    n = 1 << bits
    rows = np.asarray(values)[:, :n]
    for d in range(1, min(len(rows), MAX_ENTRIES // n) + 1):
        rest = rows[d:]
        same = [r for r in range(d) if (rest == rows[r]).all()]
        if len(rest) == 0 or same:
            return d, same[0] if len(rest) else 0, rows[:d].reshape(-1)
    return None


def tables(load: Op, ops: list[Op], root: Value, defs: dict[int, Op]) -> np.ndarray | None:
    """The weight `root` (computed from the codes of `load` by `ops`, program order) for
    every value of one index tile of the window's rows (rows) and every code (columns), when
    every other tile operand of `ops` is computed from that index by elementwise ops and
    reshapes with constants, bits <= MAX_BITS and `indexed` takes it; else None."""
    bits = load.attrs.bits
    rows = load.attrs.sizes[0]
    inside = {load.results[0].id} | {r.id for op in ops for r in op.results}
    if bits > MAX_BITS or root.type.dtype != "f32" or not ops:
        return None
    leaves = {v.id: v for op in ops for v in op.operands if v.id not in inside}
    walks, consts = [], []
    for v in leaves.values():
        d = defs.get(v.id)
        if not isinstance(v.type, TileType):
            if d is None or d.opcode != "const":
                return None
            consts.append(d)
            continue
        if v.type.shape[-1] != 1:
            return None  # varies along K
        walks.append(_walk(v, rows, defs))
    common = set.intersection(*(set(w[1]) for w in walks)) if walks else set()
    if not common:
        return None
    source = min((u for u, _ in walks[0][1].values() if u.id in common),
                 key=lambda u: SOURCES[u.type.dtype])
    chains = []
    for chain, found in walks:  # each leaf's ops from the source up
        reader = found[source.id][1]
        chain = chain[:chain.index(reader) + 1] if reader is not None else []
        chains.append(chain)
        consts += [defs[w.id] for op in chain for w in op.operands
                   if not isinstance(w.type, TileType)]
    count = SOURCES[source.type.dtype]
    values = np.arange(count).astype(np.uint8).view(numpy_dtype(source.type.dtype)) \
        if source.type.dtype != "bool" else np.array([False, True])
    src = load.results[0]
    env = {source.id: values.reshape(count, 1),
           src.id: np.arange(1 << bits).astype(numpy_dtype(src.type.dtype)).reshape(1, -1)}
    evaluate(consts, env)
    for chain in chains:
        for op in reversed(chain):
            if op.results[0].id in env:
                continue
            if op.opcode == "reshape":  # the same values, one per row
                env[op.results[0].id] = env[op.operands[0].id]
            else:
                evaluate([op], env)
    evaluate(ops, env)
    out = np.broadcast_to(env[root.id], (count, 1 << bits)).astype(np.float32)
    return out if indexed(out.view(np.uint32), bits) is not None else None


def _walk(v: Value, rows: int, defs: dict[int, Op]) -> tuple[list[Op], dict[int, tuple]]:
    """The ops computing tile v from one tile operand and scalar constants (v's own first),
    and the index tiles met on the way {id: (tile, the op that read it or None for v)}."""
    chain, found, u, reader = [], {}, v, None
    while True:
        if u.type.dtype in SOURCES and int(np.prod(u.type.shape)) == rows:
            found[u.id] = (u, reader)
        d = defs.get(u.id)
        tiles = [w for w in d.operands if isinstance(w.type, TileType)] if d else []
        if (d is None or (d.opcode not in _OPS and d.opcode != "reshape") or len(tiles) != 1
                or any((c := defs.get(w.id)) is None or c.opcode != "const"
                       for w in d.operands if w is not tiles[0])):
            return chain, found
        chain.append(d)
        u, reader = tiles[0], d
