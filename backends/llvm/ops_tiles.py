"""LLVM handlers for tile construction and movement, reductions and dot (register tiles only:
global memory is ops_memory's)."""

from __future__ import annotations

from lowbitc.backends.llvm import intdot, microkernel
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, const_literal, convert, handles
from lowbitc.backends.llvm.ops_elementwise import broadcast_view, scalar_op
from lowbitc.errors import BackendError
from lowbitc.explain import note
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float, is_machine
from lowbitc.signature import format_bits


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
    shape = op.results[0].type.shape
    if src.contiguous:
        env.bind(op.results[0], Buf(src.ptr, src.dtype, shape))
        return
    out = env.result_buf(op)
    env.em.nest(src.shape, lambda idx: env.em.store_elem(
        out, env.em.flat_index(idx, src.shape), env.em.at(src, idx)))


@handles("view")
def _view(env: Env, op: Op) -> None:
    """Same bytes, another element type. Machine types alias the buffer; a format's codes are
    extracted from the byte stream into an i32 code buffer (how format tiles are held)."""
    em = env.em
    src = env.get(op.operands[0])
    rt = op.results[0].type
    if not isinstance(src, Buf) or not is_machine(src.dtype) or src.dtype == "bool":
        raise BackendError(f"llvm: view of {op.operands[0].type} as {rt.dtype} is not "
                           "supported yet (views start from machine-typed tiles)", op.loc)
    if not src.contiguous:
        tmp = em.alloc(src.dtype, src.shape)
        em.copy(src, tmp)
        src = tmp
    if is_machine(rt.dtype):
        env.bind(op.results[0], Buf(src.ptr, rt.dtype, rt.shape))
        return
    bits = format_bits(rt.dtype)
    out = em.alloc("i32", rt.shape)
    env.tiles[op.results[0].id] = out
    row_bytes = src.shape[-1] * {"i8": 1, "i16": 2, "i32": 4, "i64": 8, "half": 2, "bfloat": 2,
                                 "float": 4, "double": 8}[MEMTYPE[src.dtype]]
    ncols = rt.shape[-1]
    if _unpack_words(em, src, out, bits):
        return

    def one(idx: list[str]) -> None:
        row = em.flat_index(idx[:-1], rt.shape[:-1]) if len(rt.shape) > 1 else "0"
        base = em.val(f"mul i64 {row}, {row_bytes}")
        bitpos = em.val(f"mul i64 {idx[-1]}, {bits}")
        byte = em.val(f"add i64 {base}, {em.val(f'lshr i64 {bitpos}, 3')}")
        last = em.val(f"add i64 {base}, {row_bytes - 1}")
        nxt = em.val(f"add i64 {byte}, 1")
        nxt = em.val(f"select i1 {em.val(f'icmp ult i64 {nxt}, {last}')}, i64 {nxt}, "
                     f"i64 {last}")
        lo = em.val(f"zext i8 {em.val(f'load i8, ptr {_byte_ptr(em, src, byte)}')} to i32")
        hi = em.val(f"zext i8 {em.val(f'load i8, ptr {_byte_ptr(em, src, nxt)}')} to i32")
        both = em.val(f"or i32 {lo}, {em.val(f'shl i32 {hi}, 8')}")
        sh = em.val(f"trunc i64 {em.val(f'and i64 {bitpos}, 7')} to i32")
        code = em.val(f"and i32 {em.val(f'lshr i32 {both}, {sh}')}, {(1 << bits) - 1}")
        em.store_elem(out, em.flat_index(idx, rt.shape), code)

    em.nest(rt.shape[:-1] + (ncols,), one)


VIEW_LANES = 16


