"""Dequantization lowering: `cast` from any lowbitc format to a machine type becomes integer
and bit arithmetic on the codes, generated from the format's description (never one path
per format):

- unsigned / two's complement / bipolar integers: sign-extend or 2c - (2^n - 1), then convert;
- every (e, m) float: the exponent and mantissa bits shift into an f32's bit positions and an
  integer add of (127 - bias) << 23 rebiases normal codes; subnormal codes are their mantissa
  converted to f32 times 2^(1 - bias - m); the sign is OR-ed in. No step ever forms a
  denormal f32 (the multiply-by-2^(127 - bias) trick of FP6-LLM would, and Intel CPUs take a
  microcode assist on each); codes that mean NaN/inf (fn, fnuz, ieee) are patched by compares
  and selects of constant bit patterns;
- code books (and exponent-only e8m0): a table lookup.

With the option `half=1` (the CPU pipeline's), a float whose codes read as f16 bit patterns
once shifted into place (exponent <= 5 bits, mantissa <= 10) decodes through f16 instead: the
magnitude bits shift to the top of f16's fields and the sign to bit 15, specials are patched
with f16's NaN/inf patterns, and the f16 -> f32 conversion (`vcvtph2ps`, which turns f16
subnormals into normal f32s in hardware, no assist) times 2^(15 - bias) gives the value. On a
CPU that is a few 16-bit lane ops and one convert for 8-bit codes, where tables are too big.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from lowbitc.formats import lookup as format_of
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Op, Value
from lowbitc.ir.opdefs import CastAttrs, ConstAttrs, LutAttrs
from lowbitc.ir.types import is_machine
from lowbitc.passes.base import Defs, register, rewrite


def _k(b: Builder, like: Value, value: int | float, dtype: str) -> Value:
    """A scalar constant to combine with `like` (scalars broadcast over tiles)."""
    return b.emit("const", attrs=ConstAttrs(dtype, value))


def _table(fmt) -> tuple[float, ...]:
    # NaN is always math.nan, so equal tables compare (and hash) equal, as after parsing
    return tuple(math.nan if v != v else float(v) for v in np.asarray(fmt.values(), np.float32))


_NAN_BITS = 0x7FC00000  # the quiet NaN fmt.decode gives (math.nan as f32)
_INF_BITS = 0x7F800000


def decode_codes(b: Builder, c: Value, fmt, half: bool = False) -> Value:
    """Ops turning i32 codes `c` of format `fmt` into f32 values (exactly fmt.decode);
    `half`: through f16 where the format fits it (see the module's docstring)."""
    n = fmt.bits

    def f32(v: Value) -> Value:
        return b.emit("cast", v, attrs=CastAttrs("f32"))

    kind = fmt.kind
    if kind == "uint":
        return f32(c)
    if kind == "int":
        sh = _k(b, c, 32 - n, "i32")
        return f32(b.emit("shr", b.emit("shl", c, sh), sh))
    if kind == "bipolar":
        twice = b.emit("shl", c, _k(b, c, 1, "i32"))
        return f32(b.emit("sub", twice, _k(b, c, (1 << n) - 1, "i32")))
    if half and fits_half(fmt):
        return _via_half(b, c, fmt)
    if kind == "float" and fmt.signed and 0 <= fmt.bias <= 126 and n <= 8:
        return b.emit("bitcast", _float_bits(b, c, fmt), attrs=CastAttrs("f32"))
    return b.emit("lut", c, attrs=LutAttrs("f32", _table(fmt)))


def _float_bits(b: Builder, c: Value, fmt) -> Value:
    """The f32 bit patterns of (e, m) float codes, computed without ever forming a denormal
    (Intel CPUs take a ~100-cycle assist on denormal operands): normal codes rebias by an
    integer add into the exponent field, subnormal codes (exponent 0) are their mantissa
    converted exactly and scaled by a normal power of two; NaN/inf codes are patched last."""
    n, m = fmt.bits, fmt.man_bits

    def k(value: int | float, dtype: str = "i32") -> Value:
        return _k(b, c, value, dtype)

    mag = b.emit("and", c, k((1 << (n - 1)) - 1))
    sign = b.emit("shl", b.emit("shr", c, k(n - 1)), k(31))
    normal = b.emit("add", b.emit("shl", mag, k(23 - m)), k((127 - fmt.bias) << 23))
    scaled = b.emit(
        "mul",
        b.emit("cast", mag, attrs=CastAttrs("f32")),
        k(float(2.0 ** (1 - fmt.bias - m)), "f32"),
    )
    subnormal = b.emit("bitcast", scaled, attrs=CastAttrs("i32"))
    bits = b.emit("or", b.emit("where", b.emit("lt", mag, k(1 << m)), subnormal, normal), sign)
    if fmt.special == "fn":  # S.1111.111 is NaN
        return b.emit("where", b.emit("eq", mag, k((1 << (n - 1)) - 1)), k(_NAN_BITS), bits)
    if fmt.special == "fnuz":  # only the negative zero code is NaN
        return b.emit("where", b.emit("eq", c, k(1 << (n - 1))), k(_NAN_BITS), bits)
    if fmt.special == "ieee":  # exponent all ones: inf (mantissa 0, signed) or NaN
        inf = k(((1 << fmt.exp_bits) - 1) << m)
        inf_bits = b.emit("or", sign, k(_INF_BITS))
        special = b.emit("where", b.emit("eq", mag, inf), inf_bits, k(_NAN_BITS))
        return b.emit("where", b.emit("ge", mag, inf), special, bits)
    return bits  # finite: every code is a number


_HALF_NAN, _HALF_INF = 0x7E00, 0x7C00  # f16 patterns that widen to _NAN_BITS / _INF_BITS


def fits_half(fmt) -> bool:
    """Whether the codes' sign/exponent/mantissa bits, moved into f16's fields, read as the
    value times 2^(bias - 15) for every number (exponent field <= 5 bits, never all ones
    unless the format's own all-ones exponent means inf/NaN as f16's does), with the value
    and the factor normal f32s."""
    if fmt.kind != "float" or not fmt.signed or fmt.bits > 8 or fmt.man_bits > 10:
        return False
    if fmt.exp_bits > 5 or (fmt.exp_bits == 5 and fmt.special != "ieee"):
        return False
    return -126 <= 1 - fmt.bias - fmt.man_bits and 15 - fmt.bias <= 127


def _via_half(b: Builder, c: Value, fmt) -> Value:
    """f32 values of (e, m) float codes through f16 bit patterns (`fits_half` formats)."""
    n, m = fmt.bits, fmt.man_bits

    def k(value: int | float, dtype: str = "u16") -> Value:
        return _k(b, c, value, dtype)

    # 16-bit lanes throughout: twice the codes per vector op as i32 lanes
    c = b.emit("cast", c, attrs=CastAttrs("u16"))
    top = ((1 << (n - 1)) - 1) << (10 - m)  # the magnitude's place in f16
    x = b.emit("shl", c, k(16 - n))  # the sign at bit 15, as in f16
    e = fmt.exp_bits
    mag = b.emit("and", b.emit("shr", x, k(5 - e)) if e < 5 else x, k(top))
    sign = b.emit("and", x, k(0x8000))
    bits = b.emit("or", mag, sign)
    if fmt.special == "fn":  # S.1111.111 is NaN
        bits = b.emit("where", b.emit("eq", mag, k(top)), k(_HALF_NAN), bits)
    elif fmt.special == "fnuz":  # only the negative zero code is NaN
        bits = b.emit("where", b.emit("eq", bits, k(0x8000)), k(_HALF_NAN), bits)
    elif fmt.special == "ieee":  # exponent all ones: inf (mantissa 0, signed) or NaN
        inf = k(((1 << fmt.exp_bits) - 1) << 10)
        inf_bits = b.emit("or", sign, k(_HALF_INF))
        special = b.emit("where", b.emit("eq", mag, inf), inf_bits, k(_HALF_NAN))
        bits = b.emit("where", b.emit("ge", mag, inf), special, bits)
    h = b.emit("bitcast", bits, attrs=CastAttrs("f16"))
    v = b.emit("cast", h, attrs=CastAttrs("f32"))
    if fmt.bias == 15:
        return v
    return b.emit("mul", v, k(float(2.0 ** (15 - fmt.bias)), "f32"))


def _same_codes(v: Value, defs: Defs) -> Value:
    """The tile whose codes `v` holds: through views between formats of one width (the same
    bits read as another format's codes, as matmul_mix.lbk decodes one load with each member
    format), so every decode of those codes reads the one load."""
    d = defs.of(v)
    while (d is not None and d.opcode == "view" and not is_machine(d.operands[0].type.dtype)
           and format_of(d.operands[0].type.dtype).bits == format_of(v.type.dtype).bits):
        v = d.operands[0]
        d = defs.of(v)
    return v


def _rule(op: Op, b: Builder, defs: Defs, half: bool = False):
    if op.opcode != "cast":
        return None
    src = op.operands[0]
    if is_machine(src.type.dtype):
        return None
    dst = op.attrs.dtype
    if not is_machine(dst):
        return None  # encoding (quantizing) stays a cast; backends say if they support it
    fmt = format_of(src.type.dtype)
    c = b.emit("codes", _same_codes(src, defs), attrs=CastAttrs("i32"))
    v = decode_codes(b, c, fmt, half)
    if dst != "f32":
        v = b.emit("cast", v, attrs=CastAttrs(dst))
    return (v,)


@register("lower-formats", options={"half": 0})
def lower_formats(k, half: int = 0):
    """Dequantization lowering: casts from formats become bit arithmetic or tables."""
    return rewrite(k, partial(_rule, half=bool(half)))
