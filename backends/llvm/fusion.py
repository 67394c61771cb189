"""Dequantization fused into `dot`: the weight tile is never materialised (which dots and
stores qualify: fusion_plan.py; their code: here).

Pattern: `dot(a, transpose(E), acc)` where E is a tree of elementwise ops over exactly one
`load_codes` (the packed weights) plus leaves computed elsewhere (scales, zero points,
constants). For a window that is 32-code aligned and inside the tensor, each 32 codes of a
weight row are unpacked in registers (`<bits x i32>` load, shuffles, funnel shift), E is
evaluated on <32 x ...> vectors, and the products accumulate in vector registers for every
row of `a` (<= MAX_ROWS); other windows run the deferred ops and the generic dot.
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.llvm import (
    byte_window,
    carry,
    decode,
    fused_leaves,
    fused_view,
    lanes_dot,
    prefetch,
    row_scale,
    row_tables,
    rows_index,
)
from lowbitc.backends.llvm import lanes as lanes_packing
from lowbitc.backends.llvm import rows as rows_packing
from lowbitc.backends.llvm.decode import lookup
from lowbitc.backends.llvm.emitter import Buf, Emitter, float_literal, lltype
from lowbitc.backends.llvm.fallback import with_fallback
from lowbitc.backends.llvm.fused_leaves import vector_op as vector_op  # (columns.py)
from lowbitc.backends.llvm.fused_view import window_ok as _window_ok
from lowbitc.backends.llvm.fused_windows import (
    lane_perms,
    lanes_of,
    planar,
    plane_order,
    window,
    window_codes,
)
from lowbitc.backends.llvm.fusion_plan import Plan, W, acc_lanes, row_spaces
from lowbitc.backends.llvm.handlers import Env, convert, vtype
from lowbitc.backends.llvm.lanes import ROWS, row_sums
from lowbitc.backends.llvm.ops_memory import unpack32
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Value
from lowbitc.repack import PlanesPacking, RowsPacking, affine_bits


def codes_at(env: Env, plan: Plan, t, starts: list[str], n: str, c: str) -> str:
    """Codes starts[1] + 32c .. + 31 of row n in the canonical packing (<32 x i32>), or the
    bytes of a u8/i8 tensor (<32 x i8>), or of a byte window (its `window` view: <32 x i32>):
    what _eval_tree takes as its codes."""
    em = env.em
    if plan.chain:
        return window_codes(env, plan, plan.codes, t, n, c)
    if plan.codes.opcode == "load":
        i = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {starts[1]}")
        i = em.val(f"add i64 {i}, {em.val(f'mul i64 {c}, {W}')}")
        p = em.val(f"getelementptr inbounds i8, ptr {t.ptr}, i64 {i}")
        return em.val(f"load <{W} x i8>, ptr {p}, align 1")
    bits = plan.codes.attrs.bits
    first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[1]}, 5')}, {bits}")
    row = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {first}")
    wi = em.val(f"add i64 {row}, {em.val(f'mul i64 {c}, {bits}')}")
    return unpack32(em, em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {wi}"), bits)


def emit_fused_dot(env: Env, plan: Plan, generic_dot, fast_path=None) -> None:
    """The fused fast path with a runtime fallback; binds the dot's result buffer.
    `fast_path(env, plan, a, out, codes, starts)` emits the fused code (default: the
    register-resident dot of up to MAX_ROWS rows; panel.py passes the panel's)."""
    em = env.em
    op = plan.dot
    codes = plan.codes
    src = plan.chain[0] if plan.chain else codes
    t = env.get(src.operands[0])
    starts = [env.get(v) for v in src.operands[1:3]]
    by_rows = isinstance(t.packing, RowsPacking)
    weights = subject_of(src.operands[0])

    def choose(abuf, out):
        nonlocal t, starts, fast_path
        contiguous = isinstance(abuf, Buf) and abuf.contiguous
        if plan.chain and not contiguous:
            note("dot", weights, "generic dot", "the activation tile is not contiguous",
                 fallback=True, loc=op.loc)
            return None
        if plan.chain:  # codes of a byte window: any byte offset
            t, starts, ok = window(env, plan)
            note("dot", weights, "panel microkernel, byte-window codes decoded into the panel"
                 if fast_path else "fused register dot (codes of a byte window unpacked in "
                 "registers, 32 per step)" + _sums_note(env, plan),
                 "windows at the tensor's edges take the generic dot", loc=op.loc)
            return ok, lambda: (fast_path or _fused)(env, plan, abuf, out, t, starts)
        if len(codes.attrs.sizes) != 2:  # a 2-D window of a higher-rank tensor: canonical only
            if t.packing is not None or fast_path is not None or not contiguous:
                return None
            t, starts, ok = fused_view.view(env, codes, t)
            lanes = lanes_dot.applies(plan, abuf)
            note("dot", weights, "fused register dot over a 2-D window, " + (
                "lanes form (one table permute per 16 codes)" if lanes
                else "32 codes of a row per step" + _sums_note(env, plan)),
                "windows at the tensor's edges take the generic dot", loc=op.loc)
            fused = lanes_dot.emit if lanes else _fused
            return ok, lambda: fused(env, plan, abuf, out, t, starts)
        indexed = by_rows and fast_path is None and rows_index.plan_of(env, plan)
        if by_rows and (fast_path is not None or plan.root.id not in plan.tables
                        and not indexed):
            # the rows packing's fused dot takes weights that are a table of the code
            note("dot", weights, "generic dot", f"{t.packing.name} words with a weight that "
                 "is not a function of the code alone", fallback=True, loc=op.loc)
            return None
        if not contiguous:
            note("dot", weights, "generic dot", "the activation tile is not contiguous",
                 fallback=True, loc=op.loc)
            return None
        if indexed:  # a table of the code and a small per-row index (rows_index.py)
            ok = rows_packing.window_ok(em, t, starts, codes.attrs.sizes)
            fast_path = rows_index.fused_dot
            path = rows_index.describe(indexed[1], t.packing.bits)
        elif by_rows:
            ok = rows_packing.window_ok(em, t, starts, codes.attrs.sizes)
            planes = _planes_dot(plan, t.packing)
            fast_path = rows_packing.fused_planes_dot if planes else rows_packing.fused_dot
            path = (f"fused {t.packing.name} table dot over bit planes" if planes
                    else f"{t.packing.name} fused register dot (16 rows per vector)")
        elif t.packing is None:
            # bytes (u8/i8) are addressed directly: any K start; packed words need 32-code steps
            ok = _window_ok(em, t, starts, codes.attrs.sizes,
                            aligned=codes.opcode == "load_codes")
            path = ("panel microkernel, weights decoded into the panel"
                    + row_tables.panel_note(plan)) if fast_path \
                else "fused register dot (bytes widened in registers)" \
                if codes.opcode == "load" else \
                "fused register dot (canonical words unpacked in registers)"
        else:
            ok = lanes_packing.window_ok(em, t, starts, codes.attrs.sizes, t.packing)
            path = f"fused register dot ({t.packing.name} vector unpack)"
        note("dot", weights, path + (row_tables.describe(plan) + _sums_note(env, plan)
                                     if fast_path is None else ""),
             "windows at the tensor's edges take the generic dot", loc=op.loc)
        if fast_path is None and op.results[0].id in env.carries:
            return ok, carry.RowsBody(lambda: _fused(env, plan, abuf, out, t, starts))
        return ok, lambda: (fast_path or _fused)(env, plan, abuf, out, t, starts)

    with_fallback(env, op, plan.deferred, generic_dot, choose)


def _sums_note(env: Env, plan: Plan) -> str:
    """How _fused finishes each row's sums (explain)."""
    return row_scale.note(plan) + carry.note(env, plan.dot)


def _planes_dot(plan: Plan, packing) -> bool:
    """Whether the planes packing's table dot applies: AVX-512 (or AVX2) permutes and an f32
    weight affine in the code bits (else the rows dot, which reads any rows-like packing)."""
    return (isinstance(packing, PlanesPacking) and decode.table_permutes()
            and plan.root.type.dtype == "f32"
            and affine_bits(np.asarray(plan.tables[plan.root.id]).view(np.float32),
                            packing.bits) is not None)


ONE_STEP_LANES = 16  # accumulator lanes of a dot of one step (W codes) a row


def _fused(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    em = env.em
    m = abuf.shape[0]
    bn, bk = plan.root.type.shape
    # one step of W codes a row: its two halves' products chain in one 16-lane accumulator
    # (no add of the halves after it); more steps keep acc_lanes' independent chains; a step
    # scale multiplies each step's sum in one vector of at most 16 lanes
    stepped = plan.step_scale is not None
    lanes = min(acc_lanes(m), ONE_STEP_LANES) if bk == W or stepped else acc_lanes(m)
    va = f"<{lanes} x float>"
    zero = "zeroinitializer"

    # E is one table permute of the codes: they need not be masked to their width
    clean = not ((plan.root.id in plan.tables or plan.root.id in plan.row_tables.wanted)
                 and decode.permutes())
    tables = row_tables.by_row(env, plan)  # row j -> its tables (row_tables.py)
    order = plane_order(plan, env.defs)

    def sums(j: str) -> list[str]:
        """Row j's vector accumulators, one per row of `a`."""
        n = em.val(f"add i64 {starts[0]}, {j}")
        if t.packing is not None:
            base, stride = lanes_packing.row_start(em, t, n, starts[1], t.packing)
        # the window's rows are pages apart: the hardware prefetchers lose track of them, and
        # a row's next windows are read only after the block's other rows (measured one thread,
        # 4096^2: u5-u7 and f8 GEMV 1.4-2x faster, u8 1.1-1.6x)
        if plan.prefetch:
            prefetch.next_windows(em, plan, t, starts, n, bk,
                                  base if t.packing is not None else None,
                                  stride if t.packing is not None else None)
        rows = tables(j) if tables else None

        def unpack(c: str) -> str:
            if t.packing is not None:  # c is a constant here (the steps are unrolled)
                return lanes_packing.unpack_lanes(em, t.ptr, base, t.packing, int(c), clean,
                                                  stride)
            if order:
                return window_codes(env, plan, plan.codes, t, n, c, order)
            return codes_at(env, plan, t, starts, n, c)

        def step(c: str, accs: list[str]) -> list[str]:
            w = _eval_tree(env, plan, unpack(c), j, c, plan.core, rows, order)
            k0 = em.val(f"mul i64 {c}, {W}")
            nxt = list(accs)
            if stepped:  # this step's products summed apart, then scaled once
                s = fused_leaves.leaf(env, plan.step_scale, plan.step_space, j, c)
                s = em.val(f"shufflevector <{W} x float> {s}, <{W} x float> poison, "
                           f"<{lanes} x i32> zeroinitializer")
                parts = [None] * m
            for part in range(W // lanes):  # lanes of the accumulator hold k mod `lanes`
                if lanes == W:
                    ws = w
                else:
                    sel = ", ".join(f"i32 {part * lanes + q}" for q in range(lanes))
                    ws = em.val(f"shufflevector <{W} x float> {w}, <{W} x float> poison, "
                                f"<{lanes} x i32> <{sel}>")
                for i in range(m):
                    ai = em.val(f"add i64 {em.val(f'mul i64 {i}, {abuf.strides[0]}')}, "
                                f"{em.val(f'add i64 {k0}, {part * lanes}')}")
                    av = _vload(em, abuf, ai, lanes) if not order else \
                        lanes_of(em, _vload(em, abuf, em.val(f"sub i64 {ai}, {part * lanes}"),
                                             W), order[part * lanes:(part + 1) * lanes])
                    prod = em.val(f"fmul reassoc contract {va} {av}, {ws}")
                    if stepped:
                        parts[i] = prod if parts[i] is None else \
                            em.val(f"fadd reassoc contract {va} {parts[i]}, {prod}")
                    else:
                        nxt[i] = em.val(f"fadd reassoc contract {va} {nxt[i]}, {prod}")
            for i in range(m if stepped else 0):
                scaled = em.val(f"fmul reassoc contract {va} {parts[i]}, {s}")
                nxt[i] = em.val(f"fadd reassoc contract {va} {nxt[i]}, {scaled}")
            return nxt

        if t.packing is None:
            accs = em.loop("0", str(bk // W), None, carried=[(va, zero)] * m,
                           body_carried=step)
        else:  # constant shifts per unit: unrolled
            accs = [zero] * m
            for c in range(bk // W):
                accs = step(str(c), accs)
        if plan.core is None or plan.factor == 1.0:
            return accs
        k = fused_leaves.splat(em, float_literal(plan.factor, "f32"), "f32")
        if lanes != W:
            k = em.val(f"shufflevector <{W} x float> {k}, <{W} x float> poison, "
                       f"<{lanes} x i32> zeroinitializer")
        return [em.val(f"fmul {va} {a}, {k}") for a in accs]

    def row_leaf(v: Value | None, j: str) -> str | None:  # row j's S or T (Plan) as a float
        if v is None:
            return None
        x = fused_leaves.leaf_at(env, v, tuple(plan.root.type.shape), j, [0])
        return em.val(f"extractelement <1 x float> {x}, i64 0")

    # E = core * S + sign * T: T's share of a row's dot is T * sign * (the sum of a's row)
    asums = [em.val(f"fmul float {fused_leaves.row_sum(em, abuf, i, bk)}, "
                    f"{float_literal(plan.offset_sign, 'f32')}") for i in range(m)] \
        if plan.offset is not None else []

    def row(j: str) -> None:
        accs = sums(j)
        em.declare(f"declare float @llvm.vector.reduce.fadd.v{lanes}f32(float, {va})")
        sj, tj = row_leaf(plan.scale, j), row_leaf(plan.offset, j)
        for i in range(m):
            s = em.val(f"call reassoc float @llvm.vector.reduce.fadd.v{lanes}f32(float "
                       f"{float_literal(-0.0, 'f32')}, {va} {accs[i]})")
            s = em.val(f"fmul float {s}, {sj}") if sj else s
            s = em.val(f"fadd float {s}, {em.val(f'fmul float {tj}, {asums[i]}')}") if tj else s
            oi = em.flat_index([str(i), j], out.shape)
            em.store_elem(out, oi, em.val(f"fadd float {em.load_elem(out, oi)}, {s}"))

    def rows(g: str) -> None:  # ROWS weight rows at a time: one joint horizontal sum
        j0 = em.val(f"mul i64 {g}, {ROWS}")
        accs = [sums(em.val(f"add i64 {j0}, {r}")) for r in range(ROWS)]
        vt = f"<{ROWS} x float>"

        def per_row(v: Value | None) -> str | None:  # <ROWS x float> of S or T
            vec = None if v is None else "poison"
            for r in range(ROWS if vec else 0):
                x = row_leaf(v, em.val(f"add i64 {j0}, {r}"))
                vec = em.val(f"insertelement {vt} {vec}, float {x}, i64 {r}")
            return vec
        sv, tv = per_row(plan.scale), per_row(plan.offset)
        for i in range(m):
            total = row_sums(em, [a[i] for a in accs], lanes)
            total = em.val(f"fmul {vt} {total}, {sv}") if sv else total
            if tv:
                ai = em.val(f"insertelement {vt} poison, float {asums[i]}, i64 0")
                ai = em.val(f"shufflevector {vt} {ai}, {vt} poison, <{ROWS} x i32> "
                            "zeroinitializer")
                total = em.val(f"fadd {vt} {total}, {em.val(f'fmul {vt} {tv}, {ai}')}")
            p = em.gep(out, em.flat_index([str(i), j0], out.shape))
            old = em.val(f"load {vt}, ptr {p}, align 4")
            em.emit(f"store {vt} {em.val(f'fadd {vt} {old}, {total}')}, ptr {p}, align 4")

    c = env.carries.get(plan.dot.results[0].id)
    if c is not None:  # the lane sums wait for the loop's end (carry.py)
        group = ROWS if bn % ROWS == 0 else 1
        rows_ = carry.Rows(plan, c, sums, row_leaf, asums, bn, group, lanes)
        if env.collect is not None:  # a dot joined to a later one: its rows run in that loop
            env.collect.append(rows_)
            return
        carry.emit_rows(em, [rows_], out)
    elif m <= 2 and bn % ROWS == 0:
        em.loop("0", str(bn // ROWS), rows)
    else:
        em.loop("0", str(bn), row)


def _vload(em: Emitter, buf: Buf, index: str, width: int = W) -> str:
    p = em.gep(buf, index)
    v = em.val(f"load <{width} x {lltype(buf.dtype)}>, ptr {p}, align 4")
    return convert(em, v, buf.dtype, "f32", width) if buf.dtype != "f32" else v


def _eval_tree(env: Env, plan: Plan, codes: str, j: str, c: str,
               root: Value | None = None, rows: dict[int, list[str]] | None = None,
               order: tuple[int, ...] = ()) -> str:
    """E (or its value `root`) for row j, codes c*W .. c*W+W-1, as a <W x T> vector; `rows`:
    row j's tables (row_tables.by_row), looked up instead of evaluating their values;
    `order` (plane_order): the codes' lane order, in which every leaf is read too."""
    root = root or plan.root
    em = env.em
    leaf = plan.codes.results[0]
    vals = {leaf.id: codes if plan.codes.opcode == "load" else
            _retype(em, codes, plan.codes.attrs.dtype)}
    leaves: dict[tuple, str] = {}
    spaces = row_spaces(plan.tree, plan.root)  # a dict: the plan checked it
    perms = lane_perms(plan)
    permuted: dict[tuple, str] = {(): codes}
    for op in plan.tree:
        rid = op.results[0].id
        table = plan.tables.get(rid)
        if table is not None:  # a function of the code alone: one in-register lookup
            p = perms.get(rid, ())
            if p not in permuted and plan.chain and planar(p, byte_window.bits(plan.codes)):
                permuted[p] = window_codes(env, plan, plan.codes,
                                           plan.bases[plan.codes.results[0].id], j, c, p)
            if p not in permuted:  # codes in the lanes' order (LLVM folds it into the unpack)
                t = vtype("i32", W)
                mask = ", ".join(f"i32 {q}" for q in p)
                permuted[p] = em.val(f"shufflevector {t} {codes}, {t} poison, "
                                     f"<{W} x i32> <{mask}>")
            vals[rid] = lookup(em, permuted[p], table, op.results[0].type.dtype)
            continue
        if rows and rid in rows:  # a function of the code and row j's leaves
            words = decode.permute_words(em, codes, rows[rid])
            vals[rid] = em.val(f"bitcast <{W} x i32> {words} to <{W} x float>") \
                if op.results[0].type.dtype == "f32" else words
            continue
        if op.opcode == "reshape":  # a row regrouping: the same lanes
            vals[rid] = vals[op.operands[0].id]
            continue
        if op.opcode == "codes":  # another byte window's codes (a high-bit plane)
            vals[rid] = window_codes(env, plan, op, plan.bases[rid], j, c)
            continue
        if op.opcode == "transpose":  # K positions permuted inside each step of 32
            mask = ", ".join(f"i32 {q}" for q in byte_window.step_shuffle(op))
            t = vtype(op.results[0].type.dtype, W)
            vals[rid] = em.val(f"shufflevector {t} {vals[op.operands[0].id]}, {t} poison, "
                               f"<{W} x i32> <{mask}>")
            continue
        args = []
        for v in op.operands:
            if v.id not in vals:
                key = (v.id, spaces[rid])
                if key not in leaves:
                    leaves[key] = fused_leaves.leaf(env, v, spaces[rid], j, c)
                    if order:  # (a leaf constant along K: LLVM drops the shuffle)
                        leaves[key] = lanes_of(em, leaves[key], order, v.type.dtype)
                args.append(leaves[key])
            else:
                args.append(vals[v.id])
        vals[rid] = vector_op(env, op, args)
    return vals[root.id]


def _retype(em: Emitter, codes: str, dtype: str) -> str:
    return codes if dtype in ("i32", "u32") else convert(em, codes, "u32", dtype, W)
