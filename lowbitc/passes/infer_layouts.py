"""Layout inference: which thread-value layout every register tile has.

Constraints form an undirected networkx graph over tile values: an elementwise op ties its
result to every operand of the same shape; a loop ties each carried value's init, body
argument, yielded value and result; an `if` ties results to what each branch yields; `dot`
ties its accumulator to its result. Explicit layouts (`load(..., layout=L)`, `relayout(x, L)`)
anchor their component; every value of an anchored component takes that layout, and two
different anchors in one component are an error naming both source positions. `relayout`
ops are then removed: the types carry the layouts.
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx

from lowbitc.errors import DSLTypeError, SourceLoc
from lowbitc.ir.core import Kernel, Op, Region, Value, walk
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType
from lowbitc.passes.base import register, retype, rewrite

SAME_LAYOUT = ELEMENTWISE | {"cast", "bitcast", "codes", "where", "lut"}


def constraint_graph(k: Kernel) -> tuple[nx.Graph, dict[int, tuple[str, SourceLoc | None]]]:
    """The graph of tile values that must share a layout, and the explicit anchors."""
    g = nx.Graph()
    anchors: dict[int, tuple[str, SourceLoc | None]] = {}

    def tile(v: Value) -> bool:
        return isinstance(v.type, TileType)

    def tie(a: Value, b: Value) -> None:
        if tile(a) and tile(b) and a.type.shape == b.type.shape:
            g.add_edge(a.id, b.id)

    for region in (k.grid, k.body):
        for op in walk(region.ops):
            for v in op.results:
                if tile(v):
                    g.add_node(v.id)
            _constraints(op, tie, anchors)
    return g, anchors


def _constraints(op: Op, tie, anchors: dict) -> None:
    o = op.opcode
    if o in SAME_LAYOUT:
        for v in op.operands:
            tie(op.results[0], v)
    elif o == "relayout" or (o in ("load", "load_codes", "load_shared")
                             and getattr(op.attrs, "layout", "")):
        anchors[op.results[0].id] = (op.attrs.layout, op.loc)
    elif o == "dot":
        tie(op.operands[2], op.results[0])
    elif o == "for":
        body = op.regions[0]
        yielded = body.ops[-1].operands
        for j, res in enumerate(op.results):
            for other in (op.operands[3 + j], body.args[1 + j], yielded[j]):
                tie(res, other)
    elif o == "if":
        for r in op.regions:
            for res, y in zip(op.results, r.ops[-1].operands):
                tie(res, y)


def _where(loc: SourceLoc | None) -> str:
    return str(loc) if loc else "an unknown place"


@register("infer-layouts")
def infer_layouts(k: Kernel) -> Kernel:
    """Give every tile tied to an explicit layout that layout; drop `relayout` ops."""
    g, anchors = constraint_graph(k)
    layout_of: dict[int, str] = {}
    for comp in nx.connected_components(g):
        found = {}
        for vid in sorted(comp):
            if vid in anchors:
                text, loc = anchors[vid]
                found.setdefault(text, loc)
        if len(found) > 1:
            (a, la), (b, lb) = list(found.items())[:2]
            raise DSLTypeError(
                f"tiles that must share a layout were given two: {a} (at {_where(la)}) and "
                f"{b} (at {_where(lb)})", lb)
        if found:
            (text,) = found
            layout_of.update({vid: text for vid in comp})
    types = {}
    for region in (k.grid, k.body):
        for op in walk(region.ops):
            for v in op.results + tuple(a for r in op.regions for a in r.args):
                if v.id in layout_of and isinstance(v.type, TileType):
                    types[v.id] = replace(v.type, layout=layout_of[v.id])
    k = retype(k, types)
    return rewrite(k, lambda op, b, defs: op.operands if op.opcode == "relayout" else None)


__all__ = ["constraint_graph", "infer_layouts", "Region"]
