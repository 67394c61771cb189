"""The skeleton every fused dot shares (fusion.py, bytedot.py, columns.py, axpy.py,
panel.py): the fast path where its window check holds, elsewhere the ops it deferred and a
generic dot; and explain's lines for a fused dot."""

from __future__ import annotations

from lowbitc.backends.llvm import carry
from lowbitc.backends.llvm.handlers import HANDLERS, Env
from lowbitc.explain import muted, note, subject_of
from lowbitc.ir.core import Op

# The runtime fallback dots into a buffer of its own, copied into the result at its end: the
# result buffer is then only read and written at constant offsets (once LLVM unrolls the
# one-trip loops), so it lives in registers, and the ops after a fused dot (an int8 GEMV's
# per-block convert and scale) read it there, not from a 64-byte store just made (Zen 4,
# W*A8 GEMVs in cache: u4 / u3 0.95x, u8 0.935x the time; f32 GEMVs the same)
SLOW_APART = True


def with_fallback(env: Env, dot: Op, deferred: list[Op], generic_dot, fast,
                  name: str = "fused") -> None:
    """The skeleton every fused dot shares; binds the dot's result buffer (a copy of its
    accumulator). `fast(abuf, out)` notes the path taken and emits, in the current block, the
    fast path's window check: it returns (ok, body), body() emitting the fast path where ok
    holds, or None where no fast path applies. Other windows run the deferred ops and
    `generic_dot(em, a, b, out)`. abuf is None when a deferred op computes `a`."""
    em = env.em
    a, b, acc = dot.operands
    out = env.result_buf(dot)
    em.copy(env.get(acc), out)
    late = any(d.results and d.results[0] is a for d in deferred)
    chosen = carry.joined_fast(env, dot, fast(None if late else env.get(a), out), out)
    quick, slow, done = em.label(name), em.label("unfused"), em.label("dotted")
    if chosen is None:
        em.br(slow)
    else:
        ok, body = chosen
        em.emit(f"br i1 {ok}, label %{quick}, label %{slow}")
        em.start_block(quick)
        body()
        em.br(done)
    em.start_block(slow)
    with muted():  # the runtime fallback of the path just noted
        for d in deferred:
            HANDLERS[d.opcode](env, d)
        if SLOW_APART:
            apart = em.alloc(out.dtype, out.shape)
            em.copy(out, apart)
            generic_dot(env.em, env.get(a), env.get(b), apart)
            em.copy(apart, out)
        else:
            generic_dot(env.em, env.get(a), env.get(b), out)
    em.br(done)
    em.start_block(done)


def note_fused(dot: Op, load: Op, path: str, edges: str = "the generic dot") -> None:
    """Explain's lines for a fused dot and the weight load it reads in registers."""
    weights = subject_of(load.operands[0])
    note("dot", weights, path, f"windows at the tensor's edges take {edges}", loc=dot.loc)
    note("load", weights, f"fused into the dot at {dot.loc}: never materialised", loc=load.loc)
