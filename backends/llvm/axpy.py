"""Dequantization fused into a dot whose weight is not transposed: `dot(a, E, acc)` with E
[K, N] a tree of elementwise ops over one load_codes whose rows run along K, each row N codes
of one packed row (codes packed along the output dim N: a KV cache's values weighted by the
softmax probabilities, `p @ V`; `x @ W` for a W stored [K, N]).

For a window that is 32-code aligned and inside the tensor, each row k of E is decoded 32
codes at a time in registers (fusion.py's codes and tree evaluation) and multiplied by the
broadcast a[i, k] into one accumulator per 32 outputs and row of `a`: the whole output stays
in registers over the K loop (at most MAX_OUT floats), and E is never materialised. Other
windows run the deferred ops and the generic dot.
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import decode, fused_leaves, fused_view, prefetch
from lowbitc.backends.llvm.decode import code_tables
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.fallback import note_fused, with_fallback
from lowbitc.backends.llvm.fused_leaves import row_sum
from lowbitc.backends.llvm.fusion import _eval_tree, codes_at
from lowbitc.backends.llvm.fusion_plan import Plan, W, _tree, fold, region_index, row_spaces
from lowbitc.backends.llvm.handlers import Env
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Region, Value
from lowbitc.ir.types import TileType, is_float

MAX_OUT = 256  # accumulator floats (rows of a x N): 16 AVX-512 registers
AHEAD = 32  # rows of the codes window prefetched ahead
FOLD_LANES = True  # the lanes form for E = (Y - U) * V with a zero-point fold (plan.fold)


def plan_axpy(r: Region) -> dict[int, Plan]:
    """Dots of this region (keyed by their result id) whose untransposed weight operand is a
    fusible tree over one codes load, with rows x N within MAX_OUT and f32 operands."""
    defs, uses, order, dots = region_index(r)
    plans: dict[int, Plan] = {}
    for op in dots:
        a, b, acc = op.operands
        e = b.type
        if b.id not in defs or uses[b.id] != 1 or not isinstance(e, TileType) \
                or len(e.shape) != 2:
            continue
        found = _tree(defs, uses, b)
        if not isinstance(found, tuple):  # no codes, or not fusible (a line saying why)
            continue
        tree, codes = found
        if not (e.shape[1] % W == 0 and is_float(e.dtype) and a.type.dtype == "f32"
                and acc.type.dtype == "f32" and a.type.shape[0] * e.shape[1] <= MAX_OUT
                and fused_view.kept(codes.attrs.sizes) == e.shape and not codes.attrs.masked
                and fused_view.viewable(codes)):
            continue
        tree = sorted(tree, key=lambda o: order[id(o)])
        plan = Plan(op, None, codes, tree, sorted(tree + [codes], key=lambda o: order[id(o)]),
                    b, code_tables(tree, codes, b, defs))
        plan.fold = fold(tree, b, 0)
        plans[op.results[0].id] = plan
    return plans


def emit_axpy(env: Env, plan: Plan, generic_dot) -> None:
    """The fused path with a runtime fallback (deferred ops, generic dot); binds the dot's
    result buffer."""
    op = plan.dot
    codes = plan.codes
    t = env.get(codes.operands[0])
    weights = subject_of(codes.operands[0])

    def choose(abuf, out):
        if t.packing is not None or not isinstance(abuf, Buf):
            note("dot", weights, "generic dot", "the codes are repacked"
                 if t.packing is not None else "the activation tile is not in memory",
                 fallback=True, loc=op.loc)
            return None
        view, starts, ok = fused_view.view(env, codes, t)
        lanes = _by_lanes(plan, abuf)
        note_fused(op, codes, "fused untransposed dot: " + (
            "lanes form (one table permute per 16 codes; " + (
                "zero points and scales applied once per window)" if lanes and lanes[3] else
                "scales and zero points per word lane fold into the weights)")
            if lanes else "32 codes of a row per step"))
        return ok, lambda: _fused_lanes(env, plan, abuf, out, view, starts, lanes) \
            if lanes else _fused(env, plan, abuf, out, view, starts)

    with_fallback(env, op, plan.deferred, generic_dot, choose, "axpy")


def _column(em, abuf: Buf, k: str, width: int) -> list[str]:
    """Column k of `a`, each row's value broadcast to a <width x float> vector."""
    vt = f"<{width} x float>"
    out = []
    for i in range(abuf.shape[0]):
        x = em.load_elem(abuf, em.offset([str(i), k], abuf.shape, abuf.strides))
        ins = em.val(f"insertelement {vt} poison, float {x}, i64 0")
        out.append(em.val(f"shufflevector {vt} {ins}, {vt} poison, <{width} x i32> "
                          "zeroinitializer"))
    return out


