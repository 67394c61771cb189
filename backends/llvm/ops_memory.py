"""LLVM handlers for tile construction, data movement, reductions, dot and global memory."""

from __future__ import annotations

from lowbitc.errors import BackendError
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, TensorArg, const_literal, convert, handles
from lowbitc.backends.llvm.ops_elementwise import elementwise, scalar_op


@handles("full")
def _full(env: Env, op: Op) -> None:
    out = env.result_buf(op)
    v = const_literal(env.em, op.attrs.value, op.attrs.dtype)
    env.em.loop("0", str(out.size), lambda i: env.em.store_elem(out, i, v))


@handles("arange")
def _arange(env: Env, op: Op) -> None:
    out = env.result_buf(op)
    env.em.loop("0", str(out.size),
                lambda i: env.em.store_elem(out, i, convert(env.em, i, "i64", op.attrs.dtype)))


@handles("reshape")
def _reshape(env: Env, op: Op) -> None:
    src = env.get(op.operands[0])
    out = env.result_buf(op)
    env.em.copy(Buf(src.ptr, src.dtype, out.shape), out)


def _gather(env: Env, op: Op, src_index) -> None:
    """out[idx] = src[src_index(idx)] over the result tile."""
    em = env.em
    src = env.get(op.operands[0])
    out = env.result_buf(op)

    def body(idx: list[str]) -> None:
        v = em.load_elem(src, src_index(idx))
        em.store_elem(out, em.flat_index(idx, out.shape), v)
    em.nest(out.shape, body)


@handles("broadcast")
def _broadcast(env: Env, op: Op) -> None:
    src = env.get(op.operands[0])
    if not isinstance(src, Buf):  # scalar -> tile
        out = env.result_buf(op)
        env.em.loop("0", str(out.size), lambda i: env.em.store_elem(out, i, src))
        return
    shape = op.results[0].type.shape
    pad = (1,) * (len(shape) - len(src.shape)) + src.shape
    _gather(env, op, lambda idx: env.em.flat_index(idx, pad))


@handles("transpose")
def _transpose(env: Env, op: Op) -> None:
    src = env.get(op.operands[0])
    perm = op.attrs.perm
    inv = [perm.index(d) for d in range(len(perm))]
    _gather(env, op, lambda idx: env.em.flat_index([idx[inv[d]] for d in range(len(perm))],
                                                   src.shape))


_IDENTITY = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}


@handles("reduce")
def _reduce(env: Env, op: Op) -> None:
    em = env.em
    src = env.get(op.operands[0])
    dt = src.dtype
    rt = op.results[0].type
    out_shape = rt.shape if isinstance(rt, TileType) else ()
    out = em.alloc(dt, out_shape)
    ident = _IDENTITY[op.attrs.kind]
    if not is_float(dt):
        ident = {"sum": 0, "max": -(2**31) if dt.startswith("i") else 0, "min": 2**31 - 1}[
            op.attrs.kind]
    init = const_literal(em, ident, dt)
    em.loop("0", str(out.size), lambda i: em.store_elem(out, i, init))
    fn = {"sum": "add", "max": "max", "min": "min"}[op.attrs.kind]
    axis = op.attrs.axis

    def body(idx: list[str]) -> None:
        o = em.flat_index(idx[:axis] + idx[axis + 1:], out_shape) if out_shape else "0"
        acc = em.load_elem(out, o)
        x = em.load_elem(src, em.flat_index(idx, src.shape))
        em.store_elem(out, o, scalar_op(em, fn, dt, [acc, x]))
    em.nest(src.shape, body)
    if out_shape:
        env.bind(op.results[0], out)
    else:
        env.bind(op.results[0], em.load_elem(out, "0"))


