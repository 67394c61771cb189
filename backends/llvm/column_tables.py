"""Product tables for the column dot (columns.py), made once before a loop: a weight
E = (Y - U) * V whose U and V are rows gathered with one index from tiles the loop does not
write (GPTQ act-order's zero-point and scale tiles, `load(zt[g, 0 :+ BN])` and
`load(st[g, 0 :+ BN])`) is fma(Y, V, T) with T = -(U * V) over every row of the tiles and
the dot's columns: one FMA per weight instead of a subtract and a multiply. Row r of the
table holds V's row r (after its cast) and T's side by side, and one row of zeros follows
the tiles' rows: an index outside the tiles reads that row (as the gather reads zeros), so
a column's rows are two plain loads at one offset, no mask.

Where the dot's accumulator only carries it across the loop (acc = dot(a, E, acc) yielded
as is) and one pass down the word rows reads all of the dot's outputs (BM * BN <= 64), the T
term leaves the loop: the dot adds a * (Y * V) and sums each row of `a` per
table row (S[i, r] = sum of a[i, k] over the k whose index reads row r); after the loop the
accumulator gains S @ T once (T's rows times the sums), not a T row per input row."""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.backends.llvm.column_leaves import L
from lowbitc.backends.llvm.columns import ROW_CHUNKS, ColumnPlan, plan_columns
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.fused_leaves import splat
from lowbitc.backends.llvm.fusion_plan import region_index
from lowbitc.backends.llvm.handlers import Env, convert
from lowbitc.backends.llvm.ops_gather import index_row
from lowbitc.ir.core import Op, Region, Value

MAX_TABLE_BYTES = 96 * 1024  # a table per dot lives on the stack
# dots with more rows of `a` keep (Y - U) * V: GPTQ act-order GEMV, N = K = 4096, one thread,
# streamed, CPU time table / no table: 1 row 0.76, 2 rows 0.92, 4 rows 1.03, 8 rows 1.24
MAX_A_ROWS = 2
SUM_COPIES = 4  # copies of the per-row sums of `a`, added to in turn


@dataclass(frozen=True)
class ProductTable:
    table: Buf  # [rows + 1, 2 BN] f32: row r = V[r, :], -(U * V)[r, :]; row `rows` zeros
    rows: int  # the tiles' rows (an index outside them reads row `rows`)
    made: str = "true"  # i1: the table was made (the dot's columns lie inside the tiles)
    # [M, rows + 1] f32 per-row sums of `a` when T is added after the loop (else None), and
    # the loop result that accumulator is
    sums: Buf | None = None
    result: int = -1

    def row(self, env: Env, g: Op, k: str, cache: dict) -> str:
        """The offset of idx[k]'s row (g the gather of V), the zero row outside the tiles;
        kept in `cache` for the other chunks of column k."""
        key = ("table", g.operands[1].id, k)
        if key not in cache:
            em = env.em
            r = index_row(env, g, k)
            inside = em.val(f"icmp ult i64 {r}, {self.rows}")
            r = em.val(f"select i1 {inside}, i64 {r}, i64 {self.rows}")
            cache[("index", key)] = r
            cache[key] = em.val(f"mul i64 {r}, {self.table.shape[1]}")
        return cache[key]

    def add_sum(self, env: Env, g: Op, abuf: Buf, k: str, cache: dict, slot: int) -> None:
        """S[copy, i, row of idx[k]] += a[i, k] for every row i of `a`, copy = slot mod
        SUM_COPIES (taken in turn: a run of k reading one row makes SUM_COPIES chains of
        adds, not one)."""
        em = env.em
        copy = slot % SUM_COPIES
        self.row(env, g, k, cache)
        r = cache[("index", ("table", g.operands[1].id, k))]
        for i in range(abuf.shape[0]):
            a = convert(em, em.load_elem(abuf, em.val(f"add i64 {i * abuf.strides[0]}, {k}")),
                        abuf.dtype, "f32")
            at = em.val(f"add i64 {r}, {(copy * abuf.shape[0] + i) * (self.rows + 1)}")
            em.store_elem(self.sums, at, em.val(f"fadd float {em.load_elem(self.sums, at)}, {a}"))


