"""Render a lowered tile-IR kernel (after the CPU pipeline) as LLVM IR text.

Entry point: `void @NAME(ptr args, i64 begin, i64 end)` running linearised blocks
[begin, end) (see backends/llvm/launch.py). `args` holds the params in order, then the dims,
then the grid's x and y block counts (i64), each as a pointer (arrays: their data; scalars:
a small buffer). Ops dispatch through `HANDLERS`; an op without a handler is an error that
names it, its types and its source line.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.abi import packed_params
from lowbitc.backends.llvm import (  # noqa: F401  (fill HANDLERS)
    carry,
    column_tables,
    ops_elementwise,
    ops_encode,
    ops_gather,
    ops_lut,
    ops_memory,
    ops_random,
    ops_shared,
)
from lowbitc.backends.llvm.axpy import emit_axpy, plan_axpy
from lowbitc.backends.llvm.bytedot import emit_byte_dot, plan_byte_dots
from lowbitc.backends.llvm.column_merge import emit_member, plan_windows
from lowbitc.backends.llvm.columns import emit_column_dot, plan_columns
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, Emitter, lltype
from lowbitc.backends.llvm.fused_store import SFENCE, emit_fused_store
from lowbitc.backends.llvm.fusion_plan import plan_fusion, plan_store_fusion
from lowbitc.backends.llvm.handlers import HANDLERS, Env, TensorArg
from lowbitc.backends.llvm.ops_tiles import dot_into
from lowbitc.backends.llvm.panel import defer_activations, emit_planned_dot
from lowbitc.errors import BackendError
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Kernel, Op, Region, walk
from lowbitc.ir.types import ScalarType, TensorType, TileType, is_machine
from lowbitc.repack import parse as parse_packing

SCALAR_ARG = {"i64": "i64", "i32": "i32", "f32": "float", "f64": "double"}


@dataclass(frozen=True)
class Rendered:
    name: str
    text: str


def _name_ok(name: str) -> str:
    if not name.replace("_", "a").isalnum() or not name[0].isalpha() and name[0] != "_":
        raise BackendError(f"llvm: kernel name {name!r} is not a valid identifier")
    return name


def render(k: Kernel) -> Rendered:
    """LLVM IR text for the kernel (pure: no compilation)."""
    name = _name_ok(f"lbk_{k.name}")
    em = Emitter()
    env = Env(em)
    env.defs = {r.id: op for op in walk(k.body.ops) for r in op.results}
    nargs = len(k.params) + len(k.dims)
    for i, v in enumerate(k.params + k.dims):
        p = em.val(f"getelementptr inbounds ptr, ptr %args, i64 {i}", "pa")
        ptr = em.val(f"load ptr, ptr {p}", "arg")
        if isinstance(v.type, TensorType):
            env.tensors[v.id] = TensorArg(ptr, v.type)
        else:
            t = SCALAR_ARG.get(v.type.dtype)
            if t is None:
                raise BackendError(f"llvm: scalar parameter {v.name} of type {v.type} is not "
                                   "supported (use i64, i32, f32 or f64)", k.loc)
            env.scalars[v.id] = em.val(f"load {t}, ptr {ptr}", "s")
    dim_of = {d.name: env.scalars[d.id] for d in k.dims}
    packings = {name: parse_packing(p, bits) for name, p, bits in packed_params(k)}
    for v in k.params:
        if v.id in env.tensors:
            env.tensors[v.id].packing = packings.get(v.name)
    for t in env.tensors.values():
        t.bind_dims(dim_of)
        t.ensure_strides(em)  # at entry, so every use is dominated
    gxy = []
    for j in range(2):
        p = em.val(f"getelementptr inbounds ptr, ptr %args, i64 {nargs + j}", "pa")
        gxy.append(em.val(f"load i64, ptr {em.val(f'load ptr, ptr {p}', 'arg')}", "g"))

    def block(bid: str) -> None:
        bx = em.val(f"srem i64 {bid}, {gxy[0]}", "bx")
        q = em.val(f"sdiv i64 {bid}, {gxy[0]}")
        by = em.val(f"srem i64 {q}, {gxy[1]}", "by")
        bz = em.val(f"sdiv i64 {q}, {gxy[1]}", "bz")
        env.block = (bx, by, bz)
        emit_region(env, k.body)

    em.loop("%begin", "%end", block)
    if SFENCE in em.declares:  # streaming stores are ordered once, before the part returns
        em.emit("call void @llvm.x86.sse.sfence()")
    em.emit("ret void")
    body = "\n".join(em.entry + em.lines)
    text = "\n".join(
        ["; lowbitc kernel " + k.name, 'target triple = "x86_64-unknown-linux-gnu"', ""]
        + em.globals
        + sorted(em.declares)
        + ["", f"define void @{name}(ptr noalias %args, i64 %begin, i64 %end) nounwind {{",
           "entry:", body, "}", ""]
    )
    return Rendered(name, text)


def emit_region(env: Env, r: Region, args: tuple = ()) -> list:
    """Emit a region's ops; returns the yielded values (scalars or buffers)."""
    for a, v in zip(r.args, args):
        env.bind(a, v)
    cols = plan_columns(r)
    axpys = {k: p for k, p in plan_axpy(r).items() if k not in cols}  # untransposed weights
    plans = defer_activations(r, plan_fusion(r, max_rows=None, skip=frozenset(cols) | set(axpys)))
    stores = plan_store_fusion(r)
    env.consts.update((op.results[0].id, op) for op in r.ops if op.opcode == "const")
    bytes_ = plan_byte_dots(r, env.consts)
    deferred = {id(d) for p in (*plans.values(), *stores.values(), *cols.values(),
                                *axpys.values(), *bytes_.values()) for d in p.deferred}
    for p in (*plans.values(), *stores.values(), *axpys.values()):
        for d in p.deferred:
            if d.opcode in ("load", "load_codes"):
                note("load", subject_of(d.operands[0]),
                     f"fused into the {p.dot.opcode} at {p.dot.loc}: never materialised",
                     loc=d.loc)
    windows = plan_windows(env, r, deferred)
    in_place = ops_shared.plan_in_place(r, env.defs)
    written: set[int] = set()  # store_shared ops whose producer wrote the shared tile
    env.joins.update(carry.plan_joins(r, plans, env.carries))
    for op in r.ops:
        if id(op) in deferred:
            continue
        if id(op) in windows:
            emit_member(env, op, windows[id(op)])
            continue
        if id(op) in written:
            continue
        if op.opcode == "yield":
            _no_waiting(env)
            return [env.get(v) for v in op.operands]
        if op.opcode == "dot" and op.results[0].id in bytes_:
            emit_byte_dot(env, bytes_[op.results[0].id])
        elif op.opcode == "dot" and op.results[0].id in cols:
            emit_column_dot(env, cols[op.results[0].id], dot_into)
        elif op.opcode == "dot" and op.results[0].id in plans:
            emit_planned_dot(env, plans[op.results[0].id], dot_into)
        elif op.opcode == "dot" and op.results[0].id in axpys:
            emit_axpy(env, axpys[op.results[0].id], dot_into)
        elif op.opcode == "store" and id(op) in stores:
            emit_fused_store(env, stores[id(op)])
        elif op.opcode == "for":
            _for(env, op)
        elif op.opcode == "if":
            _if(env, op)
        else:
            h = HANDLERS.get(op.opcode)
            if h is None:
                types = ", ".join(str(v.type) for v in op.operands)
                raise BackendError(f"llvm backend: no handler for op {op.opcode}({types})", op.loc)
            if id(op) in in_place:
                _in_place(env, op, in_place[id(op)], h, written)
            else:
                h(env, op)
    _no_waiting(env)
    return []