@handles("dot")
def _dot(env: Env, op: Op) -> None:
    em = env.em
    a, b, acc = (env.get(v) for v in op.operands)
    out = env.result_buf(op)
    em.copy(acc, out)
    m, k = a.shape
    n = b.shape[1]
    dt = out.dtype
    t = lltype(dt)
    fma = is_float(dt)
    if fma:
        em.declare(f"declare {t} @llvm.fmuladd.{_sfx(t)}({t}, {t}, {t})")

    def row(i: str) -> None:
        def kk(p: str) -> None:
            ai = em.flat_index([i, p], a.shape)
            av = convert(em, em.load_elem(a, ai), a.dtype, dt)
            brow = em.val(f"mul i64 {p}, {n}")
            orow = em.val(f"mul i64 {i}, {n}")

            def col(j: str) -> None:
                bv = convert(em, em.load_elem(b, em.val(f"add i64 {brow}, {j}")), b.dtype, dt)
                oi = em.val(f"add i64 {orow}, {j}")
                cur = em.load_elem(out, oi)
                if fma:
                    nv = em.val(f"call {t} @llvm.fmuladd.{_sfx(t)}({t} {av}, {t} {bv}, {t} {cur})")
                else:
                    nv = em.val(f"add {t} {cur}, {em.val(f'mul {t} {av}, {bv}')}")
                em.store_elem(out, oi, nv)
            em.loop("0", str(n), col)
        em.loop("0", str(k), kk)
    em.loop("0", str(m), row)


def _sfx(t: str) -> str:
    return {"half": "f16", "bfloat": "bf16", "float": "f32", "double": "f64"}[t]


def _window_index(env: Env, op: Op, t: TensorArg, starts: list, sizes, idx: list[str],
                  packed_last: bool):
    """Per tensor dim: the index of this tile element, clamped, plus the all-in-bounds flag."""
    em = env.em
    it = iter(idx)
    clamped, ok = [], None
    for d, (st, sz) in enumerate(zip(starts, sizes)):
        x = st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
        inb = em.val(f"icmp ult i64 {x}, {t.dims[d]}")
        ok = inb if ok is None else em.val(f"and i1 {ok}, {inb}")
        clamped.append(em.val(f"select i1 {inb}, i64 {x}, i64 0"))
    return clamped, ok


def _offset(env: Env, t: TensorArg, idx: list[str]) -> str:
    em = env.em
    off = None
    for x, s in zip(idx, t.strides):
        term = x if s == "1" else em.val(f"mul i64 {x}, {s}")
        off = term if off is None else em.val(f"add i64 {off}, {term}")
    return off or "0"


def _masked(env: Env, op: Op, ok: str, idx: list[str], shape) -> str:
    if not op.attrs.masked:
        return ok
    m = env.get(op.operands[-1])
    em = env.em
    if isinstance(m, Buf):
        pad = (1,) * (len(shape) - len(m.shape)) + m.shape
        mv = em.load_elem(m, em.flat_index(idx, pad))
    else:
        mv = m
    return em.val(f"and i1 {ok}, {mv}")


@handles("load")
def _load(env: Env, op: Op) -> None:
    t = env.get(op.operands[0])
    if t.packed:
        raise BackendError(f"llvm: load of {t.type.dtype} codes must be lowered by the bitpack "
                           "pass (cast them to a machine type)", op.loc)
    _load_common(env, op, t)


@handles("load_codes")
def _load_codes(env: Env, op: Op) -> None:
    _load_common(env, op, env.get(op.operands[0]))


def _load_common(env: Env, op: Op, t: TensorArg) -> None:
    em = env.em
    nst = len(op.operands) - 1 - op.attrs.masked
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    rt = op.results[0].type
    shape = rt.shape if isinstance(rt, TileType) else ()
    dt = rt.dtype
    zero = const_literal(em, 0, dt) if dt != "bool" else "false"

    def element(idx: list[str]) -> str:
        clamped, ok = _window_index(env, op, t, starts, op.attrs.sizes, idx, t.packed)
        ok = _masked(env, op, ok, idx, shape)
        v = _read_packed(env, t, clamped, op.attrs.bits, dt) if t.packed else \
            _read(env, t, clamped)
        return em.val(f"select i1 {ok}, {lltype(dt)} {v}, {lltype(dt)} {zero}")

    if not shape:
        env.bind(op.results[0], element([]))
        return
    out = env.result_buf(op)
    em.nest(shape, lambda idx: em.store_elem(out, em.flat_index(idx, shape), element(idx)))


