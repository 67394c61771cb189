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
"""

from __future__ import annotations

import math

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


def decode_codes(b: Builder, c: Value, fmt) -> Value:
    """Ops turning i32 codes `c` of format `fmt` into f32 values (exactly fmt.decode)."""
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


def _rule(op: Op, b: Builder, defs: Defs):
    if op.opcode != "cast":
        return None
    src = op.operands[0]
    if is_machine(src.type.dtype):
        return None
    dst = op.attrs.dtype
    if not is_machine(dst):
        return None  # encoding (quantizing) stays a cast; backends say if they support it
    fmt = format_of(src.type.dtype)
    c = b.emit("codes", src, attrs=CastAttrs("i32"))
    v = decode_codes(b, c, fmt)
    if dst != "f32":
        v = b.emit("cast", v, attrs=CastAttrs(dst))
    return (v,)


@register("lower-formats")
def lower_formats(k):
    """Dequantization lowering: casts from formats become bit arithmetic or tables."""
    return rewrite(k, _rule)