def _in_place(env: Env, op: Op, store: Op, h, written: set[int]) -> None:
    """Run `op`'s handler with its result built in the shared tile that `store` writes whole
    (ops_shared.plan_in_place); the store is then skipped, unless the handler made its result
    otherwise (a view) or an operand is that tile (a row broadcast of it would read rows
    already written)."""
    dest = env.get(store.operands[0])
    v = op.results[0]
    if any(isinstance(x, Buf) and x.ptr == dest.ptr
           for x in (env.get(u) for u in op.operands if u.id not in env.tensors)):
        h(env, op)
        return
    env.dest[v.id] = dest
    h(env, op)
    env.dest.pop(v.id, None)
    if env.tiles.get(v.id) is dest:
        written.add(id(store))
        note("store", "", f"the shared tile built in place by the {op.opcode} at {op.loc} (no "
             "copy)", loc=store.loc)


def _no_waiting(env: Env) -> None:
    if env.joined:  # a joined dot's rows never ran: its contribution would be lost
        raise BackendError("llvm: a fused dot joined to a later one was not emitted "
                           "(a compiler bug)")


def _for(env: Env, op: Op) -> None:
    _carried_tiles_supported(op, "loop")
    em = env.em
    lo, hi, step = (env.get(v) for v in op.operands[:3])
    inits = [env.get(v) for v in op.operands[3:]]
    body = op.regions[0]
    # carried tiles live in one buffer for the whole loop; carried scalars are phis
    bufs = {}
    for j, (res, init) in enumerate(zip(op.results, inits)):
        if isinstance(res.type, TileType):
            b = em.alloc(res.type.dtype, res.type.shape)
            em.copy(init, b)
            bufs[j] = b
    sc = [(j, lltype(r.type.dtype), inits[j]) for j, r in enumerate(op.results) if j not in bufs]
    env.steps[body.args[0].id] = step  # loads of row `counter` prefetch rows ahead (ops_memory)
    # dots whose lane sums wait for the loop's end (a loop inside another one is entered once
    # per outer step: its partials would be zeroed and reduced as often, not carried)
    carries = {} if env.loops else carry.carried_dots(em, op)
    env.carries.update(carries)
    env.loops += 1

    def run(i: str, phis: list[str]) -> list[str]:
        vals: list = []
        it = iter(phis)
        for j in range(len(op.results)):
            vals.append(bufs[j] if j in bufs else next(it))
        outs = emit_region(env, body, (i, *vals))
        # a yielded view of a carried buffer must be read before any carried buffer is written
        carried = {b.ptr for b in bufs.values()}
        staged = {}
        for j, b in bufs.items():
            o = outs[j]
            if o.ptr in carried and (o.ptr != b.ptr or o.strides != b.strides):
                staged[j] = em.alloc(o.dtype, o.shape)
                em.copy(o, staged[j])
        for j, b in bufs.items():
            em.copy(staged.get(j, outs[j]), b)
        return [outs[j] for j, _, _ in sc]

    column_tables.prepare(env, op)  # (Y - U) * V tables of the body's column dots
    phis = em.loop(lo, hi, None, step=step, carried=[(t, init) for _, t, init in sc],
                   body_carried=run)
    env.loops -= 1
    column_tables.finish(env, op, bufs)
    for j, y in enumerate(body.ops[-1].operands):
        if y.id in carries:
            carry.finish(em, carries[y.id], bufs[j])
    for d in carries:
        del env.carries[d]
    it = iter(phis)
    for j, r in enumerate(op.results):
        env.bind(r, bufs[j] if j in bufs else next(it))


