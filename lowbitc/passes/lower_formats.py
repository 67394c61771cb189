"""Dequantization lowering: `cast` from any lowbitc format to a machine type becomes integer
and bit arithmetic on the codes, generated from the format's description (never one path
per format):

- unsigned / two's complement / bipolar integers: sign-extend or 2c - (2^n - 1), then convert;
- every (e, m) float: the sign, exponent and mantissa bits shift into an f32's bit positions
  and one multiply by 2^(127 - bias) rebiases (subnormals come out right, as in FP6-LLM);
  codes that mean NaN/inf (fn, fnuz, ieee) are patched with one compare and a table select;
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
    if kind == "float" and fmt.signed and fmt.exp_bits <= 8 and n <= 8:
        m = fmt.man_bits
        mag = b.emit("and", c, _k(b, c, (1 << (n - 1)) - 1, "i32"))
        sign = b.emit("shl", b.emit("shr", c, _k(b, c, n - 1, "i32")), _k(b, c, 31, "i32"))
        bits = b.emit("or", b.emit("shl", mag, _k(b, c, 23 - m, "i32")), sign)
        v = b.emit("mul", b.emit("bitcast", bits, attrs=CastAttrs("f32")),
                   _k(b, c, float(2.0 ** (127 - fmt.bias)), "f32"))
        special = _special_mask(b, c, mag, fmt)
        if special is None:
            return v
        table = b.emit("lut", c, attrs=LutAttrs("f32", _table(fmt)))
        return b.emit("where", special, table, v)
    return b.emit("lut", c, attrs=LutAttrs("f32", _table(fmt)))


def _special_mask(b: Builder, c: Value, mag: Value, fmt) -> Value | None:
    """A bool tile marking the codes whose value is NaN or inf, or None if there are none."""
    n, m, e = fmt.bits, fmt.man_bits, fmt.exp_bits
    if fmt.special == "finite":
        return None
    if fmt.special == "fn":  # S.1111.111 is NaN
        return b.emit("eq", mag, _k(b, c, (1 << (n - 1)) - 1, "i32"))
    if fmt.special == "fnuz":  # only the negative zero code is NaN
        return b.emit("eq", c, _k(b, c, 1 << (n - 1), "i32"))
    if fmt.special == "ieee":  # exponent all ones
        exp = b.emit("shr", mag, _k(b, c, m, "i32"))
        return b.emit("eq", exp, _k(b, c, (1 << e) - 1, "i32"))
    return b.emit("ne", c, c)  # unknown policy: never special (kept total)


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