def _unpack_words(em, src: Buf, out: Buf, bits: int) -> bool:
    """Codes of 2, 4 or 8 bits out of rows of whole u32/i32 words (N-packed zero points, a
    gather of packed rows): per 16 codes one load of 16 * bits / 32 words, a shuffle, a shift
    and a mask. False (nothing emitted) for other tiles."""
    if src.dtype not in ("u32", "i32") or bits not in (2, 4, 8) \
            or out.shape[-1] % VIEW_LANES or out.shape[-1] * bits != src.shape[-1] * 32:
        return False
    nw = VIEW_LANES * bits // 32  # words per 16 codes
    rows = out.size // out.shape[-1]
    vi = f"<{VIEW_LANES} x i32>"
    pick = ", ".join(f"i32 {lane * bits // 32}" for lane in range(VIEW_LANES))
    shifts = ", ".join(f"i32 {lane * bits % 32}" for lane in range(VIEW_LANES))
    mask = f"splat (i32 {(1 << bits) - 1})"

    def chunk(i: str) -> None:  # chunk i of all rows' codes (rows are whole chunks)
        p = em.val(f"getelementptr inbounds i32, ptr {src.ptr}, i64 "
                   f"{em.val(f'mul i64 {i}, {nw}')}")
        w = em.val(f"load <{nw} x i32>, ptr {p}, align 4")
        spread = em.val(f"shufflevector <{nw} x i32> {w}, <{nw} x i32> poison, "
                        f"<{VIEW_LANES} x i32> <{pick}>")
        codes = em.val(f"and {vi} {em.val(f'lshr {vi} {spread}, <{shifts}>')}, {mask}")
        q = em.gep(out, em.val(f"mul i64 {i}, {VIEW_LANES}"))
        em.emit(f"store {vi} {codes}, ptr {q}, align 4")

    em.loop("0", str(rows * out.shape[-1] // VIEW_LANES), chunk)
    return True


def _byte_ptr(em, src: Buf, index: str) -> str:
    return em.val(f"getelementptr inbounds i8, ptr {src.ptr}, i64 {index}")


@handles("broadcast")
def _broadcast(env: Env, op: Op) -> None:
    src = env.get(op.operands[0])
    shape = op.results[0].type.shape
    if isinstance(src, Buf):
        env.bind(op.results[0], broadcast_view(src, shape))
        return
    out = env.result_buf(op)  # scalar -> tile
    env.em.loop("0", str(out.size), lambda i: env.em.store_elem(out, i, src))


@handles("transpose")
def _transpose(env: Env, op: Op) -> None:
    src = env.get(op.operands[0])
    perm = op.attrs.perm
    env.bind(op.results[0], Buf(src.ptr, src.dtype, tuple(src.shape[p] for p in perm),
                                tuple(src.strides[p] for p in perm)))


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
    fn = {"sum": "add", "max": "max", "min": "min"}[op.attrs.kind]
    axis = op.attrs.axis
    if axis == len(src.shape) - 1 and src.strides[-1] == 1:
        _reduce_rows(env, op, src, out, out_shape, init, fn)
        return
    em.loop("0", str(out.size), lambda i: em.store_elem(out, i, init))

    def body(idx: list[str]) -> None:
        o = em.flat_index(idx[:axis] + idx[axis + 1:], out_shape) if out_shape else "0"
        acc = em.load_elem(out, o)
        x = em.at(src, idx)
        em.store_elem(out, o, scalar_op(em, fn, dt, [acc, x]))
    em.nest(src.shape, body)
    if out_shape:
        env.bind(op.results[0], out)
    else:
        env.bind(op.results[0], em.load_elem(out, "0"))


def _reduce_rows(env: Env, op: Op, src: Buf, out: Buf, out_shape, init: str, fn: str) -> None:
    """Reduce along a contiguous last axis: one register-carried loop per output element
    (float sums reassociate so LLVM vectorises them)."""
    em = env.em
    dt = src.dtype
    t = lltype(dt)
    n = src.shape[-1]

    def one(idx: list[str]) -> None:
        base = em.offset(list(idx) + ["0"], src.shape, src.strides)
        if (dt == "f32" or dt == "i32" and fn == "add") and n % ROW_SUM_LANES == 0 \
                and n <= ROW_SUM_MAX:
            r = _row_reduce_vectors(em, src, base, n, fn)
            if fn != "add":  # as the element chain: max(init, ...) (an all-NaN row: init)
                r = scalar_op(em, fn, dt, [init, r])
            em.store_elem(out, em.flat_index(idx, out_shape) if out_shape else "0", r)
            return

        def step(p: str, acc: list[str]) -> list[str]:
            x = em.load_elem(src, em.val(f"add i64 {base}, {p}"))
            if fn == "add" and is_float(dt) and dt != "bf16":
                return [em.val(f"fadd reassoc {t} {acc[0]}, {x}")]
            return [scalar_op(em, fn, dt, [acc[0], x])]
        (r,) = em.loop("0", str(n), None, carried=[(t, init)], body_carried=step)
        em.store_elem(out, em.flat_index(idx, out_shape) if out_shape else "0", r)

    if out_shape:
        em.nest(out_shape, one)
        env.bind(op.results[0], out)
    else:
        one([])
        env.bind(op.results[0], em.load_elem(out, "0"))


ROW_SUM_LANES = 16  # f32 row sums, maxima and minima and i32 row sums of a static length,
ROW_SUM_MAX = 512  # a multiple of this, up to this: straight-line vector loads and a tree
# of adds (or maxnum/minnum); LLVM leaves the scalar loop a chain of dependent adds, ~4
# cycles an element (the sum of a 32-wide activation group that zero points need cost as
# much as the group's dot), never vectorises a maxnum chain (the int8 activations' absmax)
# and turns an i32 row sum over a tile's rows into gathers
_VECTOR_REDUCE = {"add": "fadd", "max": "fmax", "min": "fmin"}


def _row_reduce_vectors(em, src: Buf, base: str, n: int, fn: str) -> str:
    """fn (add, max or min) over src[base : base + n] for f32 (or add for i32): n / 16 vector
    loads, a tree of `fn`, one horizontal reduction (max/min: maxnum/minnum, NaN only where
    every value is)."""
    if src.dtype == "i32":
        v = f"<{ROW_SUM_LANES} x i32>"
        parts = [em.val(f"load {v}, ptr {em.gep(src, em.val(f'add i64 {base}, {i}'))}, "
                        "align 4") for i in range(0, n, ROW_SUM_LANES)]
        while len(parts) > 1:
            parts = [em.val(f"add {v} {a}, {b}") for a, b in zip(parts[::2], parts[1::2])] \
                + parts[len(parts) - len(parts) % 2:]
        name = f"llvm.vector.reduce.add.v{ROW_SUM_LANES}i32"
        em.declare(f"declare i32 @{name}({v})")
        return em.val(f"call i32 @{name}({v} {parts[0]})")
    v = f"<{ROW_SUM_LANES} x float>"
    parts = [em.val(f"load {v}, ptr {em.gep(src, em.val(f'add i64 {base}, {i}'))}, align 4")
             for i in range(0, n, ROW_SUM_LANES)]

    def join(a: str, b: str) -> str:
        if fn == "add":
            return em.val(f"fadd reassoc {v} {a}, {b}")
        return scalar_op(em, fn, "f32", [a, b], ROW_SUM_LANES)
    while len(parts) > 1:
        parts = [join(a, b) for a, b in zip(parts[::2], parts[1::2])] \
            + parts[len(parts) - len(parts) % 2:]
    name = f"llvm.vector.reduce.{_VECTOR_REDUCE[fn]}.v{ROW_SUM_LANES}f32"
    if fn == "add":
        em.declare(f"declare float @{name}(float, {v})")
        return em.val(f"call reassoc float @{name}(float -0.0, {v} {parts[0]})")
    em.declare(f"declare float @{name}({v})")
    return em.val(f"call float @{name}({v} {parts[0]})")


@handles("dot")
def _dot(env: Env, op: Op) -> None:
    a, b, acc = (env.get(v) for v in op.operands)
    out = env.result_buf(op)
    env.em.copy(acc, out)
    if microkernel.applies(a, b, out):
        note("dot", "", "panel microkernel (register-blocked)", loc=op.loc)
    else:
        note("dot", "", "per-element loops (LLVM vectorises the k reduction)",
             "the microkernel takes float tiles into an f32 result with at least "
             f"{microkernel.MIN_ROWS} rows", fallback=True, loc=op.loc)
    dot_into(env.em, a, b, out)


def dot_into(em, a: Buf, b: Buf, out: Buf) -> None:
    """out += a @ b. When b is contiguous along k (e.g. a transposed [N, K] tile) the
    reduction over k is innermost and register-carried (vectorised with reassociation);
    otherwise the k loop is outside an axpy over n. Float tiles into an f32 `out` take the
    register-blocked microkernel (backends/llvm/microkernel.py); 8-bit integer tiles into i32
    the byte dot (backends/llvm/intdot.py)."""
    if microkernel.applies(a, b, out):
        microkernel.emit_dot(em, a, b, out)
        return
    if intdot.applies(a, b, out):
        intdot.emit_dot(em, a, b, out)
        return
    m, k = a.shape
    n = b.shape[1]
    dt = out.dtype
    t = lltype(dt)
    fl = is_float(dt)
    mul = f"fmul reassoc contract {t}" if fl else f"mul {t}"
    add = f"fadd reassoc contract {t}" if fl else f"add {t}"
    if dt == "bf16":  # held as bits: accumulate through scalar_op, which computes in f32
        mul = add = None

    def elem(buf: Buf, i: str, j: str) -> str:
        return convert(em, em.at(buf, [i, j]), buf.dtype, dt)

    if b.strides[0] == 1 and k > 1:
        def row(i: str) -> None:
            def col(j: str) -> None:
                oi = em.flat_index([i, j], out.shape)

                def red(p: str, vals: list[str]) -> list[str]:
                    return [_mac(em, mul, add, dt, elem(a, i, p), elem(b, p, j), vals[0])]
                (s_,) = em.loop("0", str(k), None, carried=[(t, em.load_elem(out, oi))],
                                body_carried=red)
                em.store_elem(out, oi, s_)
            em.loop("0", str(n), col)
        em.loop("0", str(m), row)
        return

    def row2(i: str) -> None:
        def kk(p: str) -> None:
            av = elem(a, i, p)

            def col(j: str) -> None:
                oi = em.flat_index([i, j], out.shape)
                em.store_elem(out, oi, _mac(em, mul, add, dt, av, elem(b, p, j),
                                            em.load_elem(out, oi)))
            em.loop("0", str(n), col)
        em.loop("0", str(k), kk)
    em.loop("0", str(m), row2)


def _mac(em, mul: str | None, add: str | None, dt: str, x: str, y: str, acc: str) -> str:
    """acc + x * y with the given instructions (None: through scalar_op, e.g. for bf16)."""
    if mul is None:
        return scalar_op(em, "add", dt, [acc, scalar_op(em, "mul", dt, [x, y])])
    return em.val(f"{add} {acc}, {em.val(f'{mul} {x}, {y}')}")


def _sfx(t: str) -> str:
    return {"half": "f16", "bfloat": "bf16", "float": "f32", "double": "f64"}[t]