def _carried_tiles_supported(op: Op, what: str) -> None:
    """Tiles a run-time `if` or loop carries live in buffers of a machine type; a tile of a
    format's codes (a cast to f8e4m3fn, u4, ...) has none on this backend."""
    for r in op.results:
        if isinstance(r.type, TileType) and r.type.dtype not in MEMTYPE:
            raise BackendError(f"llvm: a {r.type} cannot be carried out of a run-time {what} "
                               f"(its condition or bounds are known only when the kernel runs); "
                               f"cast it to f32 inside the {what}, or make the condition a "
                               f"compile-time parameter", op.loc)


def _if(env: Env, op: Op) -> None:
    _carried_tiles_supported(op, "if")
    em = env.em
    cond = env.get(op.operands[0])
    then_l, else_l, end_l = em.label("then"), em.label("else"), em.label("endif")
    bufs = {j: em.alloc(r.type.dtype, r.type.shape) for j, r in enumerate(op.results)
            if isinstance(r.type, TileType)}
    em.emit(f"br i1 {cond}, label %{then_l}, label %{else_l}")
    incoming = []
    for label, region in ((then_l, op.regions[0]), (else_l, op.regions[1])):
        em.start_block(label)
        outs = emit_region(env, region)
        for j, b in bufs.items():
            em.copy(outs[j], b)
        incoming.append((outs, em.block))
        em.br(end_l)
    em.start_block(end_l)
    for j, r in enumerate(op.results):
        if j in bufs:
            env.bind(r, bufs[j])
            continue
        (o1, b1), (o2, b2) = incoming
        t = lltype(r.type.dtype)
        env.bind(r, em.val(f"phi {t} [ {o1[j]}, %{b1} ], [ {o2[j]}, %{b2} ]"))


def check_supported(k: Kernel) -> None:
    """Raise if a tensor element type cannot be addressed by this backend."""
    for p in k.params:
        if isinstance(p.type, TensorType) and not is_machine(p.type.dtype):
            continue
        if isinstance(p.type, TensorType) and p.type.dtype not in MEMTYPE:
            raise BackendError(f"llvm: tensor {p.name} of {p.type} is not supported", k.loc)


__all__ = ["Buf", "Rendered", "render", "check_supported", "ScalarType"]
