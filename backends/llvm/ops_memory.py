"""LLVM handlers for tile construction, data movement, reductions, dot and global memory."""

from __future__ import annotations

from dataclasses import replace

from lowbitc.backends.llvm import intdot
from lowbitc.backends.llvm import microkernel
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, TensorArg, const_literal, convert, handles
from lowbitc.backends.llvm.lanes import read_lanes
from lowbitc.backends.llvm.ops_elementwise import broadcast_view, elementwise, scalar_op
from lowbitc.backends.llvm.rows import read as rows_read
from lowbitc.errors import BackendError
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float, is_machine
from lowbitc.repack import RowsPacking
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


@handles("dot")
def _dot(env: Env, op: Op) -> None:
    a, b, acc = (env.get(v) for v in op.operands)
    out = env.result_buf(op)
    env.em.copy(acc, out)
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
        mv = em.at(broadcast_view(m, tuple(shape)), idx)
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
    nst = len(op.attrs.sizes)
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    t = _linear(env, op, t)
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

    def generic() -> None:
        em.nest(shape, lambda idx: em.store_elem(out, em.flat_index(idx, shape), element(idx)))

    if t.packing is not None:  # read code by code (the fused dot decodes aligned windows)
        generic()
    elif t.packed and op.attrs.sizes[-1] % 32 == 0:
        _packed_fast_path(env, op, t, starts, out, generic)
    elif not t.packed and t.type.dtype != "bool":
        _dense_fast_path(env, op, t, starts, out, generic)
    else:
        generic()


def _in_bounds(em, t: TensorArg, starts: list, sizes) -> str:
    ok = "true"
    for st, sz, dim in zip(starts, sizes, t.dims):
        end = em.val(f"add i64 {st}, {max(sz, 1)}")
        inb = em.val(f"and i1 {em.val(f'icmp sle i64 {end}, {dim}')}, "
                     f"{em.val(f'icmp sge i64 {st}, 0')}")
        ok = inb if ok == "true" else em.val(f"and i1 {ok}, {inb}")
    return ok


def _linear(env: Env, op: Op, t: TensorArg) -> TensorArg:
    """The tensor as a linearized op addresses it: with the row strides of its operands (the
    linearize pass) in place of the backend's own."""
    if not getattr(op.attrs, "linear", False):
        return t
    n = len(op.attrs.sizes)
    strides = [env.get(v) for v in op.operands[2 + n : 1 + 2 * n]]
    return replace(t, strides=[*strides, "1"])


def _origin(env: Env, op: Op) -> str | None:
    """A linearized op's window offset (elements, or words of the first row), else None."""
    if not getattr(op.attrs, "linear", False):
        return None
    return env.get(op.operands[1 + len(op.attrs.sizes)])


def _row_offset(env: Env, t: TensorArg, starts: list, sizes, idx: list[str],
                origin: str | None, last: str) -> str:
    """Offset of tile row `idx` (leading tile indices): from the window's `origin` when the op
    is linearized, else from the starts (with `last` as the last dim's index)."""
    em = env.em
    it = iter(idx)
    if origin is not None:
        off = origin
        for sz, st in zip(sizes[:-1], t.strides):
            if sz:
                off = em.val(f"add i64 {off}, {em.val(f'mul i64 {next(it)}, {st}')}")
        return off
    tidx = [st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
            for st, sz in zip(starts[:-1], sizes[:-1])] + [last]
    return _offset(env, t, tidx)


def _row_start(env: Env, t: TensorArg, starts: list, sizes, idx: list[str],
               origin: str | None = None) -> str:
    """Address of the first element of tile row `idx` (leading tile indices) in the tensor."""
    off = _row_offset(env, t, starts, sizes, idx, origin, starts[-1])
    return env.em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, i64 {off}")


