"""Codes packed along the other axis, fused into `dot`: the weights of a checkpoint that packs
codes along K inside words laid out along N (GPTQ's `qweight: i32[K / 8, N]`), read as a
view of a transposed word tile.

Pattern: `dot(a, transpose(E), acc)` where E [BN, BK] is a tree of elementwise ops over one
`codes(view(transpose(load(words[j :+ BK / per, n :+ BN])), F))` (F a format of `bits` bits,
per = 32 / bits codes per word) plus leaves computed elsewhere (scales, zero points). For an
in-bounds window with BN a multiple of 16, every word row is one 16-lane vector load per 16
outputs; code s of each word is one shift and mask (E's values that depend on a code of at
most 4 bits only: a shift and one table permute), E is evaluated on 16-lane vectors along N,
and the products accumulate in registers along N (no horizontal sums), for up to MAX_ROWS
rows of `a`. A pass down the word rows reads up to ROW_CHUNKS adjacent chunks of 16 outputs
(a run of each row instead of one cache line; leaves gathered by row, column k's row found
once for them). Other windows run the deferred ops and the generic dot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbitc.backends.llvm import decode, prefetch
from lowbitc.backends.llvm.column_leaves import (
    L,
    gathered_leaves,
    leaf,
    source,
)
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.fallback import note_fused, with_fallback
from lowbitc.backends.llvm.fused_leaves import row_sum, splat
from lowbitc.backends.llvm.fusion import _window_ok, vector_op
from lowbitc.backends.llvm.fusion_plan import (
    FUSIBLE,
    MAX_ROWS,
    _derived,
    difference_times,
    fold,
    region_index,
)
from lowbitc.backends.llvm.handlers import Env, convert
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Op, Region, Value
from lowbitc.ir.types import TileType, is_float, is_machine
from lowbitc.signature import format_bits

CHAINS = 8  # accumulators in flight (FMA latency x ports), shared by the rows of `a`
PAIRED = ", (Y - U) * V one FMA with a table of -(U * V) made before the loop"
WAITS = (", (Y - U) * V as Y * V with a table of -(U * V) made before the loop, added once "
         "after it (sums of a per table row)")
ROW_CHUNKS = 4  # 16-output chunks a pass down the word rows reads (4 x 64 bytes of a row)
PREFETCH_ROWS = 16  # word rows a prefetch runs ahead, at least


@dataclass
class ColumnPlan:
    dot: Op
    load: Op  # the word load [BKW, BN]
    codes: Op  # codes(view(transpose(load)))
    tree: list[Op]  # E's ops in program order
    deferred: list[Op]  # everything skipped until the dot (its fallback runs them)
    root: Value
    bits: int
    # E = (Y - U) * V with U, V constant along K ([BN, 1] tiles or scalars): the dot sums
    # a * Y only and applies V * (sum - U * sum(a)) once per window (the zero-point fold)
    fold: tuple[Value, Value, Value] | None = None
    # leaves [cast](transpose(gather(t, idx, n))) [BN, BK]: column k read as row idx[k] of
    # t (one vector per 16 outputs), no gathered tile (leaf id -> [cast?, transpose, gather])
    gathered: dict[int, list[Op]] = field(default_factory=dict)
    # E's values that depend on the code only (<= 4 bits: one 16-entry table permute of the
    # shifted words, which reads each lane's low 4 bits, so the codes need no mask)
    tables: dict[int, np.ndarray] = field(default_factory=dict)
    # E = (Y - U) * V with U, V rows gathered with one index (f32): (Y, U, V); a table of
    # -(U * V) made before the loop turns E into one FMA (column_tables.py)
    pair: tuple[Value, Value, Value] | None = None


def _column_codes(op: Op, defs: dict[int, Op], uses: dict[int, int]) -> list[Op] | None:
    """[load, transpose, view, codes] when `op` reads codes out of a transposed word tile."""
    if op.opcode != "codes" or uses[op.operands[0].id] != 1:
        return None
    view = defs.get(op.operands[0].id)
    if view is None or view.opcode != "view" or is_machine(view.attrs.dtype):
        return None
    tr = defs.get(view.operands[0].id)
    if tr is None or tr.opcode != "transpose" or tr.attrs.perm != (1, 0) \
            or uses[view.operands[0].id] != 1:
        return None
    ld = defs.get(tr.operands[0].id)
    if (ld is None or ld.opcode != "load" or ld.attrs.masked or len(ld.attrs.sizes) != 2
            or ld.results[0].type.dtype not in ("u32", "i32") or uses[tr.operands[0].id] != 1
            or 32 % format_bits(view.attrs.dtype)):
        return None
    return [ld, tr, view, op]


def plan_columns(r: Region) -> dict[int, ColumnPlan]:
    """Dots of this region (keyed by their result id) whose weights are codes of a transposed
    word tile under elementwise ops, with at most MAX_ROWS rows of `a`."""
    defs, uses, order, dots = region_index(r)
    plans: dict[int, ColumnPlan] = {}
    for op in dots:
        a, b, acc = op.operands
        tr = defs.get(b.id)
        if tr is None or tr.opcode != "transpose" or tr.attrs.perm != (1, 0) or uses[b.id] != 1:
            continue
        e = tr.operands[0]
        found = _tree(defs, uses, e)
        if found is None:
            continue
        tree, chain = found
        if not (isinstance(e.type, TileType) and is_float(e.type.dtype)
                and a.type.shape[0] <= MAX_ROWS and acc.type.dtype == "f32"
                and e.type.shape[0] % L == 0 and chain[3].results[0].type.shape == e.type.shape):
            continue
        tree = sorted(tree, key=lambda o: order[id(o)])
        gathered = gathered_leaves(tree, defs, uses, e.type.shape)
        extra = [o for ops in gathered.values() for o in ops]
        deferred = sorted(tree + chain + [tr] + extra, key=lambda o: order[id(o)])
        plans[op.results[0].id] = ColumnPlan(op, chain[0], chain[3], tree, deferred, e,
                                             format_bits(chain[2].attrs.dtype),
                                             fold(tree, e, -1),
                                             gathered, _tables(tree, chain[3], e, defs),
                                             _pair(tree, e, gathered))
    return plans


def _pair(tree: list[Op], root: Value, gathered: dict[int, list[Op]]):
    """(Y, U, V) when E = (Y - U) * V (either order of the product), U and V f32 leaves
    gathered with the same index tile, else None."""
    found = difference_times(tree, root, lambda v: v.id in gathered and v.type.dtype == "f32")
    if found is None or (gathered[found[1].id][-1].operands[1].id
                         != gathered[found[2].id][-1].operands[1].id):
        return None
    return found


def _tables(tree: list[Op], codes: Op, root: Value, defs: dict[int, Op]) -> dict:
    """decode.code_tables for codes of at most 4 bits on a host with 16-lane permutes."""
    if not decode.permutes() or format_bits(codes.operands[0].type.dtype) > 4:
        return {}
    return decode.code_tables(tree, codes, root, defs)


def _tree(defs: dict[int, Op], uses: dict[int, int], root: Value):
    """(E's fusible ops, the load..codes chain) or None; no value inside E used outside it."""
    seen: dict[int, Op] = {}
    chains = []
    stack = [root]
    while stack:
        v = stack.pop()
        op = defs.get(v.id)
        if op is None or not isinstance(v.type, TileType) or id(op) in seen:
            continue
        chain = _column_codes(op, defs, uses)
        if chain is not None:
            if all(c[3] is not op for c in chains):
                chains.append(chain)
            continue
        if op.opcode not in FUSIBLE or op.opcode == "lut":
            continue  # a leaf computed elsewhere
        seen[id(op)] = op
        stack.extend(op.operands)
    if len(chains) != 1:
        return None
    seen = _derived(seen, chains[0][3])
    inside: dict[int, int] = {}
    for op in seen.values():
        for v in op.operands:
            inside[v.id] = inside.get(v.id, 0) + 1
    for op in [*seen.values(), chains[0][3]]:
        r = op.results[0]
        if r is not root and inside.get(r.id, 0) != uses[r.id]:
            return None
    return list(seen.values()), chains[0]


def emit_column_dot(env: Env, plan: ColumnPlan, generic_dot) -> None:
    em = env.em
    t = env.get(plan.load.operands[0])
    starts = [env.get(v) for v in plan.load.operands[1:3]]
    note_fused(plan.dot, plan.load, "fused column dot (codes of a transposed word tile, 16 "
               f"outputs per vector{', decoded by one table permute' if plan.tables else ''}"
               f"{_paired_note(env.col_tables.get(plan.dot.results[0].id))})")
    for ops in plan.gathered.values():
        note("load", subject_of(ops[-1].operands[0]), f"row gather fused into the dot at "
             f"{plan.dot.loc}: one vector of row idx[k] per 16 outputs", loc=ops[-1].loc)

    def choose(abuf, out):
        if not (isinstance(abuf, Buf) and abuf.contiguous):
            return None
        ok = _window_ok(em, t, starts, plan.load.attrs.sizes, aligned=False)
        for ops in plan.gathered.values():  # the gathered rows' window along N
            g = ops[-1]
            src, n0 = source(env, g), env.get(g.operands[2])
            end = em.val(f"add i64 {n0}, {g.attrs.sizes[1]}")
            inside = em.val(f"and i1 {em.val(f'icmp sge i64 {n0}, 0')}, "
                            f"{em.val(f'icmp sle i64 {end}, {src.dims[1]}')}")
            ok = em.val(f"and i1 {ok}, {inside}")
        return ok, lambda: _fast(env, plan, abuf, out, t, starts)

    with_fallback(env, plan.dot, plan.deferred, generic_dot, choose, "colfused")


def _paired_note(table) -> str:
    return "" if table is None else PAIRED if table.sums is None else WAITS


def _fast(env: Env, plan: ColumnPlan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    em = env.em
    m = abuf.shape[0]
    bkw, bn = plan.load.attrs.sizes
    per = 32 // plan.bits
    vf = f"<{L} x float>"
    chunks = bn // L
    # chunks of 16 outputs that share one pass down the word rows: a row's adjacent words are
    # read together (one run of the row per pass instead of one cache line per pass, and the
    # per-column work of gathered leaves done once per pass), as many as keep the
    # accumulators in registers
    span = max(1, min(chunks, ROW_CHUNKS // m))
    # independent accumulators per row of `a` and chunk (by code slot), so the FMAs do not
    # wait on each other's latency; summed once per window
    chains = max(1, min(per, CHAINS // (m * span)))
    sums = [row_sum(em, abuf, i, bkw * per) for i in range(m)] if plan.fold else []
    table = env.col_tables.get(plan.dot.results[0].id)
    # T after the loop (one pass down the rows, column_tables.prepare): the sums of `a` in it
    g_v = plan.gathered[plan.pair[2].id][-1] if table and table.sums else None

    def group(first: str, count: int) -> None:
        cs = [em.val(f"add i64 {first}, {j}") for j in range(count)]

        def step(jj: str, accs: list[str]) -> list[str]:
            row = em.val(f"add i64 {starts[0]}, {jj}")
            base = em.val(f"mul i64 {row}, {t.strides[0]}")
            cols = [em.val(f"add i64 {starts[1]}, {em.val(f'mul i64 {c}, {L}')}") for c in cs]
            words = [_word_row(em, t, base, col) for col in cols]
            _prefetch_run(em, t, base, cols[0], bkw, count)
            rows: dict = {}  # gathered rows of this step, shared by its chunks
            nxt = list(accs)
            for s in range(per):
                k = em.val(f"add i64 {em.val(f'mul i64 {jj}, {per}')}, {s}")
                splats = [_splat_a(em, abuf, i, k) for i in range(m)]
                for j, c in enumerate(cs):
                    w = (_paired(env, plan, table, words[j], s, k, c, rows) if table
                         else _eval(env, plan, words[j], s, k, c,
                                    plan.fold[0] if plan.fold else None, rows))
                    for i in range(m):
                        a_ = (i * count + j) * chains + s % chains
                        prod = em.val(f"fmul contract {vf} {splats[i]}, {w}")
                        nxt[a_] = em.val(f"fadd contract {vf} {nxt[a_]}, {prod}")
                if g_v is not None:
                    table.add_sum(env, g_v, abuf, k, rows, s)
            return nxt

        parts = em.loop("0", str(bkw), None,
                        carried=[(vf, "zeroinitializer")] * (m * count * chains),
                        body_carried=step)
        for j, c in enumerate(cs):
            accs = []
            for i in range(m):
                at = (i * count + j) * chains
                total = parts[at]
                for q in range(1, chains):
                    total = em.val(f"fadd {vf} {total}, {parts[at + q]}")
                accs.append(total)
            if plan.fold is not None:  # acc = V * (sum a*Y - U * sum a)
                _, u, v = plan.fold
                uv, vv = (leaf(env, x, plan.root.type.shape, "0", c) for x in (u, v))
                for i in range(m):
                    sa = splat(em, sums[i], "f32", L)
                    shifted = em.val(f"fsub {vf} {accs[i]}, {em.val(f'fmul {vf} {uv}, {sa}')}")
                    accs[i] = em.val(f"fmul {vf} {vv}, {shifted}")
            for i in range(m):
                p = em.gep(out, em.val(f"add i64 {i * out.shape[1]}, "
                                       f"{em.val(f'mul i64 {c}, {L}')}"))
                old = em.val(f"load {vf}, ptr {p}, align 4")
                em.emit(f"store {vf} {em.val(f'fadd {vf} {old}, {accs[i]}')}, ptr {p}, align 4")

    full, rest = divmod(chunks, span)
    em.loop("0", str(full), lambda g: group(em.val(f"mul i64 {g}, {span}"), span))
    if rest:
        group(str(full * span), rest)


def _word_row(em, t, base: str, col: str) -> str:
    """The <16 x i32> words at (row, col) (`base` the row's offset)."""
    p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {em.val(f'add i64 {base}, {col}')}")
    return em.val(f"load <{L} x i32>, ptr {p}, align 4")


def _prefetch_run(em, t, base: str, col: str, bkw: int, count: int) -> None:
    """Prefetch the run of `count` 16-word vectors at (row, col) PREFETCH_ROWS rows (at least
    two K windows) ahead: word rows are a row of N apart, a stride the hardware prefetchers
    lose track of (as in prefetch.next_windows)."""
    p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {em.val(f'add i64 {base}, {col}')}")
    ahead = em.val(f"getelementptr i32, ptr {p}, i64 "
                   f"{em.val(f'mul i64 {t.strides[0]}, {max(2 * bkw, PREFETCH_ROWS)}')}")
    prefetch.run_ahead(em, ahead, count * L * 4)


def _splat_a(em, abuf: Buf, i: int, k: str) -> str:
    """a[i, k] as f32 in 16 lanes."""
    ai = em.val(f"add i64 {em.val(f'mul i64 {i}, {abuf.strides[0]}')}, {k}")
    return splat(em, convert(em, em.load_elem(abuf, ai), abuf.dtype, "f32"), "f32", L)


def _eval(env: Env, plan: ColumnPlan, words: str, s: int, k: str, c: str,
          root: Value | None = None, rows: dict | None = None) -> str:
    """E[16c .. 16c + 15, k] (or E's value `root`) as a <16 x T> vector (column k of E, 16
    rows along N) from code slot s of the 16 `words`; `rows` keeps the gathered rows' offsets
    of column k for the other chunks."""
    em = env.em
    vi = f"<{L} x i32>"
    shifted = em.val(f"lshr {vi} {words}, splat (i32 {s * plan.bits})") if s else words
    codes = em.val(f"and {vi} {shifted}, splat (i32 {(1 << plan.bits) - 1})")
    cid = plan.codes.results[0].id
    vals = {cid: codes if plan.codes.results[0].type.dtype in ("i32", "u32")
            else convert(em, codes, "u32", plan.codes.results[0].type.dtype, L)}
    for rid, table in plan.tables.items():  # (the mask and ops only they read: dead code)
        vals[rid] = _lookup(em, shifted, table, _dtype_of(plan, rid))
    shape = plan.root.type.shape
    for op in plan.tree:
        if root is not None and root.id in vals:
            break
        if op.results[0].id in vals:
            continue
        args = []
        for v in op.operands:
            if v.id not in vals:
                vals[v.id] = leaf(env, v, shape, k, c, plan.gathered, rows)
            args.append(vals[v.id])
        vals[op.results[0].id] = vector_op(env, op, args, L)
        if root is not None and op.results[0].id == root.id:
            break  # (program order: what follows is not needed)
    return vals[(root or plan.root).id]


def _paired(env: Env, plan: ColumnPlan, table, words: str, s: int, k: str, c: str,
            rows: dict) -> str:
    """E = (Y - U) * V as fma(Y, V, T): V and T = -(U * V) read from the loop's product
    table at idx[k]'s row (its row of zeros outside the tiles, as the gathers read)."""
    em = env.em
    vf = f"<{L} x float>"
    y, _, v = plan.pair
    yv = _eval(env, plan, words, s, k, c, y, rows)
    at = em.val(f"add i64 {table.row(env, plan.gathered[v.id][-1], k, rows)}, "
                f"{em.val(f'mul i64 {c}, {L}')}")
    vv, tv = (em.val(f"load {vf}, ptr {em.gep(table.table, em.val(f'add i64 {at}, {j}'))}, "
                     "align 4") for j in (0, table.table.shape[1] // 2))
    if table.sums is not None:  # T waits for the loop's end (column_tables.finish)
        return em.val(f"fmul {vf} {yv}, {vv}")
    em.declare(f"declare {vf} @llvm.fma.v{L}f32({vf}, {vf}, {vf})")
    return em.val(f"call {vf} @llvm.fma.v{L}f32({vf} {yv}, {vf} {vv}, {vf} {tv})")


def _lookup(em, idx: str, table: np.ndarray, dtype: str) -> str:
    """table[idx & 15] for <16 x i32> idx: one permute (a table of 2^b < 16 entries repeated
    to 16 reads the low b bits alike)."""
    i16 = f"<{L} x i32>"
    tab = "<" + ", ".join(f"i32 {int(w)}" for w in np.resize(table, L).view(np.int32)) + ">"
    em.declare(f"declare {i16} @llvm.x86.avx512.permvar.si.512({i16}, {i16})")
    w = em.val(f"call {i16} @llvm.x86.avx512.permvar.si.512({i16} {tab}, {i16} {idx})")
    return em.val(f"bitcast {i16} {w} to <{L} x float>") if dtype == "f32" else w


def _dtype_of(plan: ColumnPlan, rid: int) -> str:
    return next(op.results[0].type.dtype for op in plan.tree if op.results[0].id == rid)
