"""Dequantization fused into `store`: a store of a tree of elementwise ops over one aligned
load_codes (fusion_plan.plan_store_fusion) writes the decoded values straight to memory, 32
codes per vector, without materialising the tile; rows that start on a cache line take
streaming stores."""

from __future__ import annotations

from lowbitc.backends.llvm import decode
from lowbitc.backends.llvm.emitter import Emitter, lltype
from lowbitc.backends.llvm.fusion import _eval_tree, _window_ok, codes_at
from lowbitc.backends.llvm.fusion_plan import Plan, W
from lowbitc.backends.llvm.handlers import HANDLERS, Env, vtype
from lowbitc.explain import muted, note, subject_of


def emit_fused_store(env: Env, plan: Plan) -> None:
    """Dequantize straight to memory for aligned, in-bounds windows; otherwise the deferred
    ops and the generic store."""
    em = env.em
    op = plan.dot
    codes = plan.codes
    t = env.get(codes.operands[0])
    cst = [env.get(v) for v in codes.operands[1:3]]
    dst = env.get(op.operands[0])
    dst_starts = [env.get(v) for v in op.operands[1:3]]
    bn, bk = plan.root.type.shape
    note("store", subject_of(op.operands[0]), "fused dequantize-to-memory (32 codes per vector"
         f"{', streaming stores' if decode.permutes() else ''})",
         "unaligned windows or windows at the edges store element by element", loc=op.loc)
    fast, slow, done = em.label("dqfused"), em.label("dqgeneric"), em.label("dqstored")
    ok = em.val(f"and i1 {_window_ok(em, t, cst, codes.attrs.sizes)}, "
                f"{_window_ok(em, dst, dst_starts, op.attrs.sizes, aligned=False)}")
    em.emit(f"br i1 {ok}, label %{fast}, label %{slow}")
    em.start_block(fast)
    dt = plan.root.type.dtype
    et = vtype(dt, W)
    # rows that start on a cache line take streaming stores (no read-for-ownership of the
    # output: half the memory traffic)
    stream = decode.permutes() and W * _BYTES.get(dt, 0) % 64 == 0
    if stream:
        nt, plain = em.label("dqstream"), em.label("dqplain")
        em.emit(f"br i1 {_lines_aligned(em, dst, dst_starts, _BYTES[dt])}, label %{nt}, "
                f"label %{plain}")
        em.start_block(nt)

    def rows(streaming: bool) -> None:
        def row(j: str) -> None:
            n = em.val(f"add i64 {cst[0]}, {j}")
            drow = em.val(f"mul i64 {em.val(f'add i64 {dst_starts[0]}, {j}')}, {dst.strides[0]}")
            dbase = em.val(f"add i64 {drow}, {dst_starts[1]}")

            def step(c: str) -> None:
                w = _eval_tree(env, plan, codes_at(env, plan, t, cst, n, c), j, c)
                di = em.val(f"add i64 {dbase}, {em.val(f'mul i64 {c}, {W}')}")
                q = em.val(f"getelementptr inbounds {lltype(dt)}, ptr {dst.ptr}, i64 {di}")
                how = "align 64, !nontemporal !{i32 1}" if streaming else "align 4"
                em.emit(f"store {et} {w}, ptr {q}, {how}")
            em.loop("0", str(bk // W), step)

        em.loop("0", str(bn), row)
        if streaming:  # the kernel ends with one sfence (codegen), not one per block
            em.declare(SFENCE)
        em.br(done)

    if stream:
        rows(True)
        em.start_block(plain)
    rows(False)
    em.start_block(slow)
    with muted():
        for d in plan.deferred:
            HANDLERS[d.opcode](env, d)
        HANDLERS["store"](env, op)
    em.br(done)
    em.start_block(done)


_BYTES = {"f32": 4, "i32": 4, "u32": 4, "f16": 2, "bf16": 2}
SFENCE = "declare void @llvm.x86.sse.sfence()"  # declared by kernels with streaming stores


def _lines_aligned(em: Emitter, dst, starts: list[str], nbytes: int) -> str:
    """Whether every row of the window starts on a 64-byte line (base, row stride, column)."""
    base = em.val(f"ptrtoint ptr {dst.ptr} to i64")
    first = em.val(f"add i64 {em.val(f'mul i64 {starts[0]}, {dst.strides[0]}')}, {starts[1]}")
    addr = em.val(f"add i64 {base}, {em.val(f'mul i64 {first}, {nbytes}')}")
    both = em.val(f"or i64 {addr}, {em.val(f'mul i64 {dst.strides[0]}, {nbytes}')}")
    return em.val(f"icmp eq i64 {em.val(f'and i64 {both}, 63')}, 0")