def _apply_mask(env: Env, op: Op, out: Buf) -> None:
    """out = where(mask, out, 0), the mask being the op's last operand (broadcast)."""
    em = env.em
    m = env.get(op.operands[-1])
    zero = const_literal(em, 0, out.dtype)
    t_ = lltype(out.dtype)
    mv = broadcast_view(m, out.shape) if isinstance(m, Buf) else None

    def apply(i: str, c: str) -> None:
        em.store_elem(out, i, em.val(f"select i1 {c}, {t_} {em.load_elem(out, i)}, {t_} {zero}"))

    if mv is None or mv.contiguous:
        em.loop("0", str(out.size), lambda i: apply(i, em.load_elem(mv, i) if mv else m))
    else:
        em.nest(out.shape, lambda idx: apply(em.flat_index(idx, out.shape), em.at(mv, idx)))


def _dense_fast_path(env: Env, op: Op, t: TensorArg, starts: list, out: Buf, generic) -> None:
    """In-bounds windows: each tile row is one contiguous copy; a mask is one select pass."""
    em = env.em
    sizes = op.attrs.sizes
    fast, slow, done = em.label("inb"), em.label("edge"), em.label("loaded")
    em.emit(f"br i1 {_in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows, ncols = out.shape[:-1], out.shape[-1]
    nbytes = ncols * {"i8": 1, "i16": 2, "i32": 4, "i64": 8, "half": 2, "bfloat": 2,
                      "float": 4, "double": 8}[MEMTYPE[out.dtype]]

    def row(idx: list[str]) -> None:
        src = _row_start(env, t, starts, sizes, idx, _origin(env, op))
        dst = em.gep(out, em.flat_index(list(idx) + ["0"], out.shape) if rows else "0")
        em.memcpy(dst, src, nbytes, 4)

    def element(idx: list[str]) -> None:  # a strided window (last dim indexed): no clamps
        it = iter(idx)
        tidx = [st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
                for st, sz in zip(starts, sizes)]
        em.store_elem(out, em.flat_index(idx, out.shape), _read(env, t, tidx))

    sliced = [d for d, sz in enumerate(sizes) if sz]
    if (sizes[-1] == 0 and len(sliced) == 1 and out.size >= LANES_GATHER
            and MEMTYPE[out.dtype] in ("float", "i32")):
        _gather_column(env, t, starts, sliced[0], out)
    elif sizes[-1] == 0:
        em.nest(out.shape, element)
    elif rows:
        em.nest(rows, row)
    else:
        row([])
    if op.attrs.masked:
        _apply_mask(env, op, out)
    em.br(done)
    em.start_block(slow)
    generic()
    em.br(done)
    em.start_block(done)


LANES_GATHER = 16  # elements per gather of a strided 1-D window


def _gather_column(env: Env, t: TensorArg, starts: list, dim: int, out: Buf) -> None:
    """A window sliced along one dim that is not the last (a column, e.g. one group's scales
    of a block of rows): 16-lane gathers at the dim's stride, then the remaining elements."""
    em = env.em
    n = out.size
    et = MEMTYPE[out.dtype]
    v = f"<{LANES_GATHER} x {et}>"
    base = _offset(env, t, list(starts))
    stride = t.strides[dim]
    lanes = "<" + ", ".join(f"i64 {i}" for i in range(LANES_GATHER)) + ">"
    ins = em.val(f"insertelement <{LANES_GATHER} x i64> poison, i64 {stride}, i64 0")
    step = em.val(f"shufflevector <{LANES_GATHER} x i64> {ins}, <{LANES_GATHER} x i64> poison, "
                  f"<{LANES_GATHER} x i32> zeroinitializer")
    offs = em.val(f"mul <{LANES_GATHER} x i64> {lanes}, {step}")
    sfx = "f32" if et == "float" else "i32"
    em.declare(f"declare {v} @llvm.masked.gather.v{LANES_GATHER}{sfx}.v{LANES_GATHER}p0"
               f"(<{LANES_GATHER} x ptr>, i32, <{LANES_GATHER} x i1>, {v})")
    true = "<" + ", ".join(["i1 true"] * LANES_GATHER) + ">"
    for i in range(0, n - n % LANES_GATHER, LANES_GATHER):
        first = em.val(f"add i64 {base}, {em.val(f'mul i64 {i}, {stride}')}")
        p = em.val(f"getelementptr inbounds {et}, ptr {t.ptr}, i64 {first}")
        ptrs = em.val(f"getelementptr inbounds {et}, ptr {p}, <{LANES_GATHER} x i64> {offs}")
        g = em.val(f"call {v} @llvm.masked.gather.v{LANES_GATHER}{sfx}.v{LANES_GATHER}p0("
                   f"<{LANES_GATHER} x ptr> {ptrs}, i32 4, <{LANES_GATHER} x i1> {true}, "
                   f"{v} poison)")
        em.emit(f"store {v} {g}, ptr {em.gep(out, str(i))}, align 4")
    for i in range(n - n % LANES_GATHER, n):
        off = em.val(f"add i64 {base}, {em.val(f'mul i64 {i}, {stride}')}")
        p = em.val(f"getelementptr inbounds {et}, ptr {t.ptr}, i64 {off}")
        em.store_elem(out, str(i), em.val(f"load {et}, ptr {p}"))


def _vec(items) -> str:
    return "<" + ", ".join(f"i32 {v}" for v in items) + ">"


def unpack32(em, ptr: str, bits: int) -> str:
    """32 codes of `bits` each from the `bits` words at ptr, as a <32 x i32> vector: one
    vector load, two constant shuffles and a funnel shift (codes may straddle words); 8-bit
    codes are bytes in order: a byte load widened (`vpmovzxbd`, or narrower lanes when LLVM
    sees that the decode needs no more)."""
    if bits == 8:
        v = em.val(f"load <32 x i8>, ptr {ptr}, align 4")
        return em.val(f"zext <32 x i8> {v} to <32 x i32>")
    words = em.val(f"load <{bits} x i32>, ptr {ptr}, align 4")
    lo_idx = [(j * bits) >> 5 for j in range(32)]
    hi_idx = [min(i + 1, bits - 1) for i in lo_idx]
    shifts = [(j * bits) & 31 for j in range(32)]
    lo = em.val(f"shufflevector <{bits} x i32> {words}, <{bits} x i32> poison, "
                f"<32 x i32> {_vec(lo_idx)}")
    if 32 % bits == 0:  # no code straddles two words: one shift
        v = em.val(f"lshr <32 x i32> {lo}, {_vec(shifts)}")
    else:
        hi = em.val(f"shufflevector <{bits} x i32> {words}, <{bits} x i32> poison, "
                    f"<32 x i32> {_vec(hi_idx)}")
        em.declare("declare <32 x i32> @llvm.fshr.v32i32(<32 x i32>, <32 x i32>, <32 x i32>)")
        v = em.val(f"call <32 x i32> @llvm.fshr.v32i32(<32 x i32> {hi}, <32 x i32> {lo}, "
                   f"<32 x i32> {_vec(shifts)})")
    return em.val(f"and <32 x i32> {v}, {_vec([(1 << bits) - 1] * 32)}")


def _packed_fast_path(env: Env, op: Op, t: TensorArg, starts: list, out: Buf, generic) -> None:
    """Aligned, in-bounds windows of packed codes: every 32 codes of a row are exactly `bits`
    words, so each code's word and shift are constants; LLVM vectorises the straight-line
    extraction. Windows at the edges (or unaligned) take the generic path."""
    em = env.em
    sizes, bits = op.attrs.sizes, op.attrs.bits
    aligned = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[-1]}, 31')}, 0")
    ok = em.val(f"and i1 {aligned}, {_in_bounds(em, t, starts, sizes)}")
    fast, slow, done = em.label("fast"), em.label("slow"), em.label("unpacked")
    em.emit(f"br i1 {ok}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows = out.shape[:-1]
    ncols = out.shape[-1]
    dt = out.dtype

    def row(idx: list[str]) -> None:
        first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[-1]}, 5')}, {bits}")
        row0 = _row_offset(env, t, starts, sizes, idx, _origin(env, op), "0")
        base = em.val(f"add i64 {row0}, {first}")
        obase = em.flat_index(list(idx) + ["0"], out.shape) if rows else "0"

        def group(g: str) -> None:
            wbase = em.val(f"add i64 {base}, {em.val(f'mul i64 {g}, {bits}')}")
            p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {wbase}")
            o0 = em.val(f"add i64 {obase}, {em.val(f'mul i64 {g}, 32')}")
            codes = unpack32(em, p, bits)
            if dt in ("i32", "u32"):
                vec, vt = codes, "i32"
            else:
                vt = lltype(dt)
                op_ = "uitofp" if is_float(dt) else "trunc"
                vec = em.val(f"{op_} <32 x i32> {codes} to <32 x {vt}>")
            q = em.gep(out, o0)
            em.emit(f"store <32 x {vt}> {vec}, ptr {q}, align 4")
        em.loop("0", str(ncols // 32), group)

    if rows:
        em.nest(rows, row)
    else:
        row([])
    if op.attrs.masked:
        m = env.get(op.operands[-1])
        if isinstance(m, Buf):
            mv = broadcast_view(m, out.shape)
            zero = const_literal(em, 0, dt)
            em.nest(out.shape, lambda idx: em.store_elem(
                out, em.flat_index(idx, out.shape),
                em.val(f"select i1 {em.at(mv, idx)}, {lltype(dt)} "
                       f"{em.load_elem(out, em.flat_index(idx, out.shape))}, {lltype(dt)} {zero}")))
    em.br(done)
    em.start_block(slow)
    generic()
    em.br(done)
    em.start_block(done)


def _read(env: Env, t: TensorArg, idx: list[str]) -> str:
    em = env.em
    p = em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, "
               f"i64 {_offset(env, t, idx)}", "p")
    v = em.val(f"load {MEMTYPE[t.type.dtype]}, ptr {p}")
    return em.val(f"trunc i8 {v} to i1") if t.type.dtype == "bool" else v


def _read_packed(env: Env, t: TensorArg, idx: list[str], bits: int, dt: str) -> str:
    """Code idx[-1] of row idx[:-1] from the LSB-first uint32 stream (may straddle words),
    or from the tensor's lanes packing."""
    em = env.em
    if t.packing is not None:
        code = rows_read(em, t, idx, t.packing) if isinstance(t.packing, RowsPacking) else \
            read_lanes(em, t, idx, t.packing)
        return convert(em, code, "u32", dt) if dt not in ("i32", "u32") else code
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
    nst = len(op.attrs.sizes)
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    val = env.get(op.operands[-1 - op.attrs.masked])
    t = _linear(env, op, t)
    shape = tuple(s for s in op.attrs.sizes if s > 0)

    def body(idx: list[str]) -> None:
        clamped, ok = _window_index(env, op, t, starts, op.attrs.sizes, idx, False)
        ok = _masked(env, op, ok, idx, shape)
        if isinstance(val, Buf):
            v = em.at(broadcast_view(val, shape), idx)
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

    if (shape and op.attrs.sizes[-1] > 0 and isinstance(val, Buf) and val.contiguous
            and val.shape == shape and t.type.dtype != "bool"):
        _store_rows_fast_path(env, op, t, starts, val, shape, body)
    elif shape:
        em.nest(shape, body)
    else:
        body([])


def _store_rows_fast_path(env: Env, op: Op, t: TensorArg, starts: list, val: Buf,
                          shape: tuple[int, ...], generic_body) -> None:
    """In-bounds windows: each tile row is one contiguous copy into the tensor, or, under a
    mask, one llvm.masked.store (masked lanes are never written, so blocks that share a row
    stay independent). Other windows take the per-element path."""
    em = env.em
    sizes = op.attrs.sizes
    fast, slow, done = em.label("stinb"), em.label("stedge"), em.label("stored")
    em.emit(f"br i1 {_in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows, ncols = shape[:-1], shape[-1]
    # rows move as bits: 16-bit floats as i16 (vectors of half would be legalised through
    # conversion calls that MCJIT cannot resolve)
    et = {"half": "i16", "bfloat": "i16"}.get(MEMTYPE[t.type.dtype], MEMTYPE[t.type.dtype])
    vt = f"<{ncols} x {et}>"
    mask = None
    if op.attrs.masked:
        m = env.get(op.operands[-1])
        mask = broadcast_view(m, shape) if isinstance(m, Buf) else m
        if isinstance(mask, Buf) and mask.strides[-1] not in (0, 1):
            em.br(slow)
            mask = "unusable"
    if mask != "unusable":
        def row(idx: list[str]) -> None:
            dst = _row_start(env, t, starts, sizes, idx, _origin(env, op))
            src = em.gep(val, em.flat_index(list(idx) + ["0"], shape) if rows else "0")
            v = em.val(f"load {vt}, ptr {src}, align 4")
            if mask is None:
                em.emit(f"store {vt} {v}, ptr {dst}, align 4")
                return
            if isinstance(mask, Buf):
                mrow = em.offset(list(idx) + ["0"], shape, mask.strides)
                if mask.strides[-1] == 1:
                    raw = em.val(f"load <{ncols} x i8>, ptr {em.gep(mask, mrow)}, align 1")
                    mv = em.val(f"trunc <{ncols} x i8> {raw} to <{ncols} x i1>")
                else:  # one flag for the whole row
                    one = em.load_elem(mask, mrow)
                    ins = em.val(f"insertelement <{ncols} x i1> poison, i1 {one}, i64 0")
                    mv = em.val(f"shufflevector <{ncols} x i1> {ins}, <{ncols} x i1> poison, "
                                f"<{ncols} x i32> zeroinitializer")
            else:
                ins = em.val(f"insertelement <{ncols} x i1> poison, i1 {mask}, i64 0")
                mv = em.val(f"shufflevector <{ncols} x i1> {ins}, <{ncols} x i1> poison, "
                            f"<{ncols} x i32> zeroinitializer")
            fn = f"llvm.masked.store.v{ncols}{_vsfx(et)}.p0"
            em.declare(f"declare void @{fn}({vt}, ptr, i32, <{ncols} x i1>)")
            em.emit(f"call void @{fn}({vt} {v}, ptr {dst}, i32 4, <{ncols} x i1> {mv})")

        if rows:
            em.nest(rows, row)
        else:
            row([])
        em.br(done)
    em.start_block(slow)
    em.nest(shape, generic_body)
    em.br(done)
    em.start_block(done)


def _vsfx(et: str) -> str:
    return {"float": "f32", "double": "f64", "half": "f16", "bfloat": "bf16"}.get(et, et)


def lut_global(em, op: Op) -> tuple[str, str]:
    """A private constant table for a `lut` op: (its name, its element type)."""
    dt = op.attrs.dtype
    t = MEMTYPE[dt]
    name = f"@lut{len(em.globals)}"
    items = ", ".join(f"{t} {const_literal(em, v, dt)}" for v in op.attrs.values)
    em.globals.append(f"{name} = private unnamed_addr constant [{len(op.attrs.values)} x {t}] "
                      f"[{items}], align 64")
    return name, t


@handles("lut")
def _lut(env: Env, op: Op) -> None:
    em = env.em
    name, t = lut_global(em, op)
    src_dt = op.operands[0].type.dtype

    def fn(xs: list[str]) -> str:
        i = convert(em, xs[0], src_dt, "i64") if src_dt != "i64" else xs[0]
        p = em.val(f"getelementptr inbounds {t}, ptr {name}, i64 {i}", "p")
        return em.val(f"load {t}, ptr {p}")

    elementwise(env, op, fn)
