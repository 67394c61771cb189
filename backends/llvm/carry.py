"""Vector partial sums carried across a user's K loop.

`for k ... { acc = dot(a, transpose(E), acc) }`, where nothing else in the loop reads acc:
the fused register dot (fusion._fused) adds each step's vector accumulators into a buffer of
lane partial sums (one vector per output) instead of summing them horizontally per window;
after the loop each output's lanes are summed once and added to the loop's result. The
generic dot of edge windows still adds into acc: the two parts sum to the same dot. Only a
loop not inside another one carries (codegen._for): an inner loop, e.g. over one group's K
(matmul_mix.lbk), is entered once per outer step and would zero and reduce its partials as
often (measured: the 4-format mixture GEMV 1.65x slower carried).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbitc.backends.llvm.emitter import Buf, Emitter
from lowbitc.backends.llvm.fused_leaves import splat
from lowbitc.backends.llvm.fusion_plan import MAX_ROWS, region_index
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType
from lowbitc.passes.simplify import EFFECTS

LANES = 32  # the widest accumulator of the fused dot (fusion_plan.acc_lanes)
# K per loop step (over the chain's dots) from which carrying wins: a row's partials cost a
# load, an fma and a store a step, a joint horizontal sum about as much for 32 weights (one
# thread, 4096^2, M = 1: GGUF Q8_0's 32 a step 6% slower carried; NF4's 64 6%, Q4_0's 128 8%,
# Q4_K's 2 x 32 17% faster)
MIN_STEP = 64
MAX_PARTIALS = 1 << 17  # bytes of partials per carried tile (a stack buffer of each program)


@dataclass
class Carry:
    """A carried dot's partials: [M, N, LANES] f32, zeroed before the loop; `lanes` is set
    (the accumulator width) by the fused dot that adds into them, None if none did."""

    partials: Buf
    lanes: int | None = None


def carried_dots(em: Emitter, loop: Op) -> dict[int, Carry]:
    """The carried f32 tiles of `loop` updated only by a chain of dots in its body (the first
    adds into the carried tile, each next one into the previous result, the last one's result
    is yielded; each read nowhere else; MIN_STEP of K a step at least): each such dot's
    result id -> the tile's partials, zeroed before the loop (emitted here)."""
    body = loop.regions[0]
    out: dict[int, Carry] = {}
    index = region_index(body)  # (uses count nested regions too)
    dots = {op.results[0].id: op for op in index.dots}
    yields = body.ops[-1].operands if body.ops and body.ops[-1].opcode == "yield" else ()
    for j, y in enumerate(yields):
        arg = body.args[1 + j]
        t = loop.results[j].type
        if not isinstance(t, TileType) or t.dtype != "f32" or len(t.shape) != 2:
            continue
        chain, v = [], y  # dots, last first, each adding into the previous one's result
        while v.id != arg.id and index.uses.get(v.id, 0) == 1:
            dot = dots.get(v.id)
            if dot is None:
                break
            chain.append(dot)
            v = dot.operands[2]
        if not chain or v.id != arg.id or index.uses.get(arg.id, 0) != 1 \
                or sum(d.operands[0].type.shape[1] for d in chain) < MIN_STEP:
            continue
        m, n = t.shape
        if 4 * m * n * LANES > MAX_PARTIALS:
            continue  # (a big output tile: its partials would not stay in L1 nor on the stack)
        p = em.alloc("f32", (m, n, LANES))
        em.declare("declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
        em.emit(f"call void @llvm.memset.p0.i64(ptr align 64 {p.ptr}, i8 0, "
                f"i64 {4 * m * n * LANES}, i1 false)")
        c = Carry(p)
        out.update((d.results[0].id, c) for d in chain)
    return out


def note(env, dot: Op) -> str:
    """Explain's words for a fused dot whose lane sums are carried (else "")."""
    rid = dot.results[0].id
    if rid not in env.carries:
        return ""
    joined = rid in env.joins or rid in env.joins.values()
    return "; lane sums carried across the loop, reduced once after it" + (
        "; one row loop with the chained dot reading the same codes window" if joined else "")


def add(em: Emitter, c: Carry, i: str, j: str, terms: list[tuple[str, str | None]],
        lanes: int) -> None:
    """partials[i, j, :lanes] += each (vec, scale) of `terms` (<lanes x float>, the vector
    times `scale` if given): one load and one store for them all."""
    c.lanes = lanes
    vt = f"<{lanes} x float>"
    p = em.gep(c.partials, em.flat_index([str(i), j, "0"], c.partials.shape))
    new = em.val(f"load {vt}, ptr {p}, align 4")
    for vec, scale in terms:
        if scale is not None:
            em.declare(f"declare {vt} @llvm.fma.v{lanes}f32({vt}, {vt}, {vt})")
            new = em.val(f"call {vt} @llvm.fma.v{lanes}f32({vt} {vec}, {vt} {scale}, {vt} {new})")
        else:
            new = em.val(f"fadd reassoc contract {vt} {new}, {vec}")
    em.emit(f"store {vt} {new}, ptr {p}, align 4")


def finish(em: Emitter, c: Carry, acc: Buf) -> None:
    """acc[i, j] += the lane sum of partials[i, j] (after the loop), if a fused dot used them."""
    if c.lanes is None:
        return
    vt = f"<{c.lanes} x float>"
    em.declare(f"declare float @llvm.vector.reduce.fadd.v{c.lanes}f32(float, {vt})")
    m, n, _ = c.partials.shape

    def one(idx: list[str]) -> None:
        p = em.gep(c.partials, em.flat_index([*idx, "0"], c.partials.shape))
        s = em.val(f"call reassoc float @llvm.vector.reduce.fadd.v{c.lanes}f32(float -0.0, "
                   f"{vt} {em.val(f'load {vt}, ptr {p}, align 4')})")
        oi = em.flat_index(idx, acc.shape)
        em.store_elem(acc, oi, em.val(f"fadd float {em.load_elem(acc, oi)}, {s}"))

    em.nest((m, n), one)


@dataclass
class Rows:
    """One carried fused dot's rows (fusion._fused): `sums(j)` row j's vector sums per row of
    a, `row_leaf(v, j)` row j's S or T, `asums` the rows of a summed; `bn` rows of `lanes`
    lanes, `group` a step of the row loop."""

    plan: object
    carry: Carry
    sums: Callable[[str], list[str]]
    row_leaf: Callable
    asums: list[str]
    bn: int
    group: int
    lanes: int


def emit_rows(em: Emitter, dots: list[Rows], out: Buf) -> None:
    """The row loop of one or more carried dots over the same rows (a chain's dots reading one
    codes window: each row's partials loaded and stored once for them all); T's shares added
    into `out`."""
    first = dots[0]
    em.loop("0", str(first.bn // first.group), lambda g: _add_rows(em, dots, g, out))


def _add_rows(em: Emitter, dots: list[Rows], g: str, out: Buf) -> None:
    """Rows g*group .. +group-1: each row's vector sums (times its S) into the carried
    partials; T's share (T * the sum of a's row) into out."""
    first = dots[0]
    lanes, group = first.lanes, first.group
    half = min(lanes, 16)  # a 32-lane accumulator's halves are added first: one zmm a row
    va = f"<{half} x float>"
    j0 = em.val(f"mul i64 {g}, {group}")
    rows = [em.val(f"add i64 {j0}, {r}") for r in range(group)]
    accs = [[d.sums(j) for d in dots] for j in rows]  # (independent chains first)
    for j, row_accs in zip(rows, accs):
        terms: dict[int, list] = {}
        for d, acc in zip(dots, row_accs):
            sj, tj = d.row_leaf(d.plan.scale, j), d.row_leaf(d.plan.offset, j)
            if sj:
                sj = splat(em, sj, "f32", half)
            for i, v in enumerate(acc):
                if half < lanes:
                    lo, hi = (em.val(f"shufflevector <{lanes} x float> {v}, <{lanes} x float> "
                                     f"poison, <{half} x i32> <"
                                     + ", ".join(f"i32 {h * half + q}" for q in range(half))
                                     + ">") for h in (0, 1))
                    v = em.val(f"fadd reassoc {va} {lo}, {hi}")
                terms.setdefault(i, []).append((v, sj))
                if tj:
                    oi = em.flat_index([str(i), j], out.shape)
                    s = em.val(f"fmul float {tj}, {d.asums[i]}")
                    em.store_elem(out, oi, em.val(f"fadd float {em.load_elem(out, oi)}, {s}"))
        for i, t in terms.items():
            add(em, first.carry, str(i), j, t, half)


class RowsBody:
    """A carried fused dot's fast path (fusion._fused), which can give its Rows instead of
    emitting their loop (env.collect set), to run them in another dot's loop."""

    def __init__(self, emit: Callable[[], None]):
        self.emit = emit

    def __call__(self) -> None:
        self.emit()


def joined_fast(env, dot: Op, chosen, out: Buf):
    """A fused dot's (ok, fast path) as fallback.with_fallback takes it, with plan_joins' joins:
    the first dot of a pair leaves its rows to the second (its fast path emits nothing), the
    second runs both in one loop where the first's window held (the same window: the same
    condition, so the second's own is not checked); a dot taking no carried fast path runs
    the rows left to it alone first."""
    rid = dot.results[0].id
    earlier = env.joined.pop(rid, None)  # (ok, RowsBody) of the dot joined to this one
    rows = chosen[1] if chosen is not None and isinstance(chosen[1], RowsBody) else None
    if earlier is not None and rows is None:  # (not expected) its rows alone, where they ran
        flush(env, earlier, out)
        earlier = None
    if rows is None:
        return chosen
    ok = chosen[0] if earlier is None else earlier[0]
    if rid in env.joins:
        return ok, lambda: env.joined.update({env.joins[rid]: (ok, rows)})
    return ok, lambda: emit_joined(env, [earlier[1], rows] if earlier else [rows], out)


def emit_joined(env, bodies: list[RowsBody], out: Buf) -> None:
    """The fast paths of `bodies` (their setup in order), their rows in one loop into `out`."""
    env.collect = []
    for b in bodies:
        b.emit()
    dots, env.collect = env.collect, None
    emit_rows(env.em, dots, out)


def flush(env, earlier: tuple[str, RowsBody], out: Buf) -> None:
    """A joined dot's fast path alone where its window holds (when the dot it was joined to
    takes another path), its T shares into `out`."""
    em = env.em
    ok, body = earlier
    run, cont = em.label("joined"), em.label("flushed")
    em.emit(f"br i1 {ok}, label %{run}, label %{cont}")
    em.start_block(run)
    emit_joined(env, [body], out)
    em.br(cont)
    em.start_block(cont)


def plan_joins(r, plans: dict, carries: dict) -> dict[int, int]:
    """Pairs of carried fused dots of region `r`, the second adding into the first's result,
    whose codes are the same window of one tensor (Q4_K's low and high nibbles of one byte
    load): first result id -> second's. Their rows run in one loop (emit_joined)."""
    order = {id(op): i for i, op in enumerate(r.ops)}
    effects = [i for i, op in enumerate(r.ops) if op.opcode in EFFECTS or op.regions]

    def window(p) -> tuple:
        c = p.codes  # (a linearized load's offset operands follow from its starts)
        return (c.opcode, tuple(v.id for v in c.operands[:1 + len(c.attrs.sizes)]), c.attrs)

    by_result = {p.dot.results[0].id: p for p in plans.values()}
    joins: dict[int, int] = {}
    for p in plans.values():
        q = by_result.get(p.dot.operands[2].id)
        if (q is None or q.dot.results[0].id not in carries or p.dot.results[0].id not in carries
                or q.dot.results[0].id in joins.values() or window(p) != window(q)
                or q.dot.opcode != "dot" or p.dot.opcode != "dot"
                or q.dot.operands[0].type.shape[0] > MAX_ROWS
                or p.dot.operands[0].type.shape[0] > MAX_ROWS):
            continue
        lo, hi = order[id(q.dot)], order[id(p.dot)]
        if not any(lo < e < hi for e in effects):
            joins[q.dot.results[0].id] = p.dot.results[0].id
            p.prefetch = False  # (q's rows, run first, prefetch the window's next lines)
    return joins
