"""Dequantization fused into the GEMM microkernel's weight panel.

Pattern (planned by fusion_plan.plan_fusion): `dot(a, transpose(E), acc)` with E an elementwise
tree over one `load_codes` [BN, BK], here with more rows of `a` than the register-resident
fused dot serves. For a window that is 32-code aligned and inside the tensor, E is evaluated
on <32 x float> vectors for `lanes` weight rows at a time (each row's codes unpacked in
registers), the lanes x 32 block is transposed in registers and stored as 32 rows of the
f32 panel [BK][BN] that the register-blocked microkernel reads (microkernel.py). So each
weight is decoded once per dot, straight into the order the microkernel wants, and E is never
materialised. Other windows run the deferred ops and the generic dot.
"""

from __future__ import annotations

from dataclasses import replace

from lowbitc.backends.llvm import microkernel, row_tables
from lowbitc.backends.llvm.emitter import Buf, Emitter, lltype
from lowbitc.backends.llvm.fallback import with_fallback
from lowbitc.backends.llvm.fusion import (
    _eval_tree,
    _window_ok,
    codes_at,
    emit_fused_dot,
    window,
)
from lowbitc.backends.llvm.fusion_plan import MAX_ROWS, Plan, W, region_index
from lowbitc.backends.llvm.handlers import HANDLERS, Env
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Region
from lowbitc.ir.types import TileType

# activation tiles of up to this many rows are read in place by the panel path (measured one
# thread, u4 N = 1024, K = 4096: 16-64 rows 10-20 % faster than copying the tile, 128 rows ~7 %
# slower; at N = K = 4096, M = 16 the difference was within this machine's noise)
IN_PLACE_ROWS = 64


def defer_activations(r: Region, plans: dict[int, Plan]) -> dict[int, Plan]:
    """Add to each panel plan the unmasked 2-D `load` of its activation tile when the dot is
    that tile's only use: the panel path then reads the activations in place (no copy of the
    tile per K step); the fallback loads them."""
    defs, uses, order, _ = region_index(r)
    for plan in plans.values():
        a = plan.dot.operands[0]
        ld = defs.get(a.id)
        if (_panel_plan(plan, a.type) and a.type.shape[0] <= IN_PLACE_ROWS
                and ld is not None and ld.opcode == "load"
                and not ld.attrs.masked and len(ld.attrs.sizes) == 2 and 0 not in ld.attrs.sizes
                and len(ld.operands[0].type.shape) == 2 and uses[a.id] == 1):
            plan.deferred = sorted([*plan.deferred, ld], key=lambda o: order[id(o)])
    return plans


