"""Quantization lowering: `cast` to a lowbitc format becomes a search over the format's sorted
values, and tiles of codes move to and from packed tensors as integer codes.

- `cast(x, F)` (x of a machine type): code = the code of the value nearest x, exactly as
  `lowbitc.dtype(F).encode` rounds (ties to even, finite overflow saturating). The encoding
  is generated from the format's value table, never one path per format: between each pair
  of neighbouring values a threshold (the smallest number of the compared type that rounds to
  the upper one: the midpoint, or the next number up) is kept in a table, and a branch-free
  binary search (`lut` + compare + `where`, 8 steps for 256 codes) counts the thresholds x
  reaches; a second table (or, for integers, an add) maps that index to its code. Signed
  zero, NaN and infinities are patched with selects where the format has codes for them.
  `encode` itself is the oracle for every tie and special case. Other rounding modes
  (`cast(x, F, rounding=...)`) swap in their thresholds (lowbitc.rounding); stochastic casts
  add one step: the "down" neighbour moves up where `u * gap < x - lower`, u from `philox`.
- a `load` of a packed tensor that is not a decode becomes `load_codes` (i32 codes);
- `store` of a format tile into a packed tensor becomes `store_codes` of its i32 codes.

Run after `bitpack`: decodes have become `load_codes` by then.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from lowbitc.formats import lookup as format_of
from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Op, Value
from lowbitc.ir.opdefs import CastAttrs, CodesAttrs, ConstAttrs, LutAttrs
from lowbitc.ir.types import TensorType, TileType, is_machine
from lowbitc.passes.base import Defs, register, rewrite
from lowbitc.passes.round_floats import rounded_bf16, rounded_f16
from lowbitc.rounding import plan as rounding_plan
from lowbitc.signature import format_bits


@dataclass(frozen=True)
class EncodePlan:
    """Tables for encoding into one format (all derived from `encode`, the oracle)."""

    thresholds: tuple[float, ...]  # x >= thresholds[j] means x rounds above value j
    codes: tuple[int, ...]  # the code of the j-th smallest value
    steps: tuple[int, ...]  # binary-search steps, largest first
    zero: int  # index of the value 0 (or -1)
    neg_zero: int  # code of -0 (-1 when the format has none)
    nan: tuple[int, int]  # codes of +NaN and -NaN (-1 when the format has no NaN)
    inf: tuple[int, int]  # codes of +inf and -inf when not the saturated ends (else -1)


def _enc(fmt, x: float) -> int:
    return int(fmt.encode(np.array([x], np.float64))[0])


@functools.cache
def encode_plan(fmt, dtype: str, rounding: str = "nearest_even") -> EncodePlan:
    """The tables for encoding values compared as `dtype` ("f32" or "f64") in a rounding mode
    (stochastic: the "down" thresholds; see lowbitc.rounding)."""
    ft = np.float32 if dtype == "f32" else np.float64
    table = fmt.values().astype(np.float64)
    finite = table[np.isfinite(table)]
    values = np.unique(np.where(finite == 0, 0.0, finite))  # -0 and 0 are one value
    codes = tuple(int(c) for c in fmt.encode(values))  # (exact values: RNE is their own code)
    thresholds = []
    if rounding != "nearest_even":
        thresholds = [float(t) for t in rounding_plan(fmt, rounding, dtype).thresholds]
    if rounding == "nearest_even" and len(values) > 1:
        mids = (values[:-1] + values[1:]) / 2
        mid_codes = fmt.encode(mids)
    for j in range(len(values) - 1 if rounding == "nearest_even" else 0):
        mid = mids[j]
        t = ft(mid)
        if float(t) < mid:  # not a `dtype` number: x >= (the next one up) means x > mid
            t = np.nextafter(t, ft(np.inf))
        elif float(t) == mid and mid_codes[j] == codes[j]:  # a tie that rounds down
            t = np.nextafter(t, ft(np.inf))  # (compared with codes[j]: 0 has two codes)
        thresholds.append(float(t))
    size = 1 << max(1, math.ceil(math.log2(len(values))))
    thresholds += [math.nan] * (size - 1 - len(thresholds))
    steps = tuple(size >> k for k in range(1, size.bit_length()))
    zero = int(np.flatnonzero(values == 0)[0]) if (values == 0).any() else -1
    neg_zero = _enc(fmt, -0.0)
    neg_zero = neg_zero if zero >= 0 and neg_zero != codes[zero] else -1
    nan = (_enc(fmt, math.nan), _enc(fmt, -math.nan)) if fmt.has_nan else (-1, -1)
    inf = (_enc(fmt, math.inf), _enc(fmt, -math.inf))
    inf = inf if inf != (codes[-1], codes[0]) else (-1, -1)
    return EncodePlan(tuple(thresholds), codes, steps, zero, neg_zero, nan, inf)


def compare_dtype(src: str) -> str:
    """f32 for f32 (and narrower float) values: each threshold is then the f32 at or above
    the midpoint, exact for them even where the midpoint is no f32 (code books); else f64."""
    return "f32" if src in ("f32", "f16", "bf16") else "f64"


def _value_index(b: Builder, xv: Value, plan: EncodePlan, dt: str, k) -> Value:
    """How many thresholds x reaches (the index of its nearest value), by a branch-free
    binary search: log2(#values) steps of table load, compare and select. (Counting with one
    compare per threshold needs 3x the ops for 16 values and measured slower here.)"""
    first, *rest = plan.steps
    idx = b.emit("where", b.emit("ge", xv, k(plan.thresholds[first - 1], dt)), k(first), k(0))
    for step in rest:
        cand = idx if step == 1 else b.emit("add", idx, k(step - 1))
        t = b.emit("lut", cand, attrs=LutAttrs(dt, plan.thresholds))
        idx = b.emit("where", b.emit("ge", xv, t), b.emit("add", idx, k(step)), idx)
    return idx


def _code_of_index(b: Builder, idx: Value, plan: EncodePlan, bits: int, k) -> Value:
    """The code of the idx-th smallest value: `(idx + c) mod 2^bits` for integer formats (their
    codes run in value order, two's complement wrapping), a table otherwise."""
    c, mask = plan.codes[0], (1 << bits) - 1
    if all(code == (i + c) & mask for i, code in enumerate(plan.codes)):
        return b.emit("and", b.emit("add", idx, k(c)), k(mask)) if c else idx
    return b.emit("lut", idx, attrs=LutAttrs("i32", tuple(float(x) for x in plan.codes)))


def _stochastic_step(b: Builder, xv: Value, idx: Value, fmt, dt: str, rnd: tuple, k) -> Value:
    """Move the "down" neighbour's index up by one where `u * gap < x - lower`, u from Philox
    of (seed, index): exactly lowbitc.rounding's host rule, in the same type."""
    p = rounding_plan(fmt, "stochastic", dt)
    lower = b.emit("lut", idx, attrs=LutAttrs(dt, tuple(float(v) for v in p.values)))
    gaps = tuple(math.nan if g != g else float(g) for g in p.gaps)  # (one NaN: equal attrs)
    gap = b.emit("lut", idx, attrs=LutAttrs(dt, gaps))  # gap * 2^-24, NaN at the top
    bits = b.emit("shr", b.emit("philox", *rnd), k(8, "u32"))
    u24 = b.emit("cast", bits, attrs=CastAttrs(dt))
    go = b.emit("lt", b.emit("mul", u24, gap), b.emit("sub", xv, lower))  # NaN gap at the top
    return b.emit("where", go, b.emit("add", idx, k(1)), idx)


def encode_codes(b: Builder, x: Value, fmt, rounding: str = "nearest_even",
                 rnd: tuple[Value, Value] = ()) -> Value:
    """Ops turning machine values x into i32 codes of `fmt` (exactly fmt.encode in that
    rounding mode; `rnd` = (seed, index) operands of a stochastic cast)."""
    src = x.type.dtype
    dt = compare_dtype(src)
    plan = encode_plan(fmt, dt, rounding)
    xv = x if src == dt else b.emit("cast", x, attrs=CastAttrs(dt))

    def k(value, dtype: str = "i32") -> Value:
        return b.emit("const", attrs=ConstAttrs(dtype, value))

    idx = _value_index(b, xv, plan, dt, k)
    if rounding == "stochastic":
        idx = _stochastic_step(b, xv, idx, fmt, dt, rnd, k)
    code = _code_of_index(b, idx, plan, fmt.bits, k)
    if plan.neg_zero >= 0 or -1 not in plan.nan or plan.inf[0] >= 0:
        bits = "i32" if dt == "f32" else "i64"
        neg = b.emit("lt", b.emit("bitcast", xv, attrs=CastAttrs(bits)), k(0, bits))

        def signed(pos: int, negc: int) -> Value:
            return k(pos) if pos == negc else b.emit("where", neg, k(negc), k(pos))

    if plan.neg_zero >= 0:
        at_zero = b.emit("and", b.emit("eq", idx, k(plan.zero)), neg)
        code = b.emit("where", at_zero, k(plan.neg_zero), code)
    if plan.inf[0] >= 0:
        is_inf = b.emit("eq", b.emit("abs", xv), k(math.inf, dt))
        code = b.emit("where", is_inf, signed(*plan.inf), code)
    if -1 not in plan.nan:
        code = b.emit("where", b.emit("ne", xv, xv), signed(*plan.nan), code)
    return code


def _is_packed(v: Value) -> bool:
    return isinstance(v.type, TensorType) and not is_machine(v.type.dtype)


def _from_codes(b: Builder, codes: Value, fmt: str, defs: Defs) -> Value:
    """A format tile holding `codes`, recorded so later `codes` of it fold back to them."""
    op = b.op("from_codes", [codes], CastAttrs(fmt))
    defs.ops[op.result.id] = op
    return op.result


def _codes_of(b: Builder, v: Value, defs: Defs) -> Value:
    d = defs.of(v)
    if d is not None and d.opcode == "from_codes":
        return d.operands[0]
    return b.emit("codes", v, attrs=CastAttrs("i32"))


def _rounded_machine_cast(b: Builder, op: Op) -> Value:
    """cast(x, u8 | i8 | f16 | bf16, rounding=...) other than nearest_even: the 8-bit integers
    through their format's codes (i8: two's complement), the 16-bit floats by round_floats."""
    x, dst, mode, rnd = op.operands[0], op.attrs.dtype, op.attrs.rounding, op.operands[1:]
    if dst == "bf16":
        return rounded_bf16(b, x, mode, rnd)
    if dst == "f16":
        return rounded_f16(b, x, mode, rnd)
    codes = encode_codes(b, x, format_of(dst), mode, rnd)
    if dst == "i8":  # code c in 0..255 is the value c - 256 * (c >= 128)
        k = lambda v: b.emit("const", attrs=ConstAttrs("i32", v))  # noqa: E731
        codes = b.emit("sub", codes, b.emit("shl", b.emit("shr", codes, k(7)), k(8)))
    return b.emit("cast", codes, attrs=CastAttrs(dst))


def _rule(op: Op, b: Builder, defs: Defs):
    o = op.opcode
    if o == "cast" and is_machine(op.attrs.dtype) and op.attrs.rounding != "nearest_even":
        return (_rounded_machine_cast(b, op),)
    if o == "cast" and not is_machine(op.attrs.dtype) and is_machine(op.operands[0].type.dtype):
        fmt = format_of(op.attrs.dtype)
        codes = encode_codes(b, op.operands[0], fmt, op.attrs.rounding, op.operands[1:])
        return (_from_codes(b, codes, fmt.name, defs),)
    if o == "load" and _is_packed(op.operands[0]) and isinstance(op.results[0].type, TileType):
        t = op.operands[0].type
        attrs = CodesAttrs(format_bits(t.dtype), "i32", op.attrs.sizes, op.attrs.masked)
        c = b.emit("load_codes", *op.operands, attrs=attrs)
        return (_from_codes(b, c, t.dtype, defs),)
    if o == "store" and _is_packed(op.operands[0]):
        a = op.attrs
        nst = len(op.operands) - 2 - a.masked
        value = _codes_of(b, op.operands[1 + nst], defs)
        operands = [*op.operands[: 1 + nst], value, *op.operands[2 + nst :]]
        attrs = CodesAttrs(format_bits(op.operands[0].type.dtype), "i32", a.sizes, a.masked)
        b.op("store_codes", operands, attrs)
        return ()
    if o == "codes" and op.attrs.dtype == "i32":
        d = defs.of(op.operands[0])
        if d is not None and d.opcode == "from_codes" and d.operands[0].type.dtype == "i32":
            return (d.operands[0],)
    return None


@register("lower-encode")
def lower_encode(k):
    """Quantization lowering: casts to formats become a threshold search; packed stores."""
    return rewrite(k, _rule)
