"""Product tables for the column dot (columns.py), made once before a loop: a weight
E = (Y - U) * V whose U and V are rows gathered with one index from tiles the loop does not
write (GPTQ act-order's zero-point and scale tiles, `load(zt[g, 0 :+ BN])` and
`load(st[g, 0 :+ BN])`) is fma(Y, V, T) with T = -(U * V) over every row of the tiles and
the dot's columns: one FMA per weight instead of a subtract and a multiply, T's row read
beside V's with the same row and mask."""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.backends.llvm.column_leaves import L
from lowbitc.backends.llvm.columns import ColumnPlan, plan_columns
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, convert
from lowbitc.ir.core import Op, Region, Value

MAX_TABLE_BYTES = 64 * 1024  # a table per dot lives on the stack


@dataclass(frozen=True)
class ProductTable:
    table: Buf  # [rows, BN] f32: -(U * V)


def prepare(env: Env, loop: Op) -> None:
    """Before `loop` is emitted: the tables of its body's column dots whose (Y - U) * V reads U
    and V gathered from tiles the loop does not write, at a column start fixed before it
    (env.col_tables: dot result id -> ProductTable)."""
    body = loop.regions[0]
    for plan in plan_columns(body).values():
        if plan.pair is None:
            continue
        leaves = [plan.gathered[v.id] for v in plan.pair[1:]]
        srcs = [env.tiles.get(ops[-1].operands[0].id) for ops in leaves]
        starts = [ops[-1].operands[2] for ops in leaves]
        bn, n0 = plan.root.type.shape[0], _before(env, starts[0])
        if (any(s is None or len(s.shape) != 2 for s in srcs)
                or srcs[0].shape[0] != srcs[1].shape[0]
                or srcs[0].shape[0] * bn * 4 > MAX_TABLE_BYTES
                or starts[0].id != starts[1].id or n0 is None
                or _written(body, {ops[-1].operands[0].id for ops in leaves})):
            continue
        env.col_tables[plan.dot.results[0].id] = ProductTable(
            _build(env, plan, leaves, srcs, n0))


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


def _build(env: Env, plan: ColumnPlan, leaves: list[list[Op]], srcs: list[Buf], n0: str) -> Buf:
    """T[r, j] = -(U'[r, n0 + j] * V'[r, n0 + j]) (U', V' the sources through the leaves'
    casts), made where the columns n0 .. n0 + BN - 1 lie inside both sources (the only
    windows the fused path takes)."""
    em = env.em
    rows, bn = srcs[0].shape[0], plan.root.type.shape[0]
    table = em.alloc("f32", (rows, bn))
    end = em.val(f"add i64 {n0}, {bn}")
    ok = em.val(f"icmp sge i64 {n0}, 0")
    for s in srcs:
        ok = em.val(f"and i1 {ok}, {em.val(f'icmp sle i64 {end}, {s.shape[1]}')}")
    make, done = em.label("ptable"), em.label("ptabled")
    em.emit(f"br i1 {ok}, label %{make}, label %{done}")
    em.start_block(make)

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
            prod = em.val(f"fmul <{L} x float> {vals[0]}, {vals[1]}")
            q = em.gep(table, em.val(f"add i64 {em.val(f'mul i64 {r}, {bn}')}, {c * L}"))
            em.emit(f"store <{L} x float> {em.val(f'fneg <{L} x float> {prod}')}, ptr {q}, "
                    "align 4")

    em.loop("0", str(rows), row)
    em.br(done)
    em.start_block(done)
    return table
