"""How the format classes of lowbitc.format_types round: floats to nearest even by bit arithmetic,
f32/f16 through numpy's casts, large arrays through value tables; and the checks of encode's
input (float values, NaN)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from lowbitc.errors import UserArgumentError

if TYPE_CHECKING:  # annotations only: the format classes call into this module
    from lowbitc.format_types import FloatFormat, Format


def _round_float(fmt: FloatFormat, x: np.ndarray) -> np.ndarray:
    """Magnitude codes of finite `x`: n = rint(|x| / q) with q the quantum at |x|'s binade."""
    m, emin, emax = fmt.man_bits, fmt.emin, (fmt.max_code >> fmt.man_bits) - fmt.bias
    use32 = x.dtype != np.float64 and 127 + m - emin <= 254 and 127 + m - emax >= 1
    ft, ut, mb, eb = (np.float32, np.uint32, 23, 127)
    if not use32:
        ft, ut, mb, eb = (np.float64, np.uint64, 52, 1023)
    x = np.ascontiguousarray(x, dtype=ft)
    e = ((x.view(ut) >> mb) & (2 * eb + 1)).astype(np.int32) - eb  # subnormal input: -eb
    eq = np.clip(e, emin, emax)
    scale = ((eb + m - eq).astype(ut) << mb).view(ft)  # exactly 2^(m - eq)
    with np.errstate(over="ignore"):  # huge |x| saturates anyway
        n = np.minimum(np.rint(np.abs(x) * scale), float(1 << (m + 2)))
    code = ((eq - emin) << m) + n.astype(np.int32)
    if fmt.special == "e8m0":  # no zero code: code 0 is 2^emin
        code -= 1
    code = np.clip(code, 0, fmt.max_code)
    if not fmt.signed:
        code = np.where(np.signbit(x), 0, code)
    return code.astype(np.int32 if fmt.bits > 8 else np.int16)


def _encode_by_cast(fmt: FloatFormat, x: np.ndarray) -> np.ndarray:
    """f32/f16 through numpy's correctly rounded casts, finite values saturated first."""
    ft, ut = (np.float32, np.uint32) if fmt.bits == 32 else (np.float16, np.uint16)
    if np.finfo(x.dtype).max > fmt.max:
        x = np.where(np.isfinite(x), np.clip(x, -fmt.max, fmt.max), x)
    return np.ascontiguousarray(x, dtype=ft).view(ut)


TABLE_MIN_SIZE = 1 << 14  # encode() of arrays this large goes through _bucket_codes


@functools.cache
def _bucket_codes(fmt: Format, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """Code per bucket of inputs sharing their top bits (16 of a float32, 20 of a float64).

    Rounding is monotone, so where a bucket's first and last inputs get the same code every
    input in it does; other buckets (a midpoint inside, inf/NaN) are flagged for exact encoding.
    """
    ft, ut, shift = (np.float64, np.uint64, 44) if wide else (np.float32, np.uint32, 16)
    top = np.arange(1 << (64 - 44 if wide else 32 - 16), dtype=ut) << ut(shift)
    first, last = top.view(ft), (top | ut((1 << shift) - 1)).view(ft)
    ok = np.isfinite(first) & np.isfinite(last)
    c0 = fmt._encode_exact(np.where(ok, first, 0))
    c1 = fmt._encode_exact(np.where(ok, last, 0))
    return c0, (c0 != c1) | ~ok


def _encode_by_table(fmt: Format, x: np.ndarray) -> np.ndarray:
    wide = x.dtype == np.float64
    codes, exact = _bucket_codes(fmt, wide)
    flat = np.ascontiguousarray(x).reshape(-1)
    top = flat.view(np.uint64 if wide else np.uint32) >> (44 if wide else 16)
    out = codes[top]
    redo = np.flatnonzero(exact[top])
    if redo.size:
        out[redo] = fmt._encode_exact(flat[redo])
    return out.reshape(x.shape)


def _float_table(fmt: FloatFormat) -> np.ndarray:
    c = np.arange(fmt.num_codes, dtype=np.int64)
    m, mag_bits = fmt.man_bits, fmt.bits - (1 if fmt.signed else 0)
    mag = c & ((1 << mag_bits) - 1)
    e, f = mag >> m, mag & ((1 << m) - 1)
    if fmt.special == "e8m0":
        v = np.ldexp(1.0, (mag - fmt.bias).astype(np.int32))
    else:
        sig = np.where(e == 0, f, f + (1 << m)).astype(np.float64)
        v = np.ldexp(sig, (np.maximum(e, 1) - fmt.bias - m).astype(np.int32))
    if fmt.signed:
        v = np.where(c >> mag_bits, -v, v)
    top = (1 << fmt.exp_bits) - 1
    nan = {
        "finite": np.zeros_like(c, bool),
        "fn": mag == (1 << mag_bits) - 1,
        "fnuz": c == (1 << mag_bits),
        "ieee": (e == top) & (f != 0),
        "e8m0": mag == (1 << mag_bits) - 1,
    }[fmt.special]
    if fmt.special == "ieee":
        v = np.where((e == top) & (f == 0), np.copysign(np.inf, v), v)
    return np.where(nan, np.nan, v).astype(np.float32)


def _as_float(x, arg: str) -> np.ndarray:
    """`x` as a float32 or float64 array holding exactly the same values."""
    a = np.asarray(x)
    k = a.dtype.kind
    if k == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    if k in "iu":
        return a.astype(np.float64)
    if k == "V" and a.dtype.itemsize <= 2 and a.dtype.names is None:
        return a.astype(np.float32)  # ml_dtypes' small floats (bfloat16, float8_*, ...)
    raise TypeError(f"{arg}: expected a float or integer array, got dtype {a.dtype}")


def _reject_nan(fmt: Format, x: np.ndarray) -> None:
    nan = np.isnan(x)
    if nan.any():
        where = tuple(int(i) for i in np.argwhere(nan)[0])
        raise UserArgumentError(
            f"x: {fmt.name} has no NaN code, but x holds NaN (first at index {where})"
        )