def _panel_plan(plan: Plan, a: TileType) -> bool:
    """Whether the plan's dot takes the panel (more rows than the register-resident fused dot
    serves; float activations; a decoded f32 tile wide enough for the microkernel)."""
    return (a.shape[0] > MAX_ROWS and a.dtype in microkernel.FLOATS
            and (plan.chain or len(plan.codes.attrs.sizes) == 2)
            and plan.root.type.dtype == "f32"
            and plan.root.type.shape[0] >= microkernel.host_vector()[0] // 2)


def emit_planned_dot(env: Env, plan: Plan, generic_dot) -> None:
    """A dot planned by fusion_plan.plan_fusion: up to MAX_ROWS rows of `a` take the
    register-resident fused dot, more rows the fused panel (or, where the microkernel does not
    apply, the deferred ops and the generic dot)."""
    a = plan.dot.operands[0]
    if a.type.shape[0] <= MAX_ROWS:
        emit_fused_dot(env, plan, generic_dot)
    elif not _panel_plan(plan, a.type):
        note("dot", subject_of(plan.codes.operands[0]), "not fused: the weight tile is built",
             f"more than {MAX_ROWS} rows of a, and the panel needs float activations and an "
             f"f32 E of at least {microkernel.host_vector()[0] // 2} rows", fallback=True,
             loc=plan.dot.loc)
        for d in plan.deferred:
            HANDLERS[d.opcode](env, d)
        HANDLERS["dot"](env, plan.dot)
    elif any(d.results and d.results[0] is a for d in plan.deferred):
        note("dot", subject_of(plan.codes.operands[0]), "panel microkernel, weights decoded "
             "into the panel" + row_tables.panel_note(plan) + ", activations read in place",
             "windows at the tensor's edges take the generic dot", loc=plan.dot.loc)
        _emit_in_place(env, plan, generic_dot)
    else:
        emit_fused_dot(env, plan, generic_dot, _panel)


def _emit_in_place(env: Env, plan: Plan, generic_dot) -> None:
    """The panel path reading the activation tile in place from its tensor when both windows
    (weights aligned, activations in bounds) allow it; otherwise the deferred ops (the
    activation load among them) and the generic dot."""
    em = env.em
    a = plan.dot.operands[0]
    ld = next(d for d in plan.deferred if d.results and d.results[0] is a)
    x = env.get(ld.operands[0])
    xs = [env.get(v) for v in ld.operands[1:3]]

    def choose(_, out):
        t, starts, ok = window(env, plan)
        ok = em.val(f"and i1 {ok}, {_window_ok(em, x, xs, ld.attrs.sizes, aligned=False)}")

        def body() -> None:
            off = em.val(f"add i64 {em.val(f'mul i64 {xs[0]}, {x.strides[0]}')}, {xs[1]}")
            ptr = em.val(f"getelementptr inbounds {lltype(a.type.dtype)}, ptr {x.ptr}, "
                         f"i64 {off}")
            # the window in place: its row stride is the tensor's (an LLVM operand)
            _panel(env, plan, Buf(ptr, a.type.dtype, a.type.shape, (x.strides[0], 1)), out, t,
                   starts)
        return ok, body

    with_fallback(env, plan.dot, plan.deferred, generic_dot, choose)


def _panel(env: Env, plan: Plan, abuf: Buf, out: Buf, t, starts: list[str]) -> None:
    """The fast path of emit_fused_dot for an aligned, in-bounds window: decode E into the
    panel, then the microkernel."""
    em = env.em
    start = em.label("panel")  # (a named block, so the path can be found in the IR)
    em.br(start)
    em.start_block(start)
    lanes = microkernel.host_vector()[0]
    bn, bk = plan.root.type.shape
    npad = -(-bn // lanes) * lanes
    panel = em.alloc("f32", (bk, npad))
    if npad != bn:  # the padding columns are read by the microkernel: keep them finite
        em.declare("declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
        em.emit(f"call void @llvm.memset.p0.i64(ptr align 64 {panel.ptr}, i8 0, "
                f"i64 {bk * npad * 4}, i1 false)")
    _decode_panel(env, plan, t, starts, panel.ptr, npad, lanes)
    microkernel.emit_panel_dot(em, abuf, panel.ptr, npad, out)


def _decode_panel(env: Env, plan: Plan, t, starts: list[str], panel: str, npad: int,
                  lanes: int) -> None:
    """panel[k][j] = E[j, k]: blocks of `lanes` rows x 32 codes decoded in registers and
    transposed; rows past the last whole block are stored lane by lane."""
    em = env.em
    bn, bk = plan.root.type.shape

    tables = row_tables.by_row(env, replace(plan, row_tables=row_tables.of_panel(plan)))

    def decoded(j: str, c: str, rows: dict | None = None) -> str:
        n = em.val(f"add i64 {starts[0]}, {j}")
        return _eval_tree(env, plan, codes_at(env, plan, t, starts, n, c), j, c, rows=rows)

    def block(jb: str) -> None:
        j0 = em.val(f"mul i64 {jb}, {lanes}")
        js = [em.val(f"add i64 {j0}, {r}") for r in range(lanes)]
        made = [tables(j) for j in js] if tables else [None] * lanes

        def chunk(c: str) -> None:
            rows = [decoded(j, c, m) for j, m in zip(js, made)]
            for h in range(W // lanes):  # each lanes x lanes square of the lanes x 32 block
                sel = ", ".join(f"i32 {h * lanes + q}" for q in range(lanes))
                part = [em.val(f"shufflevector <{W} x float> {r}, <{W} x float> poison, "
                               f"<{lanes} x i32> <{sel}>") for r in rows]
                for q, v in enumerate(microkernel.transpose_vectors(em, part, lanes)):
                    k = em.val(f"add i64 {em.val(f'mul i64 {c}, {W}')}, {h * lanes + q}")
                    _store(em, panel, em.val(f"add i64 {em.val(f'mul i64 {k}, {npad}')}, {j0}"),
                           f"<{lanes} x float>", v)
        em.loop("0", str(bk // W), chunk)

    if bn // lanes:
        em.loop("0", str(bn // lanes), block)

    def rest(jr: str) -> None:
        j = em.val(f"add i64 {jr}, {bn // lanes * lanes}")

        def chunk(c: str) -> None:
            v = decoded(j, c)
            for q in range(W):
                k = em.val(f"add i64 {em.val(f'mul i64 {c}, {W}')}, {q}")
                x = em.val(f"extractelement <{W} x float> {v}, i64 {q}")
                _store(em, panel, em.val(f"add i64 {em.val(f'mul i64 {k}, {npad}')}, {j}"),
                       "float", x)
        em.loop("0", str(bk // W), chunk)

    if bn % lanes:
        em.loop("0", str(bn % lanes), rest)


def _store(em: Emitter, panel: str, index: str, t: str, v: str) -> None:
    p = em.val(f"getelementptr inbounds float, ptr {panel}, i64 {index}")
    em.emit(f"store {t} {v}, ptr {p}, align 4")
