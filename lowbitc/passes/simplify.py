"""Clean-ups: common-subexpression elimination and dead-code elimination."""

from __future__ import annotations

from dataclasses import replace

from lowbitc.ir.core import Kernel, Op, Region, renumber, walk
from lowbitc.ir.types import TileType
from lowbitc.passes.base import register

# never removed or merged
EFFECTS = frozenset({"store", "yield", "for", "if", "store_shared", "store_codes", "sync"})
_NO_CSE = EFFECTS | {"load", "load_codes", "load_shared", "gather", "alloc_shared"}


def _row_load(op: Op) -> bool:
    """A global load of at most one element per row (a row's scale, index or block header):
    merged with an identical earlier load of its region when no write lies between. Wider
    windows are left alone: a fused dot reads its codes window in registers, and one window
    shared by two dots would fuse neither."""
    t = op.results[0].type if op.results else None
    return (op.opcode in ("load", "load_codes")
            and (not isinstance(t, TileType) or t.shape[-1] == 1))


@register("cse")
def cse(k: Kernel) -> Kernel:
    """Reuse the result of an identical pure op computed earlier in an enclosing scope, and of
    an identical row load earlier in the same region with no write (or loop, branch, sync)
    between."""
    env: dict[int, object] = {}

    def region(r: Region, outer: dict) -> Region:
        table = dict(outer)  # values of enclosing regions are in scope; inner ones are not
        loads: dict = {}  # this region's row loads since the last op that may write memory
        ops = []
        for op in r.ops:
            op = replace(op, operands=tuple(env.get(v.id, v) for v in op.operands))
            op = replace(op, regions=tuple(region(x, table) for x in op.regions))
            merge = _row_load(op)
            if (op.opcode not in _NO_CSE or merge) and not op.regions:
                key = (op.opcode, tuple(v.id for v in op.operands), op.attrs,
                       tuple(x.type for x in op.results))
                seen = loads if merge else table
                prev = seen.get(key)
                if prev is not None:
                    env.update({a.id: b for a, b in zip(op.results, prev.results)})
                    continue
                seen[key] = op
            if op.opcode in EFFECTS:
                loads.clear()
            ops.append(op)
        return Region(r.args, tuple(ops))

    return renumber(replace(k, grid=region(k.grid, {}), body=region(k.body, {})))


@register("dce")
def dce(k: Kernel) -> Kernel:
    """Drop pure ops whose results are never used (to a fixed point)."""
    while True:
        used = {v.id for r in (k.grid, k.body) for op in walk(r.ops) for v in op.operands}

        def prune(r: Region, used: set[int] = used) -> Region:
            ops = []
            for op in r.ops:
                if op.opcode not in EFFECTS and not any(x.id in used for x in op.results):
                    continue
                ops.append(replace(op, regions=tuple(prune(x) for x in op.regions)))
            return Region(r.args, tuple(ops))

        new = replace(k, grid=prune(k.grid), body=prune(k.body))
        if new == k:
            return renumber(k)  # canonical ids again, so the text parses back
        k = new
