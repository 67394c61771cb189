"""Accumulators in registers across K tiles: a loop-carried tile that only mma C fragments and
elementwise ops at the same element ever touch stays in each thread's C fragment registers.

The rule (`register_carried`, on the IR, no kernel names): a `for` carries a 2-D tile T
whose new value is a chain of elementwise ops (`ELEMENTWISE`, `where`, `cast`) of T's shape
over T itself, results of tensor-core dots of T's shape (into any accumulator, T or a chain
value included: `acc = dot(a, b, acc)`, or `part = dot(a, b, zeros)` then `acc = acc + part
* s`) and values of other shapes or from outside the loop (broadcast scale rows, zero-point
columns: read by index as anywhere); every such dot has the same warp tiling, and neither T
nor any chain value is read by anything but the chain and the loop's `yield`. Then each
thread holds, for register v of the tiling's C layout, element `lc(tid, v)` of T, of the dot
results and of the chain, as one local (f32; i32 for .s8 dots): the dot keeps its
accumulators (no shared tile, no barrier pair per K tile), the yield computes the chain per
register, and after the loop the registers are written once to a shared tile (conflict-free:
`mma_banks`) that the epilogue (the store) reads as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.backends.numba_cuda.mma_dot import Tiling, _at, mma_tiling, thread_coords
from lowbitc.backends.numba_cuda.source import numba_type
from lowbitc.ir.core import Kernel, Op, Value, walk
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType

CHAIN_OPS = ELEMENTWISE | {"where", "cast"}


@dataclass(frozen=True)
class Carried:
    """Loop-carried tile `index` of a `for` kept in C fragment registers of `tiling`; `dots`:
    the ids of the dots whose results stay in registers with it."""

    index: int
    tiling: Tiling
    dots: frozenset[int]


def register_carried(k: Kernel, threads: int) -> dict[int, list[Carried]]:
    """{id(for op): its carried tiles that stay in registers} (module doc's rule)."""
    users: dict[int, list[Op]] = {}
    for op in walk(k.body.ops):
        for v in op.operands:
            users.setdefault(v.id, []).append(op)
    out: dict[int, list[Carried]] = {}
    for op in walk(k.body.ops):
        if op.opcode != "for":
            continue
        region = op.regions[0]
        local = {r.id: o for o in region.ops for r in o.results}
        ret = next((o for o in region.ops if o.opcode == "yield"), None)
        if ret is None:
            continue
        for j, (arg, new) in enumerate(zip(region.args[1:], ret.operands, strict=False)):
            found = _chain(arg, new, local, threads)
            if found is None:
                continue
            chain, dots, tiling = found
            inside = {id(local[v]) for v in chain} | {id(ret)}
            if all(id(u) in inside for v in (*chain, arg.id) for u in users.get(v, [])):
                out.setdefault(id(op), []).append(Carried(j, tiling, frozenset(dots)))
    return out


def _chain(arg: Value, new: Value, local: dict, threads: int):
    """(chain value ids, dot op ids, tiling) of the tile `new` carried in `arg`, or None."""
    t = arg.type
    if not isinstance(t, TileType) or len(t.shape) != 2 or new.type != t:
        return None
    chain, dots, tilings, todo = set(), set(), {}, [new]
    while todo:
        v = todo.pop()
        if v.id == arg.id or v.id in chain:
            continue
        d = local.get(v.id)
        if d is None or not isinstance(v.type, TileType) or tuple(v.type.shape) != t.shape:
            continue  # from outside the loop, or another shape: read by index
        if d.opcode == "dot":
            tiling = mma_tiling(d, threads)
            if tiling is None:
                return None
            tilings[(tiling.M, tiling.N, tiling.WM, tiling.WN, tiling.kind.fn)] = tiling
            dots.add(id(d))
            chain.add(v.id)
            todo.append(d.operands[2])
        elif d.opcode in CHAIN_OPS:
            chain.add(v.id)
            todo.extend(d.operands)
        else:
            return None
    if not dots or len(tilings) != 1:
        return None
    return chain, dots, next(iter(tilings.values()))


class Frag:
    """A tile held in C fragment registers: register v of this thread is element idxs[v]."""

    def __init__(self, ctx, carried: Carried, init: Value):
        src = ctx.src
        lc = carried.tiling.layouts()[2]
        base = tuple(src.tmp(e, "fc") for e in thread_coords(lc, "tid"))
        self.carried = carried
        self.R = numba_type(init.type.dtype)  # f32 (mma .f16/.bf16) or i32 (.s8)
        names: dict[tuple[int, int], str] = {}  # one name per (dim, offset): registers of
        # a row or column share its index, so its scale or zero point is read once

        def at(d: int, off: int) -> str:
            if (d, off) not in names:
                names[d, off] = _at(src, (base[d],), (off,))[0]
            return names[d, off]

        self.idxs = [tuple(at(d, o) for d, o in enumerate(lc(0, v)))
                     for v in range(lc.num_values)]
        with ctx.scope():
            self.names = [src.tmp(f"{self.R}({ctx.elem(init, idx)})", "fr") for idx in self.idxs]

    def bind(self, ctx, v: Value, names=None) -> None:
        """Element idxs[i] of v is names[i] (this frag's registers by default)."""
        for idx, name in zip(self.idxs, names or self.names, strict=True):
            ctx.memo[0][(v.id, idx)] = name

    def update(self, ctx, new: Value) -> None:
        """The next iteration's registers: the chain per register, then the assignments."""
        with ctx.scope():
            news = [ctx.src.tmp(f"{self.R}({ctx.elem(new, idx)})", "n") for idx in self.idxs]
        for name, n in zip(self.names, news, strict=True):
            ctx.src.line(f"{name} = {n}")

    def spill(self, ctx, result: Value) -> None:
        """After the loop: the registers into a shared tile the epilogue reads."""
        buf = ctx.alloc(result.type.dtype, tuple(result.type.shape))
        for idx, name in zip(self.idxs, self.names, strict=True):
            ctx.src.line(f"{ctx.addr(buf, idx)} = {name}")
        ctx.src.sync()
        ctx.bind(result, buf)
