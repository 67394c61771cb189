"""Codes read out of a window of bytes, for the fused dots (fusion.py, panel.py): the weights
of a checkpoint that stores blocks of codes among other bytes (GGUF's `u8[N, K / 32, 18]`
Q4_0 blocks: a scale, then 16 bytes of 4-bit codes), read as `codes(view(load(bytes[n :+ BN,
b :+ NB, o :+ S]), F))` with F a format of 1, 2, 4 or 8 bits.

The window's first dim is the weight's rows; its other dims, flattened, run along K (E is
reshaped to [BN, K] by a row regrouping, fusion_plan.regroups_rows). Viewed as F, the S bytes
of its last dim are S * 8 / bits codes in the canonical LSB-first order, the same stream as
the canonical words: every 32 codes of a row are `bits` whole words at some byte offset
(windows.unpack32, with an unaligned load). So a step of 32 codes is one short load, wherever
the scales and other bytes of the block sit around the codes.
"""

from __future__ import annotations

import math

from lowbitc.ir.core import Op
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType
from lowbitc.signature import format_bits

W = 32  # codes per step of the fused paths


def chain(op: Op, defs: dict[int, Op], uses: dict[int, int]) -> tuple[Op, ...] | None:
    """(load, view, *byte ops) when `op` is `codes(view(B, F))` with B an unmasked load of
    u8 bytes whose window keeps every dim, or elementwise u8 ops over one such load and
    scalar constants (a nibble swap: `(b << 4) | (b >> 4)`, evaluated on the bytes in
    registers), none of their values used elsewhere, F a format of 1, 2, 4 or 8 bits whose
    rows are whole steps of 32 codes; None otherwise. The byte ops come operands first."""
    if op.opcode != "codes" or uses.get(op.operands[0].id) != 1:
        return None
    view = defs.get(op.operands[0].id)
    t = op.results[0].type
    if view is None or view.opcode != "view" or not isinstance(t, TileType) or len(t.shape) < 2:
        return None
    loads: list[Op] = []
    ops: list[Op] = []
    inside: dict[int, int] = {}

    def walk(v) -> bool:
        d = defs.get(v.id)
        if not isinstance(v.type, TileType):
            return d is not None and d.opcode == "const"
        if d is None or v.type.dtype != "u8":
            return False
        inside[v.id] = inside.get(v.id, 0) + 1
        if d.opcode == "load":
            if d not in loads:
                loads.append(d)
            return True
        if d.opcode not in ELEMENTWISE:
            return False
        if d in ops:
            return True
        ok = all(walk(u) for u in d.operands)
        ops.append(d)
        return ok

    if not walk(view.operands[0]) or len(loads) != 1 \
            or any(uses.get(k) != n for k, n in inside.items()):
        return None
    ld = loads[0]
    if (ld.attrs.masked or 0 in ld.attrs.sizes or len(ld.attrs.sizes) != len(t.shape)):
        return None
    try:
        width = format_bits(view.attrs.dtype)
    except (KeyError, ValueError):
        return None
    if 8 % width or t.shape[-1] % W:
        return None
    return (ld, view, *ops)


def bits(codes: Op) -> int:
    """The code width of a byte window's codes leaf (the viewed format's)."""
    return format_bits(codes.operands[0].type.dtype)


def fits(codes: Op, shape: tuple[int, ...]) -> bool:
    """Whether the codes tile is E's [BN, BK] with its K part regrouped (same rows, BK codes)."""
    t = codes.results[0].type.shape
    return t[0] == shape[0] and math.prod(t[1:]) == shape[1]


def source(env, ld: Op) -> tuple[object, list[str], str, list[str]]:
    """(tensor, starts, origin, strides): the window's tensor, its starts, the element offset
    of its first byte and the byte strides of its dims but the last (which is 1)."""
    em = env.em
    n = len(ld.attrs.sizes)
    t = env.get(ld.operands[0])
    starts = [env.get(v) for v in ld.operands[1:1 + n]]
    if getattr(ld.attrs, "linear", False):
        origin = env.get(ld.operands[1 + n])
        strides = [env.get(v) for v in ld.operands[2 + n:1 + 2 * n]]
        return t, starts, origin, strides
    t.ensure_strides(em)
    strides = [str(s) for s in t.strides[:-1]]
    origin = starts[-1]
    for s, st in zip(starts[:-1], strides):
        origin = em.val(f"add i64 {origin}, {em.val(f'mul i64 {s}, {st}')}")
    return t, starts, origin, strides


def address(em, codes: Op, ptr: str, origin: str, strides: list[str], j: str, c: str) -> str:
    """Pointer to the bytes of codes 32c .. 32c + 31 of the window's row j."""
    shape = codes.results[0].type.shape
    per = shape[-1] // W  # steps per row of the last dim
    nbytes = W * bits(codes) // 8
    off = em.val(f"add i64 {origin}, {em.val(f'mul i64 {j}, {strides[0]}')}")
    if per > 1:
        inner = em.val(f"urem i64 {c}, {per}")
        off = em.val(f"add i64 {off}, {em.val(f'mul i64 {inner}, {nbytes}')}")
        c = em.val(f"udiv i64 {c}, {per}")
    mids = shape[1:-1]
    for n, (d, st) in enumerate(zip(reversed(mids), reversed(strides[1:]))):
        i = em.val(f"urem i64 {c}, {d}") if n < len(mids) - 1 else c
        off = em.val(f"add i64 {off}, {em.val(f'mul i64 {i}, {st}')}")
        if n < len(mids) - 1:
            c = em.val(f"udiv i64 {c}, {d}")
    return em.val(f"getelementptr inbounds i8, ptr {ptr}, i64 {off}")


def span(em, codes: Op, strides: list[str]) -> tuple[str, int]:
    """(bytes between one K window of a row and the next, at run time; bytes of codes a row's
    window holds): what the fused dot prefetches ahead."""
    shape = codes.results[0].type.shape
    nbytes = math.prod(shape[1:]) * bits(codes) // 8
    if len(shape) == 2:
        return str(shape[1] * bits(codes) // 8), nbytes
    return em.val(f"mul i64 {shape[1]}, {strides[1]}"), nbytes


def step_shuffle(op: Op) -> tuple[int, ...] | None:
    """For a transpose that keeps the first dim (the rows), the source lane of each lane of a
    step of 32 of its result's row (flattened), when every step of the result reads exactly
    the same step of its operand (a permutation inside each block of 32, as a block's two
    halves interleaved); None otherwise."""
    if op.opcode != "transpose" or op.attrs.perm[0] != 0:
        return None
    src = op.operands[0].type.shape[1:]
    perm = [p - 1 for p in op.attrs.perm[1:]]
    out = [src[p] for p in perm]
    n = math.prod(src)
    if n % W:
        return None
    mask = None
    for c0 in range(0, n, W):
        lanes = []
        for q in range(W):
            idx = _unravel(c0 + q, out)
            at = [0] * len(src)
            for i, p in enumerate(perm):
                at[p] = idx[i]
            f = 0
            for i, d in zip(at, src):
                f = f * d + i
            if not c0 <= f < c0 + W:
                return None
            lanes.append(f - c0)
        if mask is None:
            mask = tuple(lanes)
        elif tuple(lanes) != mask:
            return None
    return mask


def _unravel(f: int, dims) -> list[int]:
    out = []
    for d in reversed(dims):
        out.append(f % d)
        f //= d
    return out[::-1]
