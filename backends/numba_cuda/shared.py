"""Shared tiles in the CUDA renderer: `alloc_shared` is a `cuda.shared.array` (indexed
through its swizzle when the tile's layout has one), `load_shared` a lazy per-element read,
`store_shared` a loop over the window strided by the block's threads, `sync` a
`cuda.syncthreads()`. Kernels order their own accesses with `sync()`, as in CUDA.

Shared memory is limited per block: static shared memory is 48 KiB per block on every
architecture; the larger carve-outs (sm_80: 163 KiB, sm_90: 227 KiB) are dynamic shared memory
only, which a kernel opts into at launch (`DYNAMIC_SHARED_LIMIT`, `render._assemble`,
`backend.launch`). `check_shared_memory` enforces the static limit on `alloc_shared` tiles.
"""

from __future__ import annotations

import re

from lowbitc.backends.numba_cuda.buffers import Buf, swizzle_expr
from lowbitc.backends.numba_cuda.elements import ELEMENT, reg_dtype, rtype, shape_of
from lowbitc.backends.numba_cuda.source import SHARED_BYTES, SHARED_TYPE
from lowbitc.backends.numba_cuda.statements import STATEMENTS
from lowbitc.errors import BackendError
from lowbitc.ir.core import Kernel, Op, walk

# static shared memory per block (bytes) that a kernel may declare, per architecture
STATIC_SHARED_LIMIT = {
    arch: 48 * 1024
    for arch in ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
}
# dynamic shared memory per block (bytes) a kernel may opt into (CUDA programming guide,
# "Compute capabilities": 228/100/164/... KiB per SM minus 1 KiB reserved per block)
DYNAMIC_SHARED_LIMIT = {
    "sm_70": 96 * 1024, "sm_75": 64 * 1024, "sm_80": 163 * 1024, "sm_86": 99 * 1024,
    "sm_89": 99 * 1024, "sm_90": 227 * 1024, "sm_100": 227 * 1024, "sm_120": 99 * 1024,
}
_SWIZZLE = re.compile(r"Sw<(\d+),(\d+),(-?\d+)>")


def swizzle_of(layout: str) -> tuple[int, int, int] | None:
    """(bits, base, shift) of a shared tile's swizzle layout ("Sw<3,2,3>"), None if row-major."""
    if not layout:
        return None
    m = _SWIZZLE.fullmatch(layout)
    if m is None:
        raise BackendError(f"cuda: unknown shared tile layout {layout!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def swizzled(ctx, offset: str, sw: tuple[int, int, int]) -> str:
    """offset ^ ((offset & yyy_mask) >> shift), CuTe's Swizzle<bits, base, shift>."""
    return swizzle_expr(ctx.src, offset, sw)


def tile_bytes(op: Op) -> int:
    t = op.results[0].type
    n = 1
    for d in t.shape:
        n *= d
    return n * SHARED_BYTES.get(reg_dtype(t.dtype), 4)


def check_shared_memory(k: Kernel, arch: str = "sm_80") -> None:
    """Raise, at the shared tile that goes over, if the kernel's shared tiles need more static
    shared memory per block than `arch` allows."""
    limit = STATIC_SHARED_LIMIT.get(arch, 48 * 1024)
    total = 0
    for op in walk(k.body.ops):
        if op.opcode == "alloc_shared":
            total += tile_bytes(op)
            if total > limit:
                raise BackendError(
                    f"cuda: the kernel's shared tiles need {total} bytes per block by here, "
                    f"more than the {limit} bytes of static shared memory {arch} allows; use "
                    "smaller tiles",
                    op.loc,
                )


def _alloc_shared(ctx, op: Op) -> None:
    t = op.results[0].type
    dtype = reg_dtype(t.dtype)
    buf = Buf(ctx.src.fresh("su"), dtype, tuple(t.shape), 0, swizzle_of(t.layout))
    ctx.shared.append((buf.name, buf.size, SHARED_TYPE[dtype]))
    ctx.bufs[op.results[0].id] = buf


def _coords(ctx, op: Op, buf: Buf, starts: list[str], idx: tuple[str, ...]):
    """Tile coordinates of a window element and the conditions that it is inside the tile."""
    it = iter(idx)
    where, conds = [], []
    for s, size, n in zip(starts, op.attrs.sizes, buf.shape, strict=True):
        g = ctx.src.tmp(f"{s} + {next(it)}", "g") if size > 0 else s
        where.append(g)
        conds.append(f"0 <= {g} < {n}")
    if op.attrs.masked:
        m = op.operands[-1]
        wshape = tuple(s for s in op.attrs.sizes if s > 0)
        conds.insert(0, ctx.elem(m, ctx.bcast(idx, wshape, shape_of(m.type))))
    return tuple(where), conds


def _load_shared(ctx, op: Op, idx) -> str:
    buf = ctx.bufs[op.operands[0].id]
    starts = [ctx.elem(v, ()) for v in op.operands[1 : 1 + len(buf.shape)]]
    where, conds = _coords(ctx, op, buf, starts, tuple(idx))
    R = rtype(op)
    out = ctx.src.tmp(f"{R}(0)", "v")
    with ctx.src.block(f"if {' and '.join(conds)}:"):
        ctx.src.line(f"{out} = {R}({ctx.addr(buf, where)})")
    return out


def _store_shared(ctx, op: Op) -> None:
    buf = ctx.bufs[op.operands[0].id]
    n = len(buf.shape)
    starts = [ctx.elem(v, ()) for v in op.operands[1 : 1 + n]]
    value = op.operands[1 + n]
    shape = tuple(s for s in op.attrs.sizes if s > 0)
    ty = SHARED_TYPE[buf.dtype]

    def body(idx, e):
        where, conds = _coords(ctx, op, buf, starts, tuple(idx))
        with ctx.src.block(f"if {' and '.join(conds)}:"), ctx.scope():
            x = ctx.elem(value, ctx.bcast(tuple(idx), shape, shape_of(value.type)))
            ctx.src.line(f"{ctx.addr(buf, where)} = {ty}({x})")

    if shape:
        ctx.each(shape, body)
    else:
        with ctx.src.block("if tid == 0:"), ctx.scope():
            body((), "0")


def _sync(ctx, op: Op) -> None:
    ctx.src.sync()


STATEMENTS.update({"alloc_shared": _alloc_shared, "store_shared": _store_shared, "sync": _sync})
ELEMENT["load_shared"] = _load_shared
