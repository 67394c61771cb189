"""The column dot's leaves (columns.py): values of E read per input row k and 16 outputs, as
<16 x T> vectors -- a [BN, 1] or [BN, BK] tile or a scalar, or a row gathered along N
(`transpose(load(st[g, n :+ BN]))` with g an index tile along K: GPTQ act-order's scale and
zero-point rows), read in place: row g[k] of the source, no gathered tile made."""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.fused_leaves import splat, vector_at
from lowbitc.backends.llvm.handlers import Env, TensorArg, convert
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.backends.llvm.ops_gather import index_row
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TensorType

L = 16  # lanes along N


def gathered_leaves(tree: list[Op], defs: dict[int, Op], uses: dict[int, int],
                     shape) -> dict[int, list[Op]]:
    """E's leaves transpose(gather(t, idx, n)) (or a cast of one) of shape [BN, BK], gathered
    along the rows of a 2-D tensor or shared tile, used once: {leaf id: [cast?, transpose,
    gather]}."""
    found = {}
    for op in tree:
        for v in op.operands:
            ops, x = [], v
            while (d := defs.get(x.id)) is not None and uses[x.id] == 1 and len(ops) < 3:
                ops.append(d)
                if d.opcode == "gather" or d.opcode not in ("cast", "transpose"):
                    break
                x = d.operands[0]
            kinds = [o.opcode for o in ops]
            if kinds not in (["transpose", "gather"], ["cast", "transpose", "gather"]) \
                    or tuple(v.type.shape) != tuple(shape) or ops[-2].attrs.perm != (1, 0) \
                    or len(ops[0].operands) != 1:  # (not a stochastic cast)
                continue
            g = ops[-1]
            if (g.attrs.axis == 0 and len(g.attrs.sizes) == 2 and g.attrs.sizes[1] > 0
                    and lltype(g.results[0].type.dtype) in ("float", "half", "i32")):
                found[v.id] = ops
    return found


def source(env: Env, g: Op) -> TensorArg:
    """The gather's tensor, or its shared tile addressed as one."""
    t = env.get(g.operands[0])
    if isinstance(t, Buf):
        t = TensorArg(t.ptr, TensorType(t.dtype, t.shape), [str(d) for d in t.shape],
                      [str(st) for st in t.strides])
    t.ensure_strides(env.em)
    return t


def _gathered(env: Env, ops: list[Op], k: str, c: str, rows: dict | None = None) -> str:
    """Column k, outputs 16c .. 16c + 15 of [cast](transpose(gather)): row idx[k] of the
    source from column n0 + 16c (zeros for a row outside it: one masked load, no branch).
    The row's offset and mask depend on k only: kept in `rows` for the other chunks."""
    em = env.em
    g = ops[-1]
    t = source(env, g)
    row, mask = gathered_row(env, g, k, rows)
    col = em.val(f"add i64 {env.get(g.operands[2])}, {em.val(f'mul i64 {c}, {L}')}")
    at = em.val(f"add i64 {em.val(f'mul i64 {row}, {t.strides[0]}')}, {col}")
    v = masked_load(em, t.ptr, MEMTYPE[t.type.dtype], at, lltype(g.results[0].type.dtype), mask)
    if ops[0].opcode == "cast":
        v = convert(em, v, g.results[0].type.dtype, ops[0].attrs.dtype, L)
    return v


_SUFFIX = {"float": "f32", "half": "f16", "i32": "i32"}


def gathered_row(env: Env, g: Op, k: str, rows: dict | None) -> tuple[str, str]:
    """(row idx[k] of the gather's source, clamped to 0 outside it; the <16 x i1> mask that
    reads zeros there), kept in `rows` for the other chunks and leaves of the same index."""
    em = env.em
    key = (g.operands[1].id, k, source(env, g).dims[0])
    found = rows.get(key) if rows is not None else None
    if found is None:
        row = index_row(env, g, k)
        ok = em.val(f"icmp ult i64 {row}, {source(env, g).dims[0]}")
        found = em.val(f"select i1 {ok}, i64 {row}, i64 0"), splat(em, ok, "bool", L)
        if rows is not None:
            rows[key] = found
    return found


def masked_load(em, ptr: str, mt: str, at: str, et: str, mask: str) -> str:
    """<16 x et> at element `at` of `ptr` (elements of type mt), zeros where `mask` is off."""
    vt = f"<{L} x {et}>"
    p = em.val(f"getelementptr inbounds {mt}, ptr {ptr}, i64 {at}")
    fn = f"llvm.masked.load.v{L}{_SUFFIX[et]}.p0"
    em.declare(f"declare {vt} @{fn}(ptr, i32, <{L} x i1>, {vt})")
    return em.val(f"call {vt} @{fn}(ptr {p}, i32 2, <{L} x i1> {mask}, {vt} zeroinitializer)")


def leaf(env: Env, v: Value, shape, k: str, c: str, gathered: dict | None = None,
          rows: dict | None = None) -> str:
    em = env.em
    if gathered and v.id in gathered:
        return _gathered(env, gathered[v.id], k, c, rows)
    x = env.get(v)
    if not isinstance(x, Buf):
        return splat(em, x, v.type.dtype, L)
    bv = broadcast_view(x, tuple(shape))
    sn, sk = bv.strides
    n0 = em.val(f"mul i64 {c}, {L}")
    base = em.val(f"add i64 {em.val(f'mul i64 {n0}, {sn}')}, {em.val(f'mul i64 {k}, {sk}')}")
    return vector_at(em, bv, base, sn, L)