def _fused(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    em = env.em
    m = abuf.shape[0]
    k_rows, n_cols = fused_view.kept(plan.codes.attrs.sizes)
    chunks = n_cols // W
    va = f"<{W} x float>"

    def step(k: str, accs: list[str]) -> list[str]:
        row = em.val(f"add i64 {starts[0]}, {k}")
        _prefetch_ahead(em, plan, t, starts, row, AHEAD, n_cols)
        nxt = list(accs)
        splats = _column(em, abuf, k, W)
        for c in range(chunks):
            w = _eval_tree(env, plan, codes_at(env, plan, t, starts, row, str(c)), k, str(c),
                           plan.fold[0] if plan.fold else None)
            for i in range(m):
                prod = em.val(f"fmul reassoc contract {va} {splats[i]}, {w}")
                j = i * chunks + c
                nxt[j] = em.val(f"fadd reassoc contract {va} {accs[j]}, {prod}")
        return nxt

    accs = em.loop("0", str(k_rows), None, carried=[(va, "zeroinitializer")] * (m * chunks),
                   body_carried=step)
    _finish(env, plan, abuf, out, accs, plan.fold is not None)


def _finish(env: Env, plan: Plan, abuf: Buf, out: Buf, accs: list[str], folded: bool) -> None:
    """Adds the accumulators (row i's columns 32c .. 32c + 31 at i * chunks + c, in column
    order) to `out`, first applying the zero-point fold when `folded`."""
    em = env.em
    accs = list(accs)
    m = abuf.shape[0]
    k_rows, n_cols = fused_view.kept(plan.codes.attrs.sizes)
    chunks = n_cols // W
    va = f"<{W} x float>"
    if folded:  # acc = V * (sum a*Y - U * sum a), once per window
        _, u, v = plan.fold
        shape = (k_rows, n_cols)
        for i in range(m):
            sa = em.val(f"insertelement {va} poison, float {row_sum(em, abuf, i, k_rows)}, "
                        "i64 0")
            sa = em.val(f"shufflevector {va} {sa}, {va} poison, <{W} x i32> zeroinitializer")
            for c in range(chunks):
                uv, vv = (fused_leaves.leaf(env, x, shape, "0", str(c)) for x in (u, v))
                j = i * chunks + c
                shifted = em.val(f"fsub {va} {accs[j]}, {em.val(f'fmul {va} {uv}, {sa}')}")
                accs[j] = em.val(f"fmul {va} {vv}, {shifted}")
    for i in range(m):
        for c in range(chunks):
            p = em.gep(out, em.flat_index([str(i), str(c * W)], out.shape))
            old = em.val(f"load {va}, ptr {p}, align 4")
            em.emit(f"store {va} {em.val(f'fadd {va} {old}, {accs[i * chunks + c]}')}, "
                    f"ptr {p}, align 4")


def affine(plan: Plan) -> tuple[Value, Value | None, Value | None] | None:
    """(Y, U, V) when E = (Y - U) * V, Y * V, Y - U or Y, up to row regroupings
    (fusion_plan.regroups_rows), with Y a table of the codes and U, V f32 leaves: the lanes
    form then looks Y up and scales the weights `a` by V instead of every code."""
    made = {op.results[0].id: op for op in plan.tree}

    def bare(v: Value) -> Value:  # through regroupings (same lanes)
        while v.id in made and made[v.id].opcode == "reshape":
            v = made[v.id].operands[0]
        return v

    def leaf(v: Value) -> bool:
        return v.id not in made and v.type.dtype == "f32"

    y, u, s = bare(plan.root), None, None
    op = made.get(y.id)
    if op is not None and op.opcode == "mul" and y.type.dtype == "f32":
        for x, w in (op.operands, op.operands[::-1]):
            if leaf(w) and x.id in made:
                y, s = bare(x), w
                break
    op = made.get(y.id)
    if op is not None and op.opcode == "sub" and leaf(op.operands[1]) \
            and op.operands[0].id in made:
        y, u = bare(op.operands[0]), op.operands[1]
    return (y, u, s) if y.id in plan.tables else None


def _prefetch_ahead(em, plan: Plan, t, starts: list[str], row: str, ahead: int,
                    n_cols: int) -> None:
    """Prefetch the window's bytes of row + `ahead` (the rows are a whole tensor row apart, a
    stride the hardware prefetchers lose track of, as in prefetch.next_windows and
    columns.py)."""
    n = em.val(f"mul i64 {em.val(f'add i64 {row}, {ahead}')}, {t.strides[0]}")
    if plan.codes.opcode == "load":  # bytes
        bits, elem, first = 8, "i8", starts[1]
    else:  # words: 32 codes are `bits` words
        bits, elem = plan.codes.attrs.bits, "i32"
        first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[1]}, 5')}, {bits}")
    base = em.val(f"getelementptr {elem}, ptr {t.ptr}, i64 {em.val(f'add i64 {n}, {first}')}")
    prefetch.run_ahead(em, base, max(1, n_cols * bits // 8))


def _by_lanes(plan: Plan, abuf: Buf) -> tuple[Value, Value | None, Value | None, bool] | None:
    """(Y, U, V, folded) when the lanes form applies: AVX-512, codes of 1, 2 or 4 bits in rows
    of whole 512-bit registers, every accumulator in a register, and E affine in a table Y of
    the codes with U and V the same for the 32 / bits codes of each word (the loop applies
    them), or else (FOLD_LANES) E = (Y - U) * V with the zero-point fold (plan.fold: U and V
    applied once per window, after the loop; then U = V = None and folded); else None."""
    codes = plan.codes
    if codes.opcode != "load_codes" or not decode.permutes():
        return None
    bits = codes.attrs.bits
    n_cols = fused_view.kept(codes.attrs.sizes)[1]
    if bits not in (1, 2, 4) or n_cols * bits % 512 or abuf.shape[0] * n_cols // 16 > 16:
        return None
    split = affine(plan)
    spaces = row_spaces(plan.tree, plan.root)
    users = _users(plan)
    if split is not None and all(
            fused_leaves.word_invariant(v, spaces[users[v.id]], 32 // bits)
            for v in split[1:] if v is not None):
        return (*split, False)
    if FOLD_LANES and plan.fold is not None and plan.fold[0].id in plan.tables:
        return plan.fold[0], None, None, True
    return None


def _users(plan: Plan) -> dict[int, int]:
    """value id -> the result id of the op of E that reads it (a leaf's shape)."""
    return {v.id: op.results[0].id for op in plan.tree for v in op.operands}


def _fused_lanes(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str],
                 form: tuple[Value, Value | None, Value | None, bool]) -> None:
    """The lanes form: a register of 16 words holds codes at P = 32 / bits positions per word;
    shifting it right by `bits * pos` puts position pos of every word in the low bits, which a
    16-entry permute of E's table (repeated to 16, so the bits above the code do not matter)
    turns into 16 values at once: 3 instructions (shift, permute, FMA) per 16 codes. Lane j of
    position pos accumulates output column 16 P z + P j + pos; one shuffle per row of `a`
    puts the outputs in order at the end."""
    em = env.em
    m = abuf.shape[0]
    bits = plan.codes.attrs.bits
    k_rows, n_cols = fused_view.kept(plan.codes.attrs.sizes)
    per = 32 // bits  # codes per word
    regs = n_cols * bits // 512  # 16-word registers per row
    v16, i16 = "<16 x float>", "<16 x i32>"
    y, u, s, folded = form  # (_by_lanes)
    spaces, users = row_spaces(plan.tree, plan.root), _users(plan)
    table = np.resize(np.asarray(plan.tables[y.id], np.uint32), 16)
    tab = "<" + ", ".join(f"i32 {int(np.int32(w))}" for w in table) + ">"
    em.declare(f"declare {i16} @llvm.x86.avx512.permvar.si.512({i16}, {i16})")
    first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[1]}, 5')}, {bits}")

    def at(v: Value, k: str, z: int) -> str:  # leaf v for the 16 words of register z
        cols = [16 * per * z + per * j for j in range(16)]
        return fused_leaves.leaf_at(env, v, spaces[users[v.id]], k, cols)

    zs = m * regs if u is not None else 0  # sum over k of a V U: one per word lane

    def step(k: str, carried: list[str]) -> list[str]:
        accs, zaccs = carried[:len(carried) - zs], carried[len(carried) - zs:]
        n = em.val(f"add i64 {starts[0]}, {k}")
        _prefetch_ahead(em, plan, t, starts, n, AHEAD, n_cols)
        row = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {first}")
        cols = _column(em, abuf, k, 16)
        nxt, nz = list(accs), list(zaccs)
        for z in range(regs):
            sz = None if s is None else at(s, k, z)
            splats = cols if sz is None else [em.val(f"fmul {v16} {a}, {sz}") for a in cols]
            if u is not None:
                uz = at(u, k, z)
                for i in range(m):
                    prod = em.val(f"fmul reassoc contract {v16} {splats[i]}, {uz}")
                    nz[i * regs + z] = em.val(f"fadd reassoc contract {v16} "
                                              f"{zaccs[i * regs + z]}, {prod}")
            p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 "
                       f"{em.val(f'add i64 {row}, {16 * z}')}")
            words = em.val(f"load {i16}, ptr {p}, align 4")
            for pos in range(per):
                idx = em.val(f"lshr {i16} {words}, splat (i32 {pos * bits})") if pos else words
                w = em.val(f"call {i16} @llvm.x86.avx512.permvar.si.512({i16} {tab}, "
                           f"{i16} {idx})")
                w = em.val(f"bitcast {i16} {w} to {v16}")
                for i in range(m):
                    j = (i * regs + z) * per + pos
                    prod = em.val(f"fmul reassoc contract {v16} {splats[i]}, {w}")
                    nxt[j] = em.val(f"fadd reassoc contract {v16} {accs[j]}, {prod}")
        return nxt + nz

    accs = em.loop("0", str(k_rows), None,
                   carried=[(v16, "zeroinitializer")] * (m * regs * per + zs),
                   body_carried=step)
    if zs:  # every position of a word lane takes its lane's zero-point sum
        zaccs = accs[m * regs * per:]
        accs = [em.val(f"fsub {v16} {a}, {zaccs[q // per]}")
                for q, a in enumerate(accs[:m * regs * per])]
    wide = 16 * per
    vw = f"<{wide} x float>"
    order = ", ".join(f"i32 {(c % per) * 16 + c // per}" for c in range(wide))
    chunks = []  # row i's columns 32c .. 32c + 31 at i * n_cols / 32 + c
    for i in range(m):
        for z in range(regs):
            vs = accs[(i * regs + z) * per:(i * regs + z + 1) * per]
            while len(vs) > 1:  # concatenate the positions' registers, position-major
                n = 16 * (per // len(vs)) * 2
                lanes = ", ".join(f"i32 {q}" for q in range(n))
                vs = [em.val(f"shufflevector <{n // 2} x float> {vs[q]}, <{n // 2} x float> "
                             f"{vs[q + 1]}, <{n} x i32> <{lanes}>") for q in range(0, len(vs), 2)]
            cols = em.val(f"shufflevector {vw} {vs[0]}, {vw} poison, <{wide} x i32> <{order}>")
            for c in range(0, wide, W):
                lanes = ", ".join(f"i32 {c + q}" for q in range(W))
                chunks.append(em.val(f"shufflevector {vw} {cols}, {vw} poison, "
                                     f"<{W} x i32> <{lanes}>"))
    _finish(env, plan, abuf, out, chunks, folded)