def prepare(env: Env, loop: Op) -> None:
    """Before `loop` is emitted: the tables of its body's column dots whose (Y - U) * V reads U
    and V gathered from tiles the loop does not write, at a column start fixed before it
    (env.col_tables: dot result id -> ProductTable), and the zeroed sums of `a` of those whose
    T term waits for the loop's end (finish)."""
    body = loop.regions[0]
    for plan in plan_columns(body).values():
        if plan.pair is None:
            continue
        leaves = [plan.gathered[v.id] for v in plan.pair[1:]]
        srcs = [env.tiles.get(ops[-1].operands[0].id) for ops in leaves]
        starts = [ops[-1].operands[2] for ops in leaves]
        bn, n0 = plan.root.type.shape[0], _before(env, starts[0])
        m = plan.dot.operands[0].type.shape[0]
        if (m > MAX_A_ROWS
                or any(s is None or len(s.shape) != 2 for s in srcs)
                or srcs[0].shape[0] != srcs[1].shape[0]
                or (srcs[0].shape[0] + 1) * 2 * bn * 4 > MAX_TABLE_BYTES
                or starts[0].id != starts[1].id or n0 is None
                or _written(body, {ops[-1].operands[0].id for ops in leaves})):
            continue
        table, made = _build(env, plan, leaves, srcs, n0)
        rows, j = srcs[0].shape[0], _carried_acc(loop, plan.dot)
        sums = None
        if j >= 0 and m * (bn // L) <= ROW_CHUNKS:
            sums = _zeroed(env.em, (SUM_COPIES * m, rows + 1))
        env.col_tables[plan.dot.results[0].id] = ProductTable(table, rows, made, sums, j)


def finish(env: Env, loop: Op, bufs: dict) -> None:
    """After `loop`: each of its accumulators whose T term waited gains S @ T."""
    em = env.em
    for plan in plan_columns(loop.regions[0]).values():
        pt = env.col_tables.get(plan.dot.results[0].id)
        if pt is None or pt.sums is None:
            continue
        add, done = em.label("tsum"), em.label("tsumd")
        em.emit(f"br i1 {pt.made}, label %{add}, label %{done}")
        em.start_block(add)
        for i in range(pt.sums.shape[0] // SUM_COPIES):
            for c in range(0, pt.table.shape[1] // 2, L):
                _add_terms(em, pt, bufs[pt.result], i, c)
        em.br(done)
        em.start_block(done)


def _add_terms(em, pt: ProductTable, out: Buf, i: int, c: int) -> None:
    """out[i, c :+ 16] += sum over the table's rows r of S[i, r] * T[r, c :+ 16]."""
    vf = f"<{L} x float>"
    width = pt.table.shape[1]
    em.declare(f"declare {vf} @llvm.fma.v{L}f32({vf}, {vf}, {vf})")

    def row(r: str, acc: list[str]) -> list[str]:
        m = pt.sums.shape[0] // SUM_COPIES
        parts = [em.load_elem(pt.sums, em.val(f"add i64 {r}, {(q * m + i) * (pt.rows + 1)}"))
                 for q in range(SUM_COPIES)]
        total = parts[0]
        for x in parts[1:]:
            total = em.val(f"fadd float {total}, {x}")
        s = splat(em, total, "f32", L)
        at = em.val(f"add i64 {em.val(f'mul i64 {r}, {width}')}, {width // 2 + c}")
        t = em.val(f"load {vf}, ptr {em.gep(pt.table, at)}, align 4")
        return [em.val(f"call {vf} @llvm.fma.v{L}f32({vf} {s}, {vf} {t}, {vf} {acc[0]})")]

    total = em.loop("0", str(pt.rows), None, carried=[(vf, "zeroinitializer")],
                    body_carried=row)[0]
    p = em.gep(out, str(i * out.strides[0] + c))
    old = em.val(f"load {vf}, ptr {p}, align 4")
    em.emit(f"store {vf} {em.val(f'fadd {vf} {old}, {total}')}, ptr {p}, align 4")


def _zeroed(em, shape: tuple[int, int]) -> Buf:
    buf = em.alloc("f32", shape)
    em.loop("0", str(buf.size), lambda i: em.store_elem(buf, i, "0.0"))
    return buf


def _carried_acc(loop: Op, dot: Op) -> int:
    """The loop result that `dot`'s accumulator is, when the loop only carries it through the
    dot (acc = dot(a, E, acc) at the body's top level, yielded as is); else -1."""
    body = loop.regions[0]
    acc, res = dot.operands[2], dot.results[0]
    if dot not in body.ops:
        return -1
    uses = region_index(body).uses
    for j, y in enumerate(body.ops[-1].operands):
        if y is res and j + 1 < len(body.args) and body.args[j + 1] is acc:
            if uses.get(acc.id) == 1 and uses.get(res.id) == 1:
                return j
    return -1


def _before(env: Env, v: Value) -> str | None:
    """v's operand before the loop: a value already emitted, or a constant's literal."""
    if v.id in env.scalars:
        return env.scalars[v.id]
    d = env.defs.get(v.id)
    if d is not None and d.opcode == "const" and d.attrs.dtype in ("i32", "i64"):
        return str(int(d.attrs.value))
    return None


def _written(r: Region, ids: set[int]) -> bool:
    """Whether an op of `r` (at any depth) other than a load or gather reads one of `ids`."""
    for op in r.ops:
        if op.opcode not in ("load", "gather") and any(v.id in ids for v in op.operands):
            return True
        if any(_written(sub, ids) for sub in op.regions):
            return True
    return False


def _build(env: Env, plan: ColumnPlan, leaves: list[list[Op]], srcs: list[Buf],
           n0: str) -> tuple[Buf, str]:
    """Row r: V'[r, n0 + j] then T[r, j] = -(U'[r, n0 + j] * V'[r, n0 + j]) (U', V' the
    sources through the leaves' casts), and a last row of zeros; made where the columns
    n0 .. n0 + BN - 1 lie inside both sources (the only windows the fused path takes)."""
    em = env.em
    rows, bn = srcs[0].shape[0], plan.root.type.shape[0]
    vf = f"<{L} x float>"
    table = em.alloc("f32", (rows + 1, 2 * bn))
    end = em.val(f"add i64 {n0}, {bn}")
    ok = em.val(f"icmp sge i64 {n0}, 0")
    for s in srcs:
        ok = em.val(f"and i1 {ok}, {em.val(f'icmp sle i64 {end}, {s.shape[1]}')}")
    make, done = em.label("ptable"), em.label("ptabled")
    em.emit(f"br i1 {ok}, label %{make}, label %{done}")
    em.start_block(make)

    def store(r: str, j: int, v: str) -> None:
        q = em.gep(table, em.val(f"add i64 {em.val(f'mul i64 {r}, {2 * bn}')}, {j}"))
        em.emit(f"store {vf} {v}, ptr {q}, align 4")

    def row(r: str) -> None:
        for c in range(bn // L):
            vals = []
            for ops, s in zip(leaves, srcs):
                g = ops[-1]
                at = em.val(f"add i64 {em.val(f'mul i64 {r}, {s.strides[0]}')}, "
                            f"{em.val(f'add i64 {n0}, {c * L}')}")
                p = em.val(f"getelementptr inbounds {MEMTYPE[s.dtype]}, ptr {s.ptr}, i64 {at}")
                v = em.val(f"load <{L} x {lltype(g.results[0].type.dtype)}>, ptr {p}, align 2")
                if ops[0].opcode == "cast":
                    v = convert(em, v, g.results[0].type.dtype, ops[0].attrs.dtype, L)
                vals.append(v)
            store(r, c * L, vals[1])
            store(r, bn + c * L, em.val(f"fneg {vf} {em.val(f'fmul {vf} {vals[0]}, {vals[1]}')}"))

    em.loop("0", str(rows), row)
    for j in range(0, 2 * bn, L):
        store(str(rows), j, "zeroinitializer")
    em.br(done)
    em.start_block(done)
    return table, ok
