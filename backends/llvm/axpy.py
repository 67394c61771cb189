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

from lowbitc.backends.llvm import window
from lowbitc.backends.llvm.decode import code_tables
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.fusion import _eval_tree, codes_at
from lowbitc.backends.llvm.fusion_plan import Plan, W, _tree, _uses
from lowbitc.backends.llvm.handlers import HANDLERS, Env
from lowbitc.ir.core import Region
from lowbitc.ir.types import TileType, is_float

MAX_OUT = 256  # accumulator floats (rows of a x N): 16 AVX-512 registers


def plan_axpy(r: Region) -> dict[int, Plan]:
    """Dots of this region (keyed by their result id) whose untransposed weight operand is a
    fusible tree over one codes load, with rows x N within MAX_OUT and f32 operands."""
    defs = {res.id: op for op in r.ops for res in op.results}
    uses = _uses(r)
    order = {id(o): i for i, o in enumerate(r.ops)}
    plans: dict[int, Plan] = {}
    for op in r.ops:
        if op.opcode != "dot":
            continue
        a, b, acc = op.operands
        e = b.type
        if b.id not in defs or uses[b.id] != 1 or not isinstance(e, TileType) \
                or len(e.shape) != 2:
            continue
        found = _tree(defs, uses, b)
        if found is None:
            continue
        tree, codes = found
        if not (e.shape[1] % W == 0 and is_float(e.dtype) and a.type.dtype == "f32"
                and acc.type.dtype == "f32" and a.type.shape[0] * e.shape[1] <= MAX_OUT
                and window.kept(codes.attrs.sizes) == e.shape and not codes.attrs.masked
                and window.viewable(codes)):
            continue
        tree = sorted(tree, key=lambda o: order[id(o)])
        plans[op.results[0].id] = Plan(op, None, codes, tree,
                                       sorted(tree + [codes], key=lambda o: order[id(o)]), b,
                                       code_tables(tree, codes, b, defs))
    return plans


def emit_axpy(env: Env, plan: Plan, generic_dot) -> None:
    """The fused path with a runtime fallback (deferred ops, generic dot); binds the dot's
    result buffer."""
    em = env.em
    op = plan.dot
    a, b, acc = op.operands
    out = env.result_buf(op)
    em.copy(env.get(acc), out)
    abuf = env.get(a)
    codes = plan.codes
    t = env.get(codes.operands[0])
    fast, slow, done = em.label("axpy"), em.label("unfused"), em.label("dotted")
    if t.packing is not None or not isinstance(abuf, Buf):
        em.br(slow)
    else:
        t, starts, ok = window.view(env, codes, t)
        em.emit(f"br i1 {ok}, label %{fast}, label %{slow}")
        em.start_block(fast)
        _fused(env, plan, abuf, out, t, starts)
        em.br(done)
    em.start_block(slow)
    for d in plan.deferred:
        HANDLERS[d.opcode](env, d)
    generic_dot(em, abuf, env.get(b), out)
    em.br(done)
    em.start_block(done)


def _fused(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    em = env.em
    m = abuf.shape[0]
    k_rows, n_cols = window.kept(plan.codes.attrs.sizes)
    chunks = n_cols // W
    va = f"<{W} x float>"

    def step(k: str, accs: list[str]) -> list[str]:
        row = em.val(f"add i64 {starts[0]}, {k}")
        nxt = list(accs)
        splats = []
        for i in range(m):
            x = em.load_elem(abuf, em.offset([str(i), k], abuf.shape, abuf.strides))
            ins = em.val(f"insertelement {va} poison, float {x}, i64 0")
            splats.append(em.val(f"shufflevector {va} {ins}, {va} poison, <{W} x i32> "
                                 "zeroinitializer"))
        for c in range(chunks):
            w = _eval_tree(env, plan, codes_at(em, plan, t, starts, row, str(c)), k, str(c))
            for i in range(m):
                prod = em.val(f"fmul reassoc contract {va} {splats[i]}, {w}")
                j = i * chunks + c
                nxt[j] = em.val(f"fadd reassoc contract {va} {accs[j]}, {prod}")
        return nxt

    accs = em.loop("0", str(k_rows), None, carried=[(va, "zeroinitializer")] * (m * chunks),
                   body_carried=step)
    for i in range(m):
        for c in range(chunks):
            p = em.gep(out, em.flat_index([str(i), str(c * W)], out.shape))
            old = em.val(f"load {va}, ptr {p}, align 4")
            em.emit(f"store {va} {em.val(f'fadd {va} {old}, {accs[i * chunks + c]}')}, "
                    f"ptr {p}, align 4")
