"""Rounded casts of f32 into the 16-bit floats (`cast(x, bf16 | f16, rounding=...)`), as integer
and f32 ops both backends have, giving exactly `lowbitc.dtype(F).encode(x, rounding=...)`:
finite overflow saturates to +-max, infinities stay, NaN becomes the quiet NaN of its sign.
(The default cast, rounding="nearest_even", stays the machine conversion: IEEE, overflow to inf.)

- bf16 is the top half of an f32: with `low` the 16 bits dropped, the magnitude is truncated
  and moved up one where the mode says (nearest_away: low >= 0x8000; up/down: low != 0 on the
  matching sign; stochastic: the host's rule `u * gap < x - lower` is, in these units,
  `philox >> 16 < low` for positives and `(philox >> 16) + low >= 2^16` for negatives).
- f16: |x| is rounded to f16 by the machine cast, stepped to its lower and upper f16
  neighbours by one code, and the mode picks one of them (the tie test compares with their
  midpoint, exact in f32); stochastic compares `u * gap < x - lower` in f64, as the host does.
"""

from __future__ import annotations

from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Value
from lowbitc.ir.opdefs import CastAttrs, ConstAttrs


def _k(b: Builder, value, dtype: str) -> Value:
    return b.emit("const", attrs=ConstAttrs(dtype, value))


def _cast(b: Builder, x: Value, dtype: str, op: str = "cast") -> Value:
    return b.emit(op, x, attrs=CastAttrs(dtype))


def rounded_bf16(b: Builder, x: Value, mode: str, rnd: tuple) -> Value:
    """bf16 of f32 `x` in `mode` (rnd: the stochastic cast's seed and index operands)."""
    u32 = "u32"
    u = _cast(b, x, u32, "bitcast")
    low = b.emit("and", u, _k(b, 0xFFFF, u32))
    trunc = b.emit("shr", u, _k(b, 16, u32))
    neg = b.emit("ge", u, _k(b, 0x8000_0000, u32))
    some = b.emit("ne", low, _k(b, 0, u32))
    if mode == "nearest_away":
        inc = b.emit("ge", low, _k(b, 0x8000, u32))
    elif mode == "up":
        inc = b.emit("and", some, b.emit("bnot", neg))
    elif mode == "down":
        inc = b.emit("and", some, neg)
    elif mode == "stochastic":
        r16 = b.emit("shr", b.emit("philox", *rnd), _k(b, 16, u32))
        inc = b.emit("where", neg, b.emit("ge", b.emit("add", r16, low), _k(b, 0x10000, u32)),
                     b.emit("lt", r16, low))
    else:  # toward_zero
        inc = None
    code = trunc
    if inc is not None:
        exp = b.emit("and", u, _k(b, 0x7F80_0000, u32))
        inc = b.emit("and", inc, b.emit("ne", exp, _k(b, 0x7F80_0000, u32)))  # finite only
        code = b.emit("where", inc, b.emit("add", trunc, _k(b, 1, u32)), trunc)
        over = b.emit("eq", b.emit("and", code, _k(b, 0x7FFF, u32)), _k(b, 0x7F80, u32))
        sat = b.emit("or", b.emit("and", code, _k(b, 0x8000, u32)), _k(b, 0x7F7F, u32))
        code = b.emit("where", b.emit("and", over, inc), sat, code)  # saturate past max
    qnan = b.emit("where", neg, _k(b, 0xFFC0, u32), _k(b, 0x7FC0, u32))
    code = b.emit("where", b.emit("ne", x, x), qnan, code)
    return _cast(b, _cast(b, code, "u16"), "bf16", "bitcast")


def rounded_f16(b: Builder, x: Value, mode: str, rnd: tuple) -> Value:
    """f16 of f32 `x` in `mode` (rnd: the stochastic cast's seed and index operands)."""
    i32, f32 = "i32", "f32"
    a = b.emit("abs", x)
    near = _cast(b, _cast(b, _cast(b, a, "f16"), "u16", "bitcast"), i32)  # RNE magnitude code

    def value(code: Value) -> Value:
        return _cast(b, _cast(b, _cast(b, code, "u16"), "f16", "bitcast"), f32)

    one = _k(b, 1, i32)
    lo = b.emit("where", b.emit("gt", value(near), a), b.emit("sub", near, one), near)
    lo_v = value(lo)
    hi = b.emit("where", b.emit("lt", lo_v, a), b.emit("add", lo, one), lo)
    neg = b.emit("lt", _cast(b, x, i32, "bitcast"), _k(b, 0, i32))
    if mode == "toward_zero":
        mag = lo
    elif mode in ("up", "down"):
        away = b.emit("bnot", neg) if mode == "up" else neg
        mag = b.emit("where", away, hi, lo)
    elif mode == "nearest_away":
        mid = b.emit("mul", b.emit("add", lo_v, value(hi)), _k(b, 0.5, f32))
        mag = b.emit("where", b.emit("ge", a, mid), hi, lo)
    else:  # stochastic: lower = -hi for negatives; up (toward +inf) where u * gap < x - lower
        hi_v, f64 = value(hi), "f64"
        gap = b.emit("mul", _cast(b, b.emit("sub", hi_v, lo_v), f64), _k(b, 2.0**-24, f64))
        u24 = _cast(b, b.emit("shr", b.emit("philox", *rnd), _k(b, 8, "u32")), f64)
        a64, lo64, hi64 = _cast(b, a, f64), _cast(b, lo_v, f64), _cast(b, hi_v, f64)
        dist = b.emit("where", neg, b.emit("sub", hi64, a64), b.emit("sub", a64, lo64))
        go = b.emit("lt", b.emit("mul", u24, gap), dist)  # pos: go = away, neg: go = toward 0
        mag = b.emit("where", b.emit("ne", go, neg), hi, lo)
    finite = b.emit("lt", a, _k(b, float("inf"), f32))
    mag = b.emit("where", b.emit("and", finite, b.emit("gt", mag, _k(b, 0x7BFF, i32))),
                 _k(b, 0x7BFF, i32), mag)  # saturate past max
    mag = b.emit("where", b.emit("ne", x, x), _k(b, 0x7E00, i32), mag)
    code = b.emit("or", mag, b.emit("where", neg, _k(b, 0x8000, i32), _k(b, 0, i32)))
    return _cast(b, _cast(b, code, "u16"), "f16", "bitcast")
