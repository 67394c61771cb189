"""LLVM handlers for scalar and elementwise tile ops (arithmetic, bits, compares, casts)."""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, Emitter, float_literal, lltype
from lowbitc.backends.llvm.handlers import Env, const_literal, convert, handles, splat, vtype
from lowbitc.backends.llvm.vexp import vexp_f32
from lowbitc.errors import BackendError
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float, is_signed_int

_INT = {"add": "add", "sub": "sub", "mul": "mul", "and": "and", "or": "or", "xor": "xor",
        "shl": "shl"}
_SIGNED = {"div": ("sdiv", "udiv"), "rem": ("srem", "urem"), "shr": ("ashr", "lshr")}
_ICMP = {"lt": ("slt", "ult"), "le": ("sle", "ule"), "gt": ("sgt", "ugt"),
         "ge": ("sge", "uge"), "eq": ("eq", "eq"), "ne": ("ne", "ne")}
_FLOAT = {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv", "rem": "frem"}
_FCMP = {"lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge", "eq": "oeq", "ne": "une"}
_FINTR = {"exp": "exp", "log": "log", "sqrt": "sqrt", "sin": "sin", "cos": "cos",
          "floor": "floor", "tanh": "tanh", "abs": "fabs"}
_SUFFIX = {"half": "f16", "bfloat": "bf16", "float": "f32", "double": "f64"}


def _intrinsic(em: Emitter, name: str, t: str, args: list[str], width: int = 0) -> str:
    sfx = _SUFFIX.get(t, t)
    full = f"<{width} x {t}>" if width else t
    fn = f"llvm.{name}.{f'v{width}' if width else ''}{sfx}"
    em.declare(f"declare {full} @{fn}({', '.join([full] * len(args))})")
    return em.val(f"call {full} @{fn}({', '.join(f'{full} {a}' for a in args)})")


def scalar_op(em: Emitter, opcode: str, dtype: str, args: list[str], width: int = 0) -> str:
    """One elementwise op on register values of `dtype` (the operands' dtype); with `width`,
    on <width x dtype> vectors (constants then must be splats)."""
    if dtype == "bf16":  # held as bits: compute in f32 and round back (compares need not)
        wide = [convert(em, a, "bf16", "f32", width) for a in args]
        r = scalar_op(em, opcode, "f32", wide, width)
        return r if opcode in _FCMP else convert(em, r, "f32", "bf16", width)
    lt = lltype(dtype)
    t = vtype(dtype, width)
    bt = vtype("bool", width)
    if is_float(dtype):
        if opcode in _FLOAT:
            return em.val(f"{_FLOAT[opcode]} {t} {args[0]}, {args[1]}")
        if opcode in _FCMP:
            return em.val(f"fcmp {_FCMP[opcode]} {t} {args[0]}, {args[1]}")
        if opcode in ("min", "max", "pow"):
            return _intrinsic(em, {"min": "minnum", "max": "maxnum", "pow": "pow"}[opcode], lt,
                              args, width)
        if opcode == "neg":
            return em.val(f"fneg {t} {args[0]}")
        if opcode == "exp" and lt == "float" and width:
            return vexp_f32(em, args[0], width)
        if opcode in _FINTR:
            return _intrinsic(em, _FINTR[opcode], lt, args, width)
        one = splat(float_literal(1.0, "f64" if lt == "double" else "f32"), dtype, width)
        if lt == "half":
            wide = convert(em, args[0], dtype, "f32", width)
            return convert(em, scalar_op(em, opcode, "f32", [wide], width), "f32", dtype, width)
        if opcode == "rsqrt":
            return em.val(f"fdiv {t} {one}, {_intrinsic(em, 'sqrt', lt, args, width)}")
        if opcode == "sigmoid":
            e = _intrinsic(em, "exp", lt, [em.val(f"fneg {t} {args[0]}")], width)
            return em.val(f"fdiv {t} {one}, {em.val(f'fadd {t} {one}, {e}')}")
        if opcode == "erf" and not width:
            fn = "erff" if lt == "float" else "erf"
            em.declare(f"declare {t} @{fn}({t})")
            return em.val(f"call {t} @{fn}({t} {args[0]})")
    else:
        signed = is_signed_int(dtype)
        if opcode in _INT:
            return em.val(f"{_INT[opcode]} {t} {args[0]}, {args[1]}")
        if opcode in _SIGNED:
            return em.val(f"{_SIGNED[opcode][0 if signed else 1]} {t} {args[0]}, {args[1]}")
        if opcode in _ICMP:
            return em.val(f"icmp {_ICMP[opcode][0 if signed else 1]} {t} {args[0]}, {args[1]}")
        if opcode in ("min", "max"):
            pred = ("s" if signed else "u") + ("lt" if opcode == "min" else "gt")
            c = em.val(f"icmp {pred} {t} {args[0]}, {args[1]}")
            return em.val(f"select {bt} {c}, {t} {args[0]}, {t} {args[1]}")
        if opcode == "neg":
            return em.val(f"sub {t} {'zeroinitializer' if width else '0'}, {args[0]}")
        if opcode == "bnot":
            ones = splat("true" if lt == "i1" else "-1", dtype, width)
            return em.val(f"xor {t} {args[0]}, {ones}")
        if opcode == "abs":
            return em.val(f"call {t} @{_abs_decl(em, lt, width)}({t} {args[0]}, i1 false)")
    raise BackendError(f"llvm: op {opcode} is not defined on {dtype}"
                       + (f" vectors of {width}" if width else ""))


def _abs_decl(em: Emitter, lt: str, width: int) -> str:
    name = f"llvm.abs.{f'v{width}' if width else ''}{lt}"
    t = f"<{width} x {lt}>" if width else lt
    em.declare(f"declare {t} @{name}({t}, i1)")
    return name


def broadcast_view(x: Buf, shape: tuple[int, ...]) -> Buf:
    """`x` seen with `shape` (numpy broadcasting): missing and size-1 dims get stride 0."""
    pad = len(shape) - len(x.shape)
    strides = (0,) * pad + tuple(0 if d == 1 and n != 1 else st
                                 for d, st, n in zip(x.shape, x.strides, shape[pad:]))
    return Buf(x.ptr, x.dtype, tuple(shape), strides)


def elementwise(env: Env, op: Op, fn, vector: bool = False) -> None:
    """Emit `fn(values) -> register` over the result tile (or once for scalars). With
    `vector`, fn also takes a width (`fn(values, w)` on <w x T> vectors) and the tile is
    emitted in vectors of the op's `vec` attribute (the vectorize pass) where its operands
    are contiguous or constant along rows."""
    em = env.em
    res = op.results[0].type
    xs = [env.get(v) for v in op.operands]
    if not isinstance(res, TileType):
        env.bind(op.results[0], fn(xs))
        return
    out = env.result_buf(op)
    width = getattr(op.attrs, "vec", 0) if vector else 0
    if width > 1:
        views = [broadcast_view(x, res.shape) if isinstance(x, Buf) else x for x in xs]
        if all(not isinstance(v, Buf) or v.strides[-1] in (0, 1) for v in views):
            dtypes = [v.type.dtype for v in op.operands]
            _vector_rows(env, out, list(zip(views, dtypes)), fn, width)
            return
    if all(not isinstance(x, Buf) or (x.shape == res.shape and x.contiguous) for x in xs):
        def body(i: str) -> None:
            em.store_elem(out, i, fn([em.load_elem(x, i) if isinstance(x, Buf) else x
                                      for x in xs]))
        em.loop("0", str(out.size), body)
        return
    views = [broadcast_view(x, res.shape) if isinstance(x, Buf) else x for x in xs]
    if len(res.shape) > 1 and all(not isinstance(v, Buf) or v.strides[-1] in (0, 1)
                                  for v in views):
        _rowwise(env, out, views, fn)
        return

    def nbody(idx: list[str]) -> None:
        vals = [em.at(x, idx) if isinstance(x, Buf) else x for x in views]
        em.store_elem(out, em.flat_index(idx, res.shape), fn(vals))
    em.nest(res.shape, nbody)


def _rowwise(env: Env, out: Buf, views: list, fn) -> None:
    """Leading dims outside, the last dim in a plain counted loop: operands are contiguous
    along it or constant over it (row-broadcast scales), so LLVM vectorises the inner loop."""
    em = env.em
    shape = out.shape
    n = shape[-1]

    def row(idx: list[str]) -> None:
        obase = em.flat_index(list(idx) + ["0"], shape)
        bases = []
        for v in views:
            if not isinstance(v, Buf):
                bases.append(("scalar", v))
            elif v.strides[-1] == 0:
                bases.append(("scalar", em.at(v, list(idx) + ["0"])))
            else:
                bases.append(("row", (v, em.offset(list(idx) + ["0"], shape, v.strides))))

        def col(j: str) -> None:
            vals = [x if kind == "scalar" else
                    em.load_elem(x[0], em.val(f"add i64 {x[1]}, {j}")) for kind, x in bases]
            em.store_elem(out, em.val(f"add i64 {obase}, {j}"), fn(vals))
        em.loop("0", str(n), col)

    em.nest(shape[:-1], row)


def _vector_rows(env: Env, out: Buf, operands: list, fn, width: int) -> None:
    """`out` in <width x T> vectors along its rows (the whole tile as one row when every
    operand is laid out like it); a row length that `width` does not divide ends in scalars."""
    em = env.em
    shape = out.shape
    flat = all(not isinstance(v, Buf) or (v.shape == shape and v.contiguous)
               for v, _ in operands)
    rows, n = ((), out.size) if flat else (shape[:-1], shape[-1])

    def row(idx: list[str]) -> None:
        first = list(idx) + ["0"]
        obase = em.flat_index(first, shape) if rows else "0"
        parts = []  # (buffer and row start) or (scalar, its splat)
        for v, dt in operands:
            if isinstance(v, Buf) and v.strides[-1] != 0:
                parts.append((v, em.offset(first, shape, v.strides) if rows else "0"))
            else:
                x = em.at(v, first) if isinstance(v, Buf) else v
                parts.append((x, vsplat(em, x, dt, width)))

        def at(j: str, w: int) -> list[str]:
            return [(vload(em, x, em.val(f"add i64 {b}, {j}"), w) if w else
                     em.load_elem(x, em.val(f"add i64 {b}, {j}"))) if isinstance(x, Buf)
                    else (b if w else x) for x, b in parts]

        whole = n - n % width
        em.loop("0", str(whole), lambda j: vstore(
            em, out, em.val(f"add i64 {obase}, {j}"), fn(at(j, width), width), width),
            step=str(width))
        if whole < n:
            em.loop(str(whole), str(n), lambda j: em.store_elem(
                out, em.val(f"add i64 {obase}, {j}"), fn(at(j, 0))))

    if rows:
        em.nest(rows, row)
    else:
        row([])


def vsplat(em: Emitter, x: str, dtype: str, width: int) -> str:
    """A <width x dtype> vector of the register value x."""
    t = lltype(dtype)
    one = em.val(f"insertelement <{width} x {t}> poison, {t} {x}, i64 0")
    return em.val(f"shufflevector <{width} x {t}> {one}, <{width} x {t}> poison, "
                  f"<{width} x i32> zeroinitializer")


def vload(em: Emitter, buf: Buf, index: str, width: int) -> str:
    """Elements index .. index + width - 1 of a tile buffer as one vector (bools widened from
    their bytes)."""
    mt = MEMTYPE[buf.dtype]
    v = em.val(f"load <{width} x {mt}>, ptr {em.gep(buf, index)}, align {_align(mt)}")
    return em.val(f"trunc <{width} x i8> {v} to <{width} x i1>") if buf.dtype == "bool" else v


def vstore(em: Emitter, buf: Buf, index: str, value: str, width: int) -> None:
    """Store a vector at elements index .. index + width - 1 of a tile buffer."""
    mt = MEMTYPE[buf.dtype]
    if buf.dtype == "bool":
        value = em.val(f"zext <{width} x i1> {value} to <{width} x i8>")
    em.emit(f"store <{width} x {mt}> {value}, ptr {em.gep(buf, index)}, align {_align(mt)}")


def _align(memtype: str) -> int:
    return {"i8": 1, "i16": 2, "half": 2, "i32": 4, "float": 4}.get(memtype, 8)


@handles("add", "sub", "mul", "div", "rem", "min", "max", "pow", "and", "or", "xor", "shl",
         "shr", "lt", "le", "gt", "ge", "eq", "ne", "neg", "abs", "bnot", "exp", "log", "sqrt",
         "rsqrt", "tanh", "sin", "cos", "floor", "erf", "sigmoid")
def _arith(env: Env, op: Op) -> None:
    dt = op.operands[0].type.dtype
    elementwise(env, op, lambda xs, w=0: scalar_op(env.em, op.opcode, dt, xs, w),
                vector=op.opcode != "erf")  # (erf has no vector intrinsic)


@handles("cast")
def _cast(env: Env, op: Op) -> None:
    src, dst = op.operands[0].type.dtype, op.attrs.dtype
    if not (lltype(src) and lltype(dst)):
        raise BackendError(f"llvm: cast {src} -> {dst}", op.loc)
    elementwise(env, op, lambda xs, w=0: convert(env.em, xs[0], src, dst, w), vector=True)


@handles("bitcast")
def _bitcast(env: Env, op: Op) -> None:
    src, dst = op.operands[0].type.dtype, op.attrs.dtype
    elementwise(env, op, lambda xs, w=0: env.em.val(
        f"bitcast {vtype(src, w)} {xs[0]} to {vtype(dst, w)}"), vector=True)


@handles("where")
def _where(env: Env, op: Op) -> None:
    dt = op.results[0].type.dtype
    elementwise(env, op, lambda xs, w=0: env.em.val(
        f"select {vtype('bool', w)} {xs[0]}, {vtype(dt, w)} {xs[1]}, {vtype(dt, w)} {xs[2]}"),
        vector=True)


@handles("const")
def _const(env: Env, op: Op) -> None:
    env.bind(op.results[0], const_literal(env.em, op.attrs.value, op.attrs.dtype))


@handles("block_id")
def _block_id(env: Env, op: Op) -> None:
    env.bind(op.results[0], env.block[op.attrs.axis])


@handles("codes")
def _codes(env: Env, op: Op) -> None:
    x = env.get(op.operands[0])
    if isinstance(x, Buf) and x.dtype == op.attrs.dtype:  # a format tile held as its codes
        env.bind(op.results[0], x)
        return
    raise BackendError(
        f"llvm: {op.operands[0].type} codes must come straight from a load of a packed tensor "
        "(the bitpack pass turns those into load_codes)", op.loc)
