"""The fused dots' side of byte windows (byte_window.py): each window's bytes from its first
one and the check that it lies inside its tensor, 32 codes of a row unpacked in registers
(after the chain's byte ops), the codes' lane order under in-step transposes, and the plane
order the register dot reads sub-byte codes in."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lowbitc.backends.llvm import byte_window
from lowbitc.backends.llvm.emitter import Emitter
from lowbitc.backends.llvm.fused_leaves import splat, vector_op
from lowbitc.backends.llvm.fused_view import window_ok
from lowbitc.backends.llvm.fusion_plan import Plan, W
from lowbitc.backends.llvm.handlers import Env, TensorArg, vtype
from lowbitc.backends.llvm.windows import unpack32, unpack_words
from lowbitc.interp import evaluate
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType


def window(env: Env, plan: Plan) -> tuple[TensorArg, list[str], str]:
    """(tensor, starts, ok) of a plan's codes window for codes_at: for a byte window
    (byte_window.py) the bytes from the window's first one, rows its stride apart, starts 0;
    else the codes tensor and the window's starts. ok: the window is inside the tensor (and,
    for packed words, starts on a 32-code step)."""
    em = env.em
    if not plan.chain:
        t = env.get(plan.codes.operands[0])
        starts = [env.get(v) for v in plan.codes.operands[1:3]]
        return t, starts, window_ok(em, t, starts, plan.codes.attrs.sizes,
                                     aligned=plan.codes.opcode == "load_codes")
    views, ok = {}, "true"
    for codes in [plan.codes, *(o for o in plan.tree if o.opcode == "codes")]:
        ld = plan.windows[codes.results[0].id][0]
        t, starts, origin, strides = byte_window.source(env, ld)
        ok = em.val(f"and i1 {ok}, {window_ok(em, t, starts, ld.attrs.sizes, aligned=False)}")
        ptr = em.val(f"getelementptr inbounds i8, ptr {t.ptr}, i64 {origin}")
        views[codes.results[0].id] = replace(t, ptr=ptr, strides=strides)
    plan.bases = views
    return views[plan.codes.results[0].id], ["0", "0"], ok


def planar(order: tuple[int, ...], bits: int) -> bool:
    """Whether lane l of a step reads the code at position per * (l % n) + l // n (per codes
    in each of n bytes): the step's codes by planes of one code per byte (GGUF's element
    order: a block's low nibbles, then its high ones)."""
    per = 8 // bits
    n = W // per
    return bits < 8 and order == tuple(per * (q % n) + q // n for q in range(W))


def window_codes(env: Env, plan: Plan, codes: Op, t: TensorArg, j: str, c: str,
                 order: tuple[int, ...] = ()) -> str:
    """Codes 32c .. 32c + 31 of row j of a byte window (`t`: its bytes from the window's
    first one) as <32 x i32>: one short load, the byte ops of its chain on the bytes in
    registers, the unpack. `order`, if `planar`: the codes in that lane order, each plane
    one widening of the bytes, a shift and a mask."""
    em = env.em
    p = byte_window.address(em, codes, t.ptr, "0", t.strides, j, c)
    bits = byte_window.bits(codes)
    ld, view, *ops = plan.windows[codes.results[0].id]
    if not ops and not order:
        return unpack32(em, p, bits, align=1)
    n = W * bits // 8
    vals = {ld.results[0].id: em.val(f"load <{n} x i8>, ptr {p}, align 1")}
    if (order and codes is plan.codes and byte_moves(plan, env.defs)
            and order == plane_order(plan, env.defs)):
        ops = []  # plane_order put the codes' moves in the lane order: the bytes as loaded
        vals[view.operands[0].id] = vals[ld.results[0].id]
    for op in ops:
        args = [vals[u.id] if u.id in vals else splat(em, env.get(u), "u8", n)
                for u in op.operands]
        vals[op.results[0].id] = vector_op(env, op, args, n)
    b = vals[view.operands[0].id]
    if order:
        return _planes(em, b, bits)
    return unpack_words(em, b if bits == 8 else em.val(f"bitcast <{n} x i8> {b} to "
                                                       f"<{bits} x i32>"), bits)


def _planes(em, b: str, bits: int) -> str:
    """<32 x i32> of n bytes `b` by planes: lanes q * n .. q * n + n - 1 hold bits
    q * bits .. of each byte."""
    n = W * bits // 8
    vt = f"<{n} x i32>"
    wide = em.val(f"zext <{n} x i8> {b} to {vt}")
    parts = []
    for q in range(8 // bits):
        sh = em.val(f"lshr {vt} {wide}, <{', '.join([f'i32 {q * bits}'] * n)}>") if q else wide
        parts.append(em.val(f"and {vt} {sh}, <{', '.join([f'i32 {(1 << bits) - 1}'] * n)}>"))
    while len(parts) > 1:  # concatenate pairwise
        size = W // len(parts)
        both = ", ".join(f"i32 {i}" for i in range(2 * size))
        parts = [em.val(f"shufflevector <{size} x i32> {parts[i]}, <{size} x i32> "
                        f"{parts[i + 1]}, <{2 * size} x i32> <{both}>")
                 for i in range(0, len(parts), 2)]
    return parts[0]


def lane_perms(plan: Plan) -> dict[int, tuple[int, ...]]:
    """For the values of E under transposes inside a step (byte windows), the codes' lane
    each lane reads (values with none: absent)."""
    perms: dict[int, tuple[int, ...]] = {}
    for op in plan.tree:
        below = next((perms[v.id] for v in op.operands if v.id in perms), None)
        if op.opcode == "transpose":
            step = byte_window.step_shuffle(op)
            below = tuple(below[q] for q in step) if below else step
        if below:
            perms[op.results[0].id] = below
    return perms


def plane_order(plan: Plan, defs: dict[int, Op] | None = None) -> tuple[int, ...]:
    """The lane order the register dot reads a byte window's sub-byte codes in: by planes
    (fused_windows.planar: one widening, a shift per plane), the activations permuted alike
    (a dot's sum does not depend on the order of K), where E has no in-step transposes and
    no other window; () otherwise (codes in K order). Byte ops that only move the codes
    within each byte (byte_moves; `defs` gives their constants) are read as that order."""
    if not plan.chain or any(op.opcode in ("transpose", "codes") for op in plan.tree):
        return ()
    bits = byte_window.bits(plan.codes)
    if bits >= 8 or 8 % bits:
        return ()
    per, n = 8 // bits, W * bits // 8
    moves = (byte_moves(plan, defs) if defs is not None else None) or tuple(range(per))
    plane = {r: p for p, r in enumerate(moves)}  # the code position plane r of a byte holds
    return tuple(per * (q % n) + plane[q // n] for q in range(W))


def byte_moves(plan: Plan, defs: dict[int, Op]) -> tuple[int, ...] | None:
    """(r_0, .., r_{per-1}) when the byte ops of the plan's chain only move codes within each
    byte (bitsandbytes' nibble swap `(b << 4) | (b >> 4)`): code p of a byte after them is
    code r_p of the byte loaded, for all 256 bytes (run by the reference interpreter); None
    when there are no byte ops, or they do more than move codes."""
    ld, view, *ops = plan.chain
    bits = byte_window.bits(plan.codes)
    if not ops or bits >= 8 or 8 % bits:
        return None
    consts = {u.id: defs.get(u.id) for op in ops for u in op.operands
              if not isinstance(u.type, TileType)}
    if any(d is None or d.opcode != "const" for d in consts.values()):
        return None
    b = np.arange(256, dtype=np.uint8)
    out = evaluate([*consts.values(), *ops], {ld.results[0].id: b})[view.operands[0].id]
    mask, moves = (1 << bits) - 1, []
    for p in range(8 // bits):
        code = (np.asarray(out).astype(np.int64) >> (p * bits)) & mask
        moves.append(next((r for r in range(8 // bits)
                           if np.array_equal(code, (b.astype(np.int64) >> (r * bits)) & mask)),
                          None))
    return tuple(moves) if None not in moves and len(set(moves)) == len(moves) else None


def lanes_of(em: Emitter, v: str, order: tuple[int, ...], dtype: str = "f32") -> str:
    """<len(order) x T> of the <W x T> vector v's lanes `order` (T: `dtype`)."""
    t = vtype(dtype, W)
    return em.val(f"shufflevector {t} {v}, {t} poison, "
                  f"<{len(order)} x i32> <{', '.join(f'i32 {q}' for q in order)}>")
