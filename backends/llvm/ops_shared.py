"""LLVM handlers for shared tiles: `alloc_shared`, `load_shared`, `store_shared` and `sync`.

A block of the grid runs on one CPU thread, so a shared tile is a per-block stack buffer (the
kernel's threads are one program here, and `sync` has nothing to wait for). Its memory layout
(a swizzle) only matters to GPUs and is ignored: the buffer is row-major. A format's shared
tile holds one i32 code per element, as the backend holds every format tile. Windows may run
past the tile like tensor windows: loads read 0 there and stores drop those elements.
"""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import Buf, lltype
from lowbitc.backends.llvm.fusion_plan import region_index
from lowbitc.backends.llvm.handlers import Env, const_literal, handles
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.ir.core import Op, Region
from lowbitc.ir.types import TileType, is_machine

# Ops that write every element of a fresh result buffer (Env.result_buf) and nothing else: a
# whole-tile store_shared right after one of them has it write the shared tile instead
IN_PLACE_PRODUCERS = frozenset({
    "load", "cast", "bitcast", "where", "add", "sub", "mul", "div", "rem", "min", "max", "pow",
    "and", "or", "xor", "shl", "shr", "neg", "abs", "bnot", "exp", "log", "sqrt", "rsqrt",
    "tanh", "sin", "cos", "floor", "erf", "sigmoid"})
IN_PLACE = True  # experiments: False copies every stored tile


def plan_in_place(r: Region, defs: dict[int, Op]) -> dict[int, Op]:
    """{id(producer): the store_shared of its value} for stores of a whole shared tile
    (window at 0, the tile's shape and element type) whose value is used by nothing else and
    made by the op just before (constants aside, so no other op sees the tile in between) by one of
    IN_PLACE_PRODUCERS: that op builds its result in the shared tile, and the store has
    nothing left to copy (a staging prologue, `store_shared(st, cast(load(s), f32))`, writes
    the tile once instead of twice); `defs`: the kernel's defining ops by result id."""
    if not IN_PLACE:
        return {}
    uses = region_index(r).uses
    plans: dict[int, Op] = {}
    prev: Op | None = None
    for op in r.ops:
        if op.opcode == "const":
            continue
        if op.opcode == "store_shared" and prev is not None:
            tile, val = op.operands[0].type, op.operands[-1]
            n = len(tile.shape) if isinstance(tile, TileType) else -1
            starts = op.operands[1:1 + n]
            if (prev.opcode in IN_PLACE_PRODUCERS and prev.results and prev.results[0] is val
                    and uses.get(val.id) == 1 and isinstance(val.type, TileType)
                    and val.type.shape == tile.shape and tuple(op.attrs.sizes) == tile.shape
                    and val.type.dtype == tile.dtype and is_machine(tile.dtype)
                    and not op.attrs.masked
                    and all(v.id in defs and defs[v.id].opcode == "const"
                            and defs[v.id].attrs.value == 0 for v in starts)):
                plans[id(prev)] = op
        prev = op
    return plans


def storage(dtype: str) -> str:
    """The buffer element type of a tile of `dtype` (a format's codes are i32)."""
    return dtype if is_machine(dtype) else "i32"


@handles("alloc_shared")
def _alloc_shared(env: Env, op: Op) -> None:
    t = op.results[0].type
    env.bind(op.results[0], env.em.alloc(storage(t.dtype), t.shape))


@handles("sync")
def _sync(env: Env, op: Op) -> None:
    """Nothing to do: the block's threads are one program on one CPU thread."""


def _window(env: Env, op: Op, buf: Buf, starts: list[str], idx: list[str]):
    """Offset of a window element in the shared buffer (clamped) and its in-bounds flag."""
    em = env.em
    it = iter(idx)
    coords, ok = [], "true"
    for st, sz, dim in zip(starts, op.attrs.sizes, buf.shape):
        x = st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
        inb = em.val(f"icmp ult i64 {x}, {dim}")
        ok = inb if ok == "true" else em.val(f"and i1 {ok}, {inb}")
        coords.append(em.val(f"select i1 {inb}, i64 {x}, i64 0"))
    if op.attrs.masked:
        m = env.get(op.operands[-1])
        shape = tuple(s for s in op.attrs.sizes if s > 0)
        mv = em.at(broadcast_view(m, shape), idx) if isinstance(m, Buf) else m
        ok = em.val(f"and i1 {ok}, {mv}")
    return em.offset(coords, buf.shape, buf.strides), ok


@handles("load_shared")
def _load_shared(env: Env, op: Op) -> None:
    em = env.em
    buf = env.get(op.operands[0])
    starts = [env.get(v) for v in op.operands[1 : 1 + len(buf.shape)]]
    rt = op.results[0].type
    t = lltype(buf.dtype)
    zero = const_literal(em, 0, buf.dtype)

    def element(idx: list[str]) -> str:
        off, ok = _window(env, op, buf, starts, idx)
        return em.val(f"select i1 {ok}, {t} {em.load_elem(buf, off)}, {t} {zero}")

    if not isinstance(rt, TileType):
        env.bind(op.results[0], element([]))
        return
    out = em.alloc(buf.dtype, rt.shape)
    env.bind(op.results[0], out)
    em.nest(rt.shape, lambda idx: em.store_elem(out, em.flat_index(idx, rt.shape), element(idx)))


@handles("store_shared")
def _store_shared(env: Env, op: Op) -> None:
    em = env.em
    buf = env.get(op.operands[0])
    n = len(buf.shape)
    starts = [env.get(v) for v in op.operands[1 : 1 + n]]
    val = env.get(op.operands[1 + n])
    shape = tuple(s for s in op.attrs.sizes if s > 0)
    t = lltype(buf.dtype)

    def element(idx: list[str]) -> None:
        off, ok = _window(env, op, buf, starts, idx)
        v = em.at(broadcast_view(val, shape), idx) if isinstance(val, Buf) else val
        old = em.load_elem(buf, off)  # dropped elements write back what was there
        em.store_elem(buf, off, em.val(f"select i1 {ok}, {t} {v}, {t} {old}"))

    if shape:
        em.nest(shape, element)
    else:
        element([])