def _read(env: Env, t: TensorArg, idx: list[str]) -> str:
    em = env.em
    p = em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, "
               f"i64 {_offset(env, t, idx)}", "p")
    v = em.val(f"load {MEMTYPE[t.type.dtype]}, ptr {p}")
    return em.val(f"trunc i8 {v} to i1") if t.type.dtype == "bool" else v


def _read_packed(env: Env, t: TensorArg, idx: list[str], bits: int, dt: str) -> str:
    """Code idx[-1] of row idx[:-1] from the LSB-first uint32 stream (may straddle words)."""
    em = env.em
    bitpos = em.val(f"mul i64 {idx[-1]}, {bits}")
    word = em.val(f"lshr i64 {bitpos}, 5")
    sh = em.val(f"and i64 {bitpos}, 31")
    base = _offset(env, t, idx[:-1] + ["0"])
    wi = em.val(f"add i64 {base}, {word}")
    lo = em.val(f"load i32, ptr {em.val(f'getelementptr inbounds i32, ptr {t.ptr}, i64 {wi}')}")
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        s32 = em.val(f"trunc i64 {sh} to i32")
        code = em.val(f"and i32 {em.val(f'lshr i32 {lo}, {s32}')}, {mask}")
    else:
        last = em.val(f"sub i64 {t.words}, 1")
        nxt = em.val(f"add i64 {word}, 1")
        c = em.val(f"icmp ult i64 {nxt}, {t.words}")
        nxt = em.val(f"select i1 {c}, i64 {nxt}, i64 {last}")
        hi_i = em.val(f"add i64 {base}, {nxt}")
        hp = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {hi_i}")
        hi = em.val(f"load i32, ptr {hp}")
        hi64 = em.val(f"shl i64 {em.val(f'zext i32 {hi} to i64')}, 32")
        both = em.val(f"or i64 {hi64}, {em.val(f'zext i32 {lo} to i64')}")
        shifted = em.val(f"lshr i64 {both}, {sh}")
        code = em.val(f"trunc i64 {em.val(f'and i64 {shifted}, {mask}')} to i32")
    return convert(em, code, "u32", dt) if dt not in ("i32", "u32") else code


@handles("store")
def _store(env: Env, op: Op) -> None:
    em = env.em
    t = env.get(op.operands[0])
    if t.packed:
        raise BackendError(f"llvm: storing {t.type.dtype} codes is not supported yet", op.loc)
    nst = len(op.operands) - 2 - op.attrs.masked
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    val = env.get(op.operands[1 + nst])
    shape = tuple(s for s in op.attrs.sizes if s > 0)

    def body(idx: list[str]) -> None:
        clamped, ok = _window_index(env, op, t, starts, op.attrs.sizes, idx, False)
        ok = _masked(env, op, ok, idx, shape)
        if isinstance(val, Buf):
            pad = (1,) * (len(shape) - len(val.shape)) + val.shape
            v = em.load_elem(val, em.flat_index(idx, pad))
        else:
            v = val
        yes, no = em.label("st"), em.label("skip")
        em.emit(f"br i1 {ok}, label %{yes}, label %{no}")
        em.start_block(yes)
        p = em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, "
                   f"i64 {_offset(env, t, clamped)}", "p")
        if t.type.dtype == "bool":
            v = em.val(f"zext i1 {v} to i8")
        em.emit(f"store {MEMTYPE[t.type.dtype]} {v}, ptr {p}")
        em.br(no)
        em.start_block(no)

    if shape:
        em.nest(shape, body)
    else:
        body([])


@handles("lut")
def _lut(env: Env, op: Op) -> None:
    em = env.em
    dt = op.attrs.dtype
    t = MEMTYPE[dt]
    name = f"@lut{len(em.globals)}"
    items = ", ".join(f"{t} {const_literal(em, v, dt)}" for v in op.attrs.values)
    em.globals.append(f"{name} = private unnamed_addr constant [{len(op.attrs.values)} x {t}] "
                      f"[{items}], align 64")
    src_dt = op.operands[0].type.dtype

    def fn(xs: list[str]) -> str:
        i = convert(em, xs[0], src_dt, "i64") if src_dt != "i64" else xs[0]
        p = em.val(f"getelementptr inbounds {t}, ptr {name}, i64 {i}", "p")
        return em.val(f"load {t}, ptr {p}")

    elementwise(env, op, fn)
