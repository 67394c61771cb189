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

from dataclasses import dataclass

from lowbitc.backends.llvm.emitter import Buf, Emitter
from lowbitc.backends.llvm.fused_leaves import splat
from lowbitc.backends.llvm.fusion_plan import region_index
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType

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
    if dot.results[0].id not in env.carries:
        return ""
    return "; lane sums carried across the loop, reduced once after it"


def add(em: Emitter, c: Carry, i: str, j: str, vec: str, lanes: int,
        scale: str | None = None) -> None:
    """partials[i, j, :lanes] += vec (a <lanes x float>), times `scale` (a vector) if given."""
    c.lanes = lanes
    vt = f"<{lanes} x float>"
    p = em.gep(c.partials, em.flat_index([str(i), j, "0"], c.partials.shape))
    old = em.val(f"load {vt}, ptr {p}, align 4")
    if scale is not None:
        em.declare(f"declare {vt} @llvm.fma.v{lanes}f32({vt}, {vt}, {vt})")
        new = em.val(f"call {vt} @llvm.fma.v{lanes}f32({vt} {vec}, {vt} {scale}, {vt} {old})")
    else:
        new = em.val(f"fadd reassoc contract {vt} {old}, {vec}")
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


def add_rows(em: Emitter, plan, c: Carry, g: str, sums, row_leaf, asums: list[str], out: Buf,
             group: int, lanes: int) -> None:
    """Rows g*group .. +group-1: each row's vector sums (times its S) into the carried
    partials; T's share (T * the sum of a's row) into out (fusion._fused: `sums(j)` row j's
    vector sums per row of a, `row_leaf(v, j)` row j's S or T, `asums` the rows of a summed)."""
    half = min(lanes, 16)  # a 32-lane accumulator's halves are added first: one zmm a row
    va = f"<{half} x float>"
    j0 = em.val(f"mul i64 {g}, {group}")
    rows = [em.val(f"add i64 {j0}, {r}") for r in range(group)]
    accs = [sums(j) for j in rows]  # (independent chains first)
    for j, acc in zip(rows, accs):
        sj, tj = row_leaf(plan.scale, j), row_leaf(plan.offset, j)
        if sj:
            sj = splat(em, sj, "f32", half)
        for i, v in enumerate(acc):
            if half < lanes:
                lo, hi = (em.val(f"shufflevector <{lanes} x float> {v}, <{lanes} x float> "
                                 f"poison, <{half} x i32> <"
                                 + ", ".join(f"i32 {h * half + q}" for q in range(half)) + ">")
                          for h in (0, 1))
                v = em.val(f"fadd reassoc {va} {lo}, {hi}")
            add(em, c, str(i), j, v, half, sj)
            if tj:
                oi = em.flat_index([str(i), j], out.shape)
                s = em.val(f"fmul float {tj}, {asums[i]}")
                em.store_elem(out, oi, em.val(f"fadd float {em.load_elem(out, oi)}, {s}"))
