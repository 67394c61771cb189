"""Per-element code of every lazy tile op: the op -> handler table of the CUDA renderer.

A handler gets the renderer (`ctx`), the op and the index of one result element (a tuple of
int64 expressions, `()` for scalars); it emits statements through `ctx.src` and returns the
name or expression of that element's value, typed as the result's dtype. Operands are
fetched with `ctx.operand(op, i, idx)`, which applies numpy broadcasting.
"""

from __future__ import annotations

from collections.abc import Callable

from lowbitc.backends.numba_cuda.source import literal, numba_type
from lowbitc.backends.numba_cuda.units import unit_codes, window_in_unit
from lowbitc.errors import BackendError
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float, is_machine, is_signed_int

Handler = Callable[..., str]
ELEMENT: dict[str, Handler] = {}


def handles(*opcodes: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for o in opcodes:
            ELEMENT[o] = fn
        return fn
    return deco


def reg_dtype(dtype: str) -> str:
    """The machine type holding a value in registers (format codes are u8)."""
    return dtype if is_machine(dtype) else "u8"


def rtype(op: Op) -> str:
    return numba_type(reg_dtype(op.results[0].type.dtype))


def shape_of(t) -> tuple[int, ...]:
    return t.shape if isinstance(t, TileType) else ()


def fail(op: Op, why: str) -> BackendError:
    types = ", ".join(str(v.type) for v in op.operands)
    return BackendError(f"cuda backend: {op.opcode}({types}): {why}", op.loc)


# ---------------------------------------------------------------- arithmetic

_SYM = {"add": "+", "sub": "-", "mul": "*", "and": "&", "or": "|", "xor": "^",
        "shl": "<<", "shr": ">>", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==",
        "ne": "!="}
_COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")


def _no_bf16(op: Op) -> None:
    if any(v.type.dtype == "bf16" for v in (*op.operands, *op.results)):
        raise fail(op, "bf16 values are carried as their bits on the GPU: cast them to f32 "
                   "for arithmetic and comparisons")


@handles(*_SYM, "div", "rem", "min", "max", "pow")
def _binary(ctx, op: Op, idx) -> str:
    _no_bf16(op)
    a, b = ctx.operand(op, 0, idx), ctx.operand(op, 1, idx)
    dt = op.operands[0].type.dtype
    o = op.opcode
    if o in _COMPARE:
        return ctx.src.tmp(f"({a} {_SYM[o]} {b})")
    if dt == "bool" and o in ("and", "or", "xor"):
        return ctx.src.tmp(f"({a} {_SYM[o]} {b})")
    if dt == "bool":
        raise fail(op, "arithmetic on bool values")
    R = rtype(op)
    if o in _SYM:
        return ctx.src.tmp(f"{R}({a} {_SYM[o]} {b})")
    if o in ("min", "max"):
        return ctx.src.tmp(f"{R}({o}({a}, {b}))")
    if o == "pow":
        return ctx.src.tmp(f"{R}({a} ** {b})")
    if is_float(dt):
        if o == "div":
            return ctx.src.tmp(f"{R}({a} / {b})")
        return ctx.src.tmp(f"{R}(math.fmod({a}, {b}))")
    q = _int_div(ctx, a, b, dt)
    if o == "div":
        return q
    return ctx.src.tmp(f"{R}({a} - {q} * {b})")


def _int_div(ctx, a: str, b: str, dt: str) -> str:
    """C division (toward zero); 0 for a zero divisor, as in the interpreter."""
    R = numba_type(dt)
    if not is_signed_int(dt):
        return ctx.src.tmp(f"({R}({a} // {b}) if {b} != 0 else {R}(0))")
    return ctx.src.tmp(f"({R}(0) if {b} == 0 else {R}((abs({a}) // abs({b})) * "
                       f"(1 if ({a} < 0) == ({b} < 0) else -1)))")


_MATH = {"exp": "math.exp({})", "log": "math.log({})", "sqrt": "math.sqrt({})",
         "tanh": "math.tanh({})", "sin": "math.sin({})", "cos": "math.cos({})",
         "floor": "math.floor({})", "erf": "math.erf({})", "rsqrt": "1.0 / math.sqrt({})",
         "sigmoid": "1.0 / (1.0 + math.exp(-{}))"}


@handles("neg", "abs", "bnot", *_MATH)
def _unary(ctx, op: Op, idx) -> str:
    _no_bf16(op)
    a = ctx.operand(op, 0, idx)
    dt = op.operands[0].type.dtype
    o = op.opcode
    if o == "bnot" and dt == "bool":
        return ctx.src.tmp(f"(not {a})")
    R = rtype(op)
    if o == "neg":
        return ctx.src.tmp(f"{R}(-{a})")
    if o == "abs":
        return ctx.src.tmp(f"{R}(abs({a}))")
    if o == "bnot":
        return ctx.src.tmp(f"{R}(~{a})")
    arg = f"F32({a})" if dt == "f16" else a  # libdevice has no f16 versions
    return ctx.src.tmp(f"{R}({_MATH[o].format(arg)})")


@handles("where")
def _where(ctx, op: Op, idx) -> str:
    c = ctx.operand(op, 0, idx)
    x, y = ctx.operand(op, 1, idx), ctx.operand(op, 2, idx)
    return ctx.src.tmp(f"({x} if {c} else {y})")


# ---------------------------------------------------------------- conversions, constants


@handles("cast", "codes")
def _cast(ctx, op: Op, idx) -> str:
    src, dst = op.operands[0].type.dtype, op.attrs.dtype
    if op.opcode == "cast" and not is_machine(src):
        raise fail(op, f"cast from format {src} was not lowered (run lower-formats)")
    if not is_machine(dst):
        raise fail(op, f"encoding to format {dst} is not supported on the GPU")
    a = ctx.operand(op, 0, idx)
    if dst == src:
        return a
    if src == "bf16":  # its bits are the top half of an f32
        a, src = ctx.src.tmp(f"f32_from_bits(U32(U32({a}) << U32(16)))"), "f32"
        if dst == src:
            return a
    if dst == "bf16":
        return _to_bf16(ctx, a if src == "f32" else ctx.src.tmp(f"F32({a})"))
    if dst == "bool":
        return ctx.src.tmp(f"({a} != 0)")
    if is_float(src) and dst in _QUANTIZING:  # round to nearest even, saturate, NaN -> 0
        lo, hi = _QUANTIZING[dst]
        return ctx.src.tmp(f"({numba_type(dst)}(round(max({lo}.0, min({hi}.0, {a})))) "
                           f"if {a} == {a} else {numba_type(dst)}(0))")
    return ctx.src.tmp(f"{numba_type(dst)}({a})")


_QUANTIZING = {"i8": (-128, 127), "u8": (0, 255)}  # floats to these quantize (docs/dsl.md)


def _to_bf16(ctx, f: str) -> str:
    """bf16 bits of f32 `f`: round to nearest even (IEEE: overflow to inf), NaN quiet."""
    u = ctx.src.tmp(f"U64(u32_from_f32({f}))")
    r = f"U16(({u} + U64(0x7FFF) + (({u} >> U64(16)) & U64(1))) >> U64(16))"
    return ctx.src.tmp(f"({r} if {f} == {f} else U16(({u} >> U64(16)) | U64(0x7FC0)))")


_BITCAST = {("i32", "f32"): "f32_from_bits", ("u32", "f32"): "f32_from_bits",
            ("f32", "i32"): "i32_from_f32", ("f32", "u32"): "u32_from_f32",
            ("u16", "f16"): "f16_from_bits", ("f16", "u16"): "u16_from_f16",
            ("u16", "bf16"): "U16", ("bf16", "u16"): "U16"}  # (bf16 is held as its bits)


@handles("bitcast")
def _bitcast(ctx, op: Op, idx) -> str:
    fn = _BITCAST.get((op.operands[0].type.dtype, op.attrs.dtype))
    if fn is None:
        raise fail(op, f"bitcast to {op.attrs.dtype} is supported only between f32 and i32/u32 "
                   "and between u16 and f16/bf16")
    return ctx.src.tmp(f"{fn}({ctx.operand(op, 0, idx)})")


@handles("const")
def _const(ctx, op: Op, idx) -> str:
    return ctx.src.tmp(literal(op.attrs.value, op.attrs.dtype))


@handles("full")
def _full(ctx, op: Op, idx) -> str:
    return literal(op.attrs.value, op.attrs.dtype)


@handles("arange")
def _arange(ctx, op: Op, idx) -> str:
    return ctx.src.tmp(f"{rtype(op)}({idx[0]})")


@handles("lut")
def _lut(ctx, op: Op, idx) -> str:
    table = ctx.lut_table(op.attrs.values)
    return ctx.src.tmp(f"{rtype(op)}({table}[{ctx.operand(op, 0, idx)}])")


# ---------------------------------------------------------------- views


@handles("broadcast")
def _broadcast(ctx, op: Op, idx) -> str:
    return ctx.operand(op, 0, idx)


@handles("transpose")
def _transpose(ctx, op: Op, idx) -> str:
    src = [""] * len(idx)
    for out_axis, p in enumerate(op.attrs.perm):
        src[p] = idx[out_axis]
    return ctx.elem(op.operands[0], tuple(src))


@handles("reshape")
def _reshape(ctx, op: Op, idx) -> str:
    v = op.operands[0]
    src_shape, dst_shape = shape_of(v.type), op.attrs.shape
    if [d for d in src_shape if d != 1] == [d for d in dst_shape if d != 1]:
        kept = iter(i for i, d in zip(idx, dst_shape, strict=False) if d != 1)
        return ctx.elem(v, tuple("0" if d == 1 else next(kept) for d in src_shape))
    lin = ctx.linear(idx, dst_shape)
    return ctx.elem(v, ctx.unravel(lin, src_shape))


# ---------------------------------------------------------------- global memory


@handles("load", "load_codes")
def _load(ctx, op: Op, idx) -> str:
    a = op.attrs
    if getattr(a, "packing", ""):  # (the CPU's lanes packing: this backend reads canonical words)
        raise fail(op, f"codes in packing {a.packing}: the GPU reads the canonical packing")
    t = ctx.tensor(op.operands[0])
    nstart = len(op.operands) - 1 - a.masked
    starts = [ctx.elem(v, ()) for v in op.operands[1:1 + nstart]]
    mask = None
    if a.masked:
        mshape = shape_of(op.operands[-1].type)
        mask = ctx.elem(op.operands[-1], ctx.bcast(idx, shape_of(op.results[0].type), mshape))
    R = rtype(op)
    where = window_in_unit(ctx, starts, a.sizes, idx, t.dims)
    if where is not None:  # bounds checked once per unit; whole words loaded once
        val = (unit_codes(ctx, t, starts, where, ctx.unit.cols[idx[-1]]) if t.bits
               else f"{t.name}[{', '.join(where)}]")
        if mask in (None, "True"):
            return ctx.src.tmp(f"{R}({val})", "v")
        return ctx.src.tmp(f"({R}({val}) if {mask} else {R}(0))", "v")
    where, conds = ctx.window(starts, a.sizes, idx, t.dims)
    if mask is not None:
        conds.insert(0, mask)
    out = ctx.src.tmp(f"{R}(0)", "v")
    with ctx.src.block(f"if {' and '.join(conds) or 'True'}:"):
        if t.bits:
            val = _codes(ctx, t, where)
        else:
            val = f"{t.name}[{', '.join(where)}]"
        ctx.src.line(f"{out} = {R}({val})")
    return out


def _codes(ctx, t, where: list[str]) -> str:
    """Extract code `where[-1]` of a packed row from the canonical LSB-first uint32 stream."""
    b = t.bits
    rows = where[:-1]
    if t.interleaved:  # 4-bit codes in slot order (interleave.py): even codes, then odd
        j = ctx.src.tmp(f"{where[-1]} & 7")
        wi = ctx.src.tmp(f"{where[-1]} >> 3")
        off = ctx.src.tmp(f"U32((({j} >> 1) | (({j} & 1) << 2)) * 4)")
        return f"U32({t.name}[{', '.join(rows + [wi])}] >> {off}) & U32(15)"
    bit = ctx.src.tmp(f"{where[-1]} * {b}")
    wi = ctx.src.tmp(f"{bit} >> 5")
    off = ctx.src.tmp(f"U32({bit} & 31)")
    at = ", ".join(rows + [wi])
    v = ctx.src.tmp(f"U32({t.name}[{at}] >> {off})")
    if 32 % b:
        with ctx.src.block(f"if {off} > U32({32 - b}):"):
            nxt = ", ".join(rows + [f"{wi} + 1"])
            ctx.src.line(f"{v} = U32({v} | ({t.name}[{nxt}] << (U32(32) - {off})))")
    return f"{v} & U32({(1 << b) - 1})"
